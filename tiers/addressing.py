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
    psi: Tensor | None = None,
) -> Tensor:
    """u_t = (u_{t-1} + w - u_{t-1} * w) * psi_t, with w = 1 - prod_h(1 - w^w_{t-1,h}).

    Args:
        prev_usage: (B, N) in [0, 1].
        prev_write_weights: (B, H, N), the last write's weights.
        prev_read_weights: (B, R, N).
        free_gates: (B, R) in [0, 1].
        psi: (B, N) ``retention(prev_read_weights, free_gates)`` when the caller has it
            already (the dense RAM's de-allocation uses it too); None computes it.

    Returns:
        (B, N) in [0, 1].
    """
    if psi is None:
        psi = retention(prev_read_weights, free_gates)
    return mark_written(prev_usage, prev_write_weights) * psi


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


# The hand-written backward passes (after EPSILON, which they use).
from tiered.tiers.addressing_backward import _ContentWeights, _Overwrite  # noqa: E402
