"""Dense reference of the sparse RAM's equations: the whole memory, cloned every step.

Written for clarity, not speed: every step builds dense (B, N) write weights and reads with
dense (B, R, N) weights restricted to each head's K best written rows, so that with
K = N and exact search it must agree with ``tiered.tiers.ram_sparse`` in values and
gradients (the tests check this in float64). With links it keeps the whole N x N link matrix
of the DNC, built from detached write weights like the sparse tables; with as many links per
slot as slots (nothing truncated) the sparse DNC must agree with it. It keeps no caches and
no buffers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tiered.tiers.addressing import safe_norm
from tiered.tiers.ram_sparse import DELTA, parse_sparse_interface


class ReferenceState(NamedTuple):
    """memory (B, N, W); read_weights (B, R, N); written (B, N); last_access (B, N);
    link (B, N, N); precedence (B, N)."""

    memory: Tensor
    read_weights: Tensor
    written: Tensor
    last_access: Tensor
    link: Tensor
    precedence: Tensor


def reference_initial_state(
    batch: int, slots: int, width: int, read_heads: int, dtype: torch.dtype
) -> ReferenceState:
    return ReferenceState(
        memory=torch.zeros(batch, slots, width, dtype=dtype),
        read_weights=torch.zeros(batch, read_heads, slots, dtype=dtype),
        written=torch.zeros(batch, slots, dtype=torch.bool),
        last_access=torch.full((batch, slots), -1, dtype=torch.long),
        link=torch.zeros(batch, slots, slots, dtype=dtype),
        precedence=torch.zeros(batch, slots, dtype=dtype),
    )


def reference_step(
    interface: Tensor,
    state: ReferenceState,
    *,
    width: int,
    read_heads: int,
    k: int,
    time: int,
    links: bool = False,
) -> tuple[Tensor, ReferenceState]:
    """One step of the sparse equations on dense tensors; returns reads (B, R * W)."""
    p = parse_sparse_interface(interface, width, read_heads, links)
    B, N = state.written.shape
    lru = state.last_access.argmin(dim=1)  # never-used (-1) first, lowest index on ties
    lru_weights = torch.zeros(B, N, dtype=interface.dtype).scatter(1, lru[:, None], 1.0)
    read_part = state.read_weights.sum(dim=1) / read_heads  # (B, N)
    w = p.write_gate * (p.interpolation * read_part + (1 - p.interpolation) * lru_weights)
    memory = state.memory * (1 - w.unsqueeze(-1) * p.erase.unsqueeze(1)) + w.unsqueeze(
        -1
    ) * p.add.unsqueeze(1)
    written = state.written | (w.detach() > 0)
    last_access = torch.where(w.detach() > DELTA, time, state.last_access)

    dot = torch.einsum("brw,bnw->brn", p.read_keys, memory)
    similarity = dot / (
        safe_norm(p.read_keys).unsqueeze(-1) * safe_norm(memory).unsqueeze(1) + 1e-6
    )
    scores = (p.read_strengths.unsqueeze(-1) * similarity).masked_fill(
        ~written.unsqueeze(1), float("-inf")
    )
    top = torch.topk(scores.detach(), min(k, N), dim=-1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, top, True)
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)
    link, precedence = state.link, state.precedence
    if links:
        wd = w.detach()
        link = (1 - wd.unsqueeze(2) - wd.unsqueeze(1)) * link + wd.unsqueeze(2) * (
            precedence.unsqueeze(1)
        )
        link = link * (1 - torch.eye(N, dtype=link.dtype))
        precedence = (1 - wd.sum(-1, keepdim=True)) * precedence + wd
        forward = torch.einsum("bij,brj->bri", link, state.read_weights)
        backward = torch.einsum("bij,bri->brj", link, state.read_weights)
        modes = p.read_modes
        mixed = modes[..., 0:1] * backward + modes[..., 1:2] * weights + modes[..., 2:3] * forward
        top = torch.topk(mixed.detach(), min(k, N), dim=-1).indices
        weights = mixed * torch.zeros_like(mixed).scatter(-1, top, 1.0)
    words = torch.einsum("brn,bnw->brw", weights, memory)
    accessed = (weights.detach() > DELTA).any(dim=1)
    last_access = torch.where(accessed, time, last_access)
    next_state = ReferenceState(memory, weights, written, last_access, link, precedence)
    return words.reshape(B, -1), next_state
