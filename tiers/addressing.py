"""Pure addressing functions shared by the Cache and RAM tiers.

Named dimensions: B batch, N memory slots (N in the DNC paper), W word width (W), h a
number of heads (R read heads or H write heads). Equations follow Graves et al. 2016,
"Hybrid computing using a neural network with dynamic external memory" (the DNC paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Keeps norms and products away from zero so that no division or gradient is infinite.
EPSILON = 1e-6


def oneplus(x: Tensor) -> Tensor:
    """``1 + softplus(x)``: maps reals to [1, inf), used for key strengths (beta)."""
    return 1.0 + F.softplus(x)


def safe_norm(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Euclidean norm ``sqrt(sum(x^2) + EPSILON)``, finite with a finite gradient at 0."""
    return torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim) + EPSILON)


def cosine_similarity(memory: Tensor, keys: Tensor) -> Tensor:
    """Cosine similarity D(k, M[i]) of each key with each memory row.

    Args:
        memory: (B, N, W).
        keys: (B, h, W).

    Returns:
        (B, h, N); 0 where the key or the row is zero.
    """
    dot = torch.einsum("bhw,bnw->bhn", keys, memory)  # (B, h, N)
    norms = safe_norm(keys).unsqueeze(-1) * safe_norm(memory).unsqueeze(-2)  # (B, h, N)
    return dot / (norms + EPSILON)


