"""Temporal link matrix of the DNC: remembers the order in which slots were written.

Named dimensions: B batch, H write heads, R read heads, N slots. Each write head keeps its
own link matrix L (N x N), where L[i, j] is the degree to which slot i was written right
after slot j, and a precedence vector p, the degree to which each slot was written last.
"""

from __future__ import annotations

import torch
from torch import Tensor


def update_precedence(prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
    """p_t = (1 - sum_i w_t[i]) p_{t-1} + w_t.

    Args:
        prev_precedence: (B, H, N).
        write_weights: (B, H, N).

    Returns:
        (B, H, N), summing to at most 1 over N.
    """
    write_sum = write_weights.sum(dim=-1, keepdim=True)  # (B, H, 1)
    return (1.0 - write_sum) * prev_precedence + write_weights


def update_link_reference(
    prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor
) -> Tensor:
    """The link update written plainly with autograd: the reference for ``update_link``.

    L_t[i, j] = (1 - w[i] - w[j]) L_{t-1}[i, j] + w[i] p_{t-1}[j], with L_t[i, i] = 0.

    Args:
        prev_link: (B, H, N, N).
        prev_precedence: (B, H, N), p_{t-1}.
        write_weights: (B, H, N), w_t.

    Returns:
        (B, H, N, N), entries in [0, 1], rows and columns summing to at most 1.
    """
    w_i = write_weights.unsqueeze(-1)  # (B, H, N, 1)
    w_j = write_weights.unsqueeze(-2)  # (B, H, 1, N)
    link = (1.0 - w_i - w_j) * prev_link + w_i * prev_precedence.unsqueeze(-2)
    n = link.shape[-1]
    off_diagonal = 1.0 - torch.eye(n, dtype=link.dtype, device=link.device)  # (N, N)
    return link * off_diagonal


class _LinkUpdate(torch.autograd.Function):
    """The link update with a hand-written backward.

    Autograd through ``update_link_reference`` makes and saves about a dozen N x N
    temporaries per step; this saves only the previous link (which the graph holds anyway
    as the last step's output) and makes three N x N temporaries in backward.
    """

    @staticmethod
    def forward(ctx, prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor):  # type: ignore[override]
        w_i = write_weights.unsqueeze(-1)  # (B, H, N, 1)
        w_j = write_weights.unsqueeze(-2)  # (B, H, 1, N)
        link = (1.0 - w_i - w_j).mul_(prev_link)  # (B, H, N, N)
        link.add_(w_i * prev_precedence.unsqueeze(-2))
        link.diagonal(dim1=-2, dim2=-1).zero_()
        ctx.save_for_backward(prev_link, prev_precedence, write_weights)
        return link

    @staticmethod
    def backward(ctx, grad_link: Tensor):  # type: ignore[override]
        prev_link, prev_precedence, write_weights = ctx.saved_tensors
        grad = grad_link.clone()
        grad.diagonal(dim1=-2, dim2=-1).zero_()  # the diagonal is set, not computed
        w_i = write_weights.unsqueeze(-1)
        w_j = write_weights.unsqueeze(-2)
        grad_prev_link = grad_w = grad_precedence = None
        if ctx.needs_input_grad[0]:
            grad_prev_link = (1.0 - w_i - w_j).mul_(grad)
        if ctx.needs_input_grad[1]:
            # dp[j] = sum_i g[i, j] w[i]
            grad_precedence = torch.einsum("bhij,bhi->bhj", grad, write_weights)
        if ctx.needs_input_grad[2]:
            grad_times_link = grad * prev_link  # (B, H, N, N)
            # dw[k] = sum_j g[k, j] (p[j] - L[k, j]) - sum_i g[i, k] L[i, k]
            grad_w = (
                torch.einsum("bhij,bhj->bhi", grad, prev_precedence)
                - grad_times_link.sum(dim=-1)
                - grad_times_link.sum(dim=-2)
            )
        return grad_prev_link, grad_precedence, grad_w


def update_link(prev_link: Tensor, prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
    """L_t[i, j] = (1 - w[i] - w[j]) L_{t-1}[i, j] + w[i] p_{t-1}[j], with L_t[i, i] = 0.

    Same values and gradients as ``update_link_reference``, with a lighter backward.

    Args:
        prev_link: (B, H, N, N).
        prev_precedence: (B, H, N), p_{t-1}.
        write_weights: (B, H, N), w_t.

    Returns:
        (B, H, N, N), entries in [0, 1], rows and columns summing to at most 1.
    """
    return _LinkUpdate.apply(prev_link, prev_precedence, write_weights)


def directional_read_weights(link: Tensor, prev_read_weights: Tensor, forward: bool) -> Tensor:
    """Forward weights f = L w^r_{t-1} or backward weights b = L^T w^r_{t-1}.

    Args:
        link: (B, H, N, N).
        prev_read_weights: (B, R, N).
        forward: True follows writes forward in time, False backward.

    Returns:
        (B, R, H, N).
    """
    if forward:
        # f[i] = sum_j L[i, j] w[j]
        return torch.einsum("bhij,brj->brhi", link, prev_read_weights)
    # b[j] = sum_i L[i, j] w[i]
    return torch.einsum("bhij,bri->brhj", link, prev_read_weights)
