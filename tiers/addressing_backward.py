"""Hand-written backward passes of the addressing steps ``tiered.tiers.addressing`` uses
(``content_weights``, ``overwrite``); their autograd references stay in that module and the
tests compare the two in float64.

Named dimensions: B batch, N slots, W width, h heads (H write heads).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tiered.tiers.addressing import EPSILON


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