def content_weights(memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
    """Content addressing C(M, k, beta) = softmax_i(beta * D(k, M[i])).

    Same values and gradients as ``content_weights_reference`` (``cosine_similarity`` then
    a softmax through autograd), with a hand-written backward of a dozen operations.

    Args:
        memory: (B, N, W).
        keys: (B, h, W).
        strengths: (B, h), beta >= 1 (see ``oneplus``); larger is sharper.

    Returns:
        (B, h, N), each row a probability distribution over slots.
    """
    return _ContentWeights.apply(memory, keys, strengths)


def content_weights_reference(memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
    """``content_weights`` written plainly with autograd: the reference it is tested against."""
    similarity = cosine_similarity(memory, keys)  # (B, h, N)
    return torch.softmax(strengths.unsqueeze(-1) * similarity, dim=-1)


class _ContentWeights(torch.autograd.Function):
    """c = softmax(beta D), D = k.M / (|k|_s |M|_s + EPSILON), |x|_s = sqrt(x.x + EPSILON).

    Backward: gz = c (gc - sum c gc); dbeta = sum gz D; gD = beta gz; d(k.M) = gD / den;
    dden = -gD D / den, giving d|k|_s = sum_n dden |M|_s and d|M|_s = sum_h dden |k|_s;
    then dk = d(k.M) M + d|k|_s k / |k|_s and dM = d(k.M)^T k + d|M|_s M / |M|_s.
    Saves the inputs and the weights (B, h, N).
    """

    @staticmethod
    def forward(ctx, memory, keys, strengths):  # type: ignore[override]
        key_norm = torch.sqrt(keys.square().sum(-1) + EPSILON)  # (B, h)
        row_norm = torch.sqrt(memory.square().sum(-1) + EPSILON)  # (B, N)
        den = torch.baddbmm(memory.new_full((), EPSILON), key_norm.unsqueeze(-1),
                            row_norm.unsqueeze(-2))  # (B, h, N)  # fmt: skip
        similarity = torch.bmm(keys, memory.transpose(1, 2)).div_(den)
        weights = torch.softmax(strengths.unsqueeze(-1) * similarity, dim=-1)
        ctx.save_for_backward(memory, keys, strengths, weights, similarity, den, key_norm,
                              row_norm)  # fmt: skip
        return weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        memory, keys, strengths, weights, similarity, den, key_norm, row_norm = ctx.saved_tensors
        gz = weights * (grad - (weights * grad).sum(-1, keepdim=True))  # (B, h, N)
        grad_strengths = (gz * similarity).sum(-1) if ctx.needs_input_grad[2] else None
        g_sim = gz * strengths.unsqueeze(-1)
        g_dot = g_sim / den
        g_den = -(g_dot * similarity)  # dden = -gD D / den
        grad_memory = grad_keys = None
        if ctx.needs_input_grad[1]:
            g_key_norm = torch.bmm(g_den, row_norm.unsqueeze(-1))  # (B, h, 1)
            grad_keys = torch.bmm(g_dot, memory)
            grad_keys.addcmul_(g_key_norm / key_norm.unsqueeze(-1), keys)
        if ctx.needs_input_grad[0]:
            g_row_norm = torch.bmm(key_norm.unsqueeze(1), g_den).transpose(1, 2)  # (B, N, 1)
            grad_memory = torch.bmm(g_dot.transpose(1, 2), keys)
            grad_memory.addcmul_(g_row_norm / row_norm.unsqueeze(-1), memory)
        return grad_memory, grad_keys, grad_strengths


def masked_content_weights(
    memory: Tensor, keys: Tensor, masks: Tensor, strengths: Tensor
) -> Tensor:
    """Masked content addressing: softmax_i(beta * D(k * m, M[i] * m)) (Csordás &
    Schmidhuber 2019), each head with its own mask m in [0, 1]^W.

    (k m) . (M[i] m) = (k m^2) . M[i] and |M[i] m|^2 = (M[i]^2) . m^2, so no masked copy of
    the memory is made. Norms as in ``cosine_similarity`` (``safe_norm``).

    Args:
        memory: (B, N, W).
        keys: (B, h, W).
        masks: (B, h, W) in [0, 1].
        strengths: (B, h), beta >= 1.

    Returns:
        (B, h, N), each row a probability distribution over slots.
    """
    squared = masks * masks
    dot = torch.bmm(keys * squared, memory.transpose(1, 2))  # (B, h, N)
    row_norms = torch.sqrt(torch.bmm(squared, (memory * memory).transpose(1, 2)) + EPSILON)
    key_norms = safe_norm(keys * masks).unsqueeze(-1)  # (B, h, 1)
    similarity = dot / (key_norms * row_norms + EPSILON)
    return torch.softmax(strengths.unsqueeze(-1) * similarity, dim=-1)


def erase_and_write(
    memory: Tensor, write_weights: Tensor, erase: Tensor, add: Tensor
) -> tuple[Tensor, Tensor]:
    """M_t = M_{t-1} * prod_h(1 - w_h e_h^T) + sum_h w_h a_h^T.

    Args:
        memory: (B, N, W) the previous memory M_{t-1}.
        write_weights: (B, H, N) write weights w_h, each summing to at most 1.
        erase: (B, H, W) erase vectors e_h in [0, 1].
        add: (B, H, W) write vectors a_h.

    Returns:
        The new memory (B, N, W) and the amount of stored content erased (B,):
        ``sum |M_{t-1} * (1 - prod_h(1 - w_h e_h^T))|``, the ``rewrite`` statistic.
    """
    new, removed = overwrite(memory, write_weights, erase, add)
    return new, removed.abs().sum(dim=(-2, -1))


def overwrite(
    memory: Tensor, write_weights: Tensor, erase: Tensor, add: Tensor
) -> tuple[Tensor, Tensor]:
    """``erase_and_write`` with the content each slot lost, for write-back (``spill_to``).

    Same values and gradients as ``overwrite_reference``, with a hand-written backward that
    saves only the inputs (B N W memory is the previous state's, held anyway) and runs a
    handful of operations instead of autograd's two dozen.

    Args:
        memory, write_weights, erase, add: as in ``erase_and_write``.

    Returns:
        The new memory (B, N, W) and the removed content (B, N, W),
        ``M_{t-1} * (1 - prod_h(1 - w_h e_h^T))``.
    """
    return _Overwrite.apply(memory, write_weights, erase, add)


def overwrite_reference(
    memory: Tensor, write_weights: Tensor, erase: Tensor, add: Tensor
) -> tuple[Tensor, Tensor]:
    """``overwrite`` written plainly with autograd: the reference it is tested against."""
    keep = torch.prod(1.0 - write_weights.unsqueeze(-1) * erase.unsqueeze(-2), dim=1)  # (B,N,W)
    written = torch.einsum("bhn,bhw->bnw", write_weights, add)  # (B, N, W)
    return memory * keep + written, memory * (1.0 - keep)


def _keep_factors(write_weights: Tensor, erase: Tensor) -> list[Tensor]:
    """Each head's 1 - w_h e_h^T, (B, N, W)."""
    one = write_weights.new_ones(())
    return [
        torch.baddbmm(one, write_weights[:, h, :, None], erase[:, h, None, :], alpha=-1)
        for h in range(write_weights.shape[1])
    ]


def _product(factors: list[Tensor]) -> Tensor:
    out = factors[0]
    for factor in factors[1:]:
        out = out * factor
    return out


class _Overwrite(torch.autograd.Function):
    """new = M keep + sum_h w_h a_h^T, removed = M (1 - keep), keep = prod_h(1 - w_h e_h^T).

    Backward, with g = dnew - dremoved: dM = dremoved + g keep; dkeep = g M; for each head
    dK_h = dkeep prod_{h' != h} K_h', dw_h = -dK_h e_h + dnew a_h, de_h = -w_h^T dK_h,
    da_h = w_h^T dnew.
    """

    @staticmethod
    def forward(ctx, memory, write_weights, erase, add):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(memory, write_weights, erase, add)
        keep = _product(_keep_factors(write_weights, erase))
        written = torch.bmm(write_weights.transpose(1, 2), add)  # (B, N, W)
        return torch.addcmul(written, memory, keep), torch.addcmul(memory, memory, keep, value=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_new, grad_removed):  # type: ignore[override]
        memory, write_weights, erase, add = ctx.saved_tensors
        need_memory, need_w, need_e, need_a = ctx.needs_input_grad
        if grad_new is None and grad_removed is None:
            return None, None, None, None
        factors = _keep_factors(write_weights, erase)
        keep = _product(factors)
        if grad_removed is None:
            g = grad_new
        elif grad_new is None:
            g = -grad_removed
        else:
            g = grad_new - grad_removed
        grad_memory = grad_w = grad_e = grad_a = None
        if need_memory:
            grad_memory = g * keep if grad_removed is None else torch.addcmul(grad_removed, g, keep)
        if need_w or need_e:
            dkeep = g * memory  # (B, N, W)
            w_parts, e_parts = [], []
            for h in range(len(factors)):
                others = [f for k, f in enumerate(factors) if k != h]
                dk = dkeep * _product(others) if others else dkeep
                w_parts.append(torch.bmm(dk, erase[:, h, :, None]))  # (B, N, 1)
                e_parts.append(torch.bmm(write_weights[:, h, None, :], dk))  # (B, 1, W)
            if need_w:
                grad_w = -torch.cat(w_parts, dim=-1).transpose(1, 2)  # (B, H, N)
                if grad_new is not None:
                    grad_w = grad_w + torch.bmm(add, grad_new.transpose(1, 2))
            if need_e:
                grad_e = -torch.cat(e_parts, dim=1)  # (B, H, W)
        if need_a:
            grad_a = (
                torch.bmm(write_weights, grad_new)
                if grad_new is not None
                else torch.zeros_like(add)
            )
        return grad_memory, grad_w, grad_e, grad_a


def write_rows_to_free_slots(
    memory: Tensor, usage: Tensor, rows: Tensor, gates: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Write S incoming rows (spills or fills) into the S least used slots, replacing them.

    Row s goes to the slot of rank s in ascending usage (hard choice, no gradient through
    it), with weight ``gates[:, s]`` and a full erase: ``M[n] <- M[n] (1 - g) + g v``.

    Args:
        memory: (B, N, W).
        usage: (B, N), lower is freer.
        rows: (B, S, W), S <= N.
        gates: (B, S) in [0, 1].

    Returns:
        The new memory (B, N, W), the removed content (B, N, W) and the write weights
        (B, S, N).
    """
    S = rows.shape[1]
    order = torch.sort(usage.detach(), dim=-1, stable=True).indices[:, :S]  # (B, S)
    one_hot = torch.zeros(*rows.shape[:2], usage.shape[-1], dtype=memory.dtype,
                          device=memory.device).scatter(-1, order.unsqueeze(-1), 1.0)  # fmt: skip
    weights = one_hot * gates.unsqueeze(-1)  # (B, S, N)
    new, removed = overwrite(memory, weights, torch.ones_like(rows), rows)
    return new, removed, weights


def read_words(memory: Tensor, read_weights: Tensor) -> Tensor:
    """r_i = M^T w^r_i: the words read by each head.

    Args:
        memory: (B, N, W).
        read_weights: (B, R, N).

    Returns:
        (B, R, W).
    """
    return torch.einsum("brn,bnw->brw", read_weights, memory)


def retention(prev_read_weights: Tensor, free_gates: Tensor) -> Tensor:
    """psi_t = prod_i(1 - f_i w^r_{t-1,i}): how much of each slot the reads did not free.

    Args:
        prev_read_weights: (B, R, N).
        free_gates: (B, R) in [0, 1].

    Returns:
        (B, N) in [0, 1].
    """
    return torch.prod(1.0 - free_gates.unsqueeze(-1) * prev_read_weights, dim=1)


def update_usage(
    prev_usage: Tensor,
    prev_write_weights: Tensor,
    prev_read_weights: Tensor,
    free_gates: Tensor,
) -> Tensor:
    """u_t = (u_{t-1} + w - u_{t-1} * w) * psi_t, with w = 1 - prod_h(1 - w^w_{t-1,h}).

    Args:
        prev_usage: (B, N) in [0, 1].
        prev_write_weights: (B, H, N), the last write's weights.
        prev_read_weights: (B, R, N).
        free_gates: (B, R) in [0, 1].

    Returns:
        (B, N) in [0, 1].
    """
    return mark_written(prev_usage, prev_write_weights) * retention(prev_read_weights, free_gates)


def mark_written(prev: Tensor, write_weights: Tensor) -> Tensor:
    """f_t = f_{t-1} + w - f_{t-1} * w, with w = 1 - prod_h(1 - w^w_h).

    The degree to which each slot has been written: a slot written with weight 1 gets 1,
    weights in between accumulate like independent chances (the DNC's usage before its
    retention).

    Args:
        prev: (B, N) in [0, 1].
        write_weights: (B, H, N), this write's weights.

    Returns:
        (B, N) in [0, 1].
    """
    written = 1.0 - torch.prod(1.0 - write_weights, dim=1)  # (B, N)
    return prev + written - prev * written


def allocation_weights(usage: Tensor) -> Tensor:
    """Sort-based allocation a_t[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i].

    phi sorts the slots by usage in ascending order, so the least used slot gets the most
    weight. Usage is first squashed to [EPSILON, 1] so the products never vanish exactly.

    Args:
        usage: (B, N) in [0, 1].

    Returns:
        (B, N), non-negative, summing to at most 1.
    """
    usage = EPSILON + (1.0 - EPSILON) * usage
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)  # (B, N), ties: lowest index
    # Exclusive cumulative product prod_{i<j}: the inclusive one shifted right by one.
    prod_before = torch.cat(
        [torch.ones_like(sorted_usage[..., :1]), torch.cumprod(sorted_usage, dim=-1)[..., :-1]],
        dim=-1,
    )
    sorted_allocation = (1.0 - sorted_usage) * prod_before  # (B, N)
    return torch.zeros_like(usage).scatter(-1, order, sorted_allocation)


def write_allocation_weights(usage: Tensor, write_gates: Tensor) -> Tensor:
    """Allocation weights for several write heads, each taking a different free slot.

    After head h allocates, usage rises where it will write, so head h + 1 prefers another
    slot: u <- u + (1 - u) * g_h * a_h.

    Args:
        usage: (B, N) in [0, 1].
        write_gates: (B, H), the product of each head's write and allocation gates.

    Returns:
        (B, H, N).
    """
    allocations = []
    for head in range(write_gates.shape[1]):
        allocation = allocation_weights(usage)  # (B, N)
        allocations.append(allocation)
        usage = usage + (1.0 - usage) * write_gates[:, head : head + 1] * allocation
    return torch.stack(allocations, dim=1)


def write_weights(
    allocation: Tensor, content: Tensor, allocation_gates: Tensor, write_gates: Tensor
) -> Tensor:
    """w^w = g^w (g^a a + (1 - g^a) c^w).

    Args:
        allocation: (B, H, N) allocation weights a.
        content: (B, H, N) content weights c^w of the write keys.
        allocation_gates: (B, H) g^a in [0, 1].
        write_gates: (B, H) g^w in [0, 1].

    Returns:
        (B, H, N).
    """
    ga = allocation_gates.unsqueeze(-1)
    return write_gates.unsqueeze(-1) * (ga * allocation + (1.0 - ga) * content)


def attend_rows(
    keys: Tensor, strengths: Tensor, row_keys: Tensor, row_values: Tensor, missing: Tensor
) -> tuple[Tensor, Tensor]:
    """Content read over a few retrieved rows per head (sparse RAM, ROM, Disk).

    w_k = softmax_k(beta * D(q, key_k)) over the rows found, r = sum_k w_k value_k.

    Args:
        keys: (B, R, W) the queries q.
        strengths: (B, R), beta >= 1.
        row_keys: (B, R, K, W) the keys of the retrieved rows.
        row_values: (B, R, K, V) their values (the same tensor as ``row_keys`` for a memory
            read by content).
        missing: (B, R, K) boolean, True where fewer than K rows were found.

    Returns:
        words (B, R, V) and weights (B, R, K); a head with no rows at all reads zeros.
    """
    dot = torch.einsum("brw,brkw->brk", keys, row_keys)
    similarity = dot / (safe_norm(keys).unsqueeze(-1) * safe_norm(row_keys) + EPSILON)
    scores = (strengths.unsqueeze(-1) * similarity).masked_fill(missing, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return torch.einsum("brk,brkv->brv", weights, row_values), weights
