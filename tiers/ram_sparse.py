"""Sparse RAM (Sparse Access Memory, Rae et al. 2016): reads and writes touch K rows.

Per step, with named dimensions B batch, N slots, W width, R read heads, K neighbours:

    write set   C = the rows read at the previous step (R K) plus the least recently used row
    write       w_c = g^w (gamma w^r_{t-1, c} / R + (1 - gamma) [c = LRU])     (deduplicated)
                M[c] <- M[c] (1 - w_c e) + w_c a                                 (in place)
    read        idx = kNN(q_r, K) over the written rows (cosine), per head r
                c_r = softmax(beta_r cos(q_r, M[idx])) over those K rows
    links       (sparse DNC, with links KL > 0; ``tiered.tiers.sparse_links``) the link
                tables and precedence take the write; f_r = L w^r_{t-1}, b_r = L^T w^r_{t-1}
                w^r = top K of (pi^b b_r + pi^c c_r + pi^f f_r)   (without links: c_r)
                r_r = sum w^r M[rows of w^r]
    usage       a row is accessed when its read or write weight exceeds DELTA; the least
                recently used row is the one accessed longest ago (never-used rows first).

The memory is a buffer updated in place: only the written rows change, and only their old
contents are saved for backward (O(K W) per step), with the rows each read gathered.
Backward runs through two autograd Functions chained by a scalar ``token`` so that autograd
visits the steps strictly in reverse: ``_GatherRows`` adds the read rows' gradients to a
dense gradient accumulator dM, and ``_WriteRows`` rolls that gradient back through the
write, turning dM_t into dM_{t-1} on the written rows from their saved old contents (the
sparse rollback, done on the gradient). Backward never reads or changes the buffer, so after
backward it still holds the newest memory.

State contract: the buffer is shared by all states of a sequence; only the newest state is
valid to continue from, and a step given an older one raises (to branch a sequence, copy the
newest state with ``RAM.rebuild_state``). A backward pass that stops before a segment's
first step leaves rows in the gradient accumulator; the next pass clears them first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from tiered.hierarchy import spill_of
from tiered.knn import exact_search
from tiered.tier import Spill, join_spills
from tiered.tiers.addressing import attend_rows, oneplus
from tiered.tiers.sparse_links import (
    LinkTables,
    follow_links,
    merge_entries,
    update_links,
    update_precedence,
)
from tiered.tiers.sparse_tape import DELTA, SparseTape, _GatherRows, _WriteRows

__all__ = ["DELTA", "SparseRAMState", "SparseTape", "sparse_step", "unique_rows"]


def unique_rows(candidates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Deduplicate row ids per batch element with fixed shapes.

    Args:
        candidates: (B, C) row ids (>= 0).

    Returns:
        rows (B, C): the distinct ids first, then padding; inverse (B, C): for each
        candidate, the position of its id in ``rows``; valid (B, C): which positions of
        ``rows`` hold a distinct id.
    """
    ordered, order = torch.sort(candidates, dim=-1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = torch.cumsum(first.long(), dim=-1) - 1  # (B, C)
    inverse = torch.empty_like(group).scatter_(-1, order, group)
    rows = torch.zeros_like(candidates).scatter_(-1, group, ordered)
    valid = torch.arange(candidates.shape[1], device=candidates.device) < first.sum(
        -1, keepdim=True
    )
    rows = torch.where(valid, rows, rows[:, :1])
    return rows, inverse, valid


def write_weights_over(
    prev_read_indices: Tensor,
    prev_read_weights: Tensor,
    lru: Tensor,
    interpolation: Tensor,
    write_gate: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """SAM's write weights over the previously read rows and the LRU row, deduplicated.

    Args:
        prev_read_indices: (B, R, K) rows read at the previous step (-1: none).
        prev_read_weights: (B, R, K) their read weights.
        lru: (B,) the least recently used row.
        interpolation: (B, 1) gamma: 1 rewrites the read rows, 0 the LRU row.
        write_gate: (B, 1) g^w.

    Returns:
        rows (B, C), weights (B, C) summed over duplicates, valid (B, C); C = R K + 1.
    """
    B, R, K = prev_read_indices.shape
    indices = prev_read_indices.reshape(B, R * K)
    missing = indices < 0
    candidates = torch.cat([torch.where(missing, lru.unsqueeze(1), indices), lru.unsqueeze(1)], 1)
    read_part = prev_read_weights.reshape(B, R * K).masked_fill(missing, 0.0) / R
    weights = write_gate * torch.cat(
        [interpolation * read_part, (1.0 - interpolation).expand(B, 1)], dim=1
    )  # (B, C)
    rows, inverse, valid = unique_rows(candidates)
    summed = torch.zeros_like(weights).scatter_add(1, inverse, weights)
    return rows, summed * valid, valid


class SparseRAMState(NamedTuple):
    """Per-sequence state of the sparse RAM.

    Attributes:
        memory: (B, N, W) the memory buffer, updated in place (shared with the tape).
        read_weights: (B, R, K) the last read weights.
        read_indices: (B, R, K) the rows they cover (-1: none).
        precedence_rows: (B, KL) rows + 1 of the precedence's largest entries (0: none).
        precedence: (B, KL) their values (detached); KL = 0 without links.
        last_access: (B, N) step of each row's last access, -1 never (in place).
        links: the link tables (B, N, KL) each, in place (shared with the tape); None
            without links.
        token: () the link that orders the steps' backward passes.
        clock: (B,) steps taken.
        tape: the ``SparseTape`` (buffers, kNN index, usage heap, rollback record).
    """

    memory: Tensor
    read_weights: Tensor
    read_indices: Tensor
    precedence_rows: Tensor
    precedence: Tensor
    last_access: Tensor
    links: LinkTables | None
    token: Tensor
    clock: Tensor
    tape: Any


def gather_read(
    tape: SparseTape, token: Tensor, indices: Tensor, keys: Tensor, strengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Read by content over the K retrieved rows of each head.

    Args:
        indices: (B, R, K) rows (-1: none); keys: (B, R, W); strengths: (B, R).

    Returns:
        words (B, R, W), weights (B, R, K), the next token.
    """
    B, R, K = indices.shape
    rows, token = _GatherRows.apply(token, tape, indices.reshape(B, R * K))
    rows = rows.reshape(B, R, K, -1)  # (B, R, K, W)
    words, weights = attend_rows(keys, strengths, rows, rows, indices < 0)
    return words, weights, token


def record_access(tape: SparseTape, rows: Tensor, weights: Tensor, time: Tensor) -> None:
    """Update ``last_access`` and the LRU heap for rows whose weight exceeds DELTA.

    Args:
        rows: (B, ...) row ids (-1: none); weights: (B, ...) their weights; time: (B,) clock.
    """
    B = rows.shape[0]
    flat_rows = rows.reshape(B, -1)
    accessed = (weights.detach() > DELTA).reshape(B, -1) & (flat_rows >= 0)  # (B, X)
    # one scatter for the whole batch; a row listed twice gets the same time twice
    flat = tape.flat_rows(flat_rows.clamp_min(0))[accessed]
    tape.last_access.view(-1)[flat] = time.unsqueeze(1).expand_as(flat_rows)[accessed]
    times = time.tolist()
    for b, (row_list, mask) in enumerate(zip(flat_rows.tolist(), accessed.tolist(), strict=True)):
        hit = {r for r, m in zip(row_list, mask, strict=True) if m}
        if hit:
            tape.usage.access(b, sorted(hit), times[b])


class SparseInterface(NamedTuple):
    """The sparse RAM's slice of the interface vector, split and squashed.

    Attributes:
        read_keys: (B, R, W).
        read_strengths: (B, R), >= 1.
        erase: (B, W) in [0, 1].
        add: (B, W).
        write_gate: (B, 1) in [0, 1].
        interpolation: (B, 1) in [0, 1]: 1 rewrites the rows just read, 0 the LRU row.
        read_modes: (B, R, 3) a softmax over backward, content and forward reads; None
            without links.
    """

    read_keys: Tensor
    read_strengths: Tensor
    erase: Tensor
    add: Tensor
    write_gate: Tensor
    interpolation: Tensor
    read_modes: Tensor | None


def sparse_interface_size(width: int, read_heads: int, links: bool = False) -> int:
    """R (W + 1) + 2 W + 2 features, plus 3 R read modes with links."""
    return read_heads * (width + 1) + 2 * width + 2 + (3 * read_heads if links else 0)


def parse_sparse_interface(
    interface: Tensor, width: int, read_heads: int, links: bool = False
) -> SparseInterface:
    """Layout: R read keys (W each), R read strengths, erase (W), add (W), write gate,
    interpolation gate, and with links R x 3 read modes (backward, content, forward)."""
    B, W, R = interface.shape[0], width, read_heads
    sizes = [R * W, R, W, W, 1, 1] + ([3 * R] if links else [])
    parts = torch.split(interface, sizes, dim=-1)
    return SparseInterface(
        read_keys=parts[0].reshape(B, R, W),
        read_strengths=oneplus(parts[1]),
        erase=torch.sigmoid(parts[2]),
        add=parts[3],
        write_gate=torch.sigmoid(parts[4]),
        interpolation=torch.sigmoid(parts[5]),
        read_modes=torch.softmax(parts[6].reshape(B, R, 3), dim=-1) if links else None,
    )


def mix_link_reads(
    modes: Tensor,
    content_rows: Tensor,
    content: Tensor,
    forward: tuple[Tensor, Tensor],
    backward: tuple[Tensor, Tensor],
    k: int,
) -> tuple[Tensor, Tensor]:
    """w^r = top k of (pi^b b + pi^c c + pi^f f), each given over its own rows.

    Args:
        modes: (B, R, 3) backward, content, forward.
        content_rows, content: (B, R, K) rows (-1: none) and content weights.
        forward, backward: rows (B, R, X) (-1: none) and weights (B, R, X) along the links.

    Returns:
        rows (B, R, k) (-1: none) and weights (B, R, k).
    """
    rows = torch.cat([content_rows, forward[0], backward[0]], dim=-1) + 1
    weights = torch.cat(
        [modes[..., 1:2] * content, modes[..., 2:3] * forward[1], modes[..., 0:1] * backward[1]],
        dim=-1,
    )
    ids, mixed = merge_entries(rows, weights, k)
    return ids - 1, mixed


def sparse_step(
    interface: Tensor,
    state: SparseRAMState,
    *,
    width: int,
    read_heads: int,
    k: int,
    tick: Tensor,
    check_recall: bool = False,
    incoming: tuple[Spill, ...] = (),
    spill: bool = False,
) -> tuple[
    Tensor, SparseRAMState, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None, Spill | None
]:
    """One step: write (on ticks), take incoming spills, update the links, then read K rows
    per head.

    With ``check_recall`` the rows the index returned for the content queries are checked
    against exact search (``index_recall``): O(B N W) on that step.

    ``incoming`` spills (rows (B, S, W), gates (B, S)) are written after the write, every
    step, one row at a time into the least recently used row (``M[lru] <- M[lru] (1 - g) +
    g v``, in place, with the same rollback), which then counts as accessed; they join no
    temporal link. With ``spill``, what the step overwrote is returned as a spill
    (``tiered.hierarchy.spill_of`` over the written rows, a row ever written counting as
    occupied): one row for the write and one per incoming row.

    Returns:
        words (B, R * W), the next state, the erased content (B,), the write mass
        ``sum_c w_c`` over the written rows plus the spills' gates (B,) (detached), the rows
        ever written (B,), with ``check_recall`` the exact neighbours checked and the hits
        (B,) each, else None, and the spill (or None).
    """
    tape: SparseTape = state.tape
    links = tape.links
    p = parse_sparse_interface(interface, width, read_heads, links is not None)
    B = interface.shape[0]
    lru = torch.tensor(tape.usage.least_recently_used(), device=interface.device)
    rows, weights, valid = write_weights_over(
        state.read_indices, state.read_weights, lru, p.interpolation, p.write_gate
    )
    weights = weights * tick.to(weights.dtype).unsqueeze(1)  # (B, C); zero off ticks
    token = state.token
    spills = []
    if spill:  # the rows before the write, as part of the graph: spills carry gradient back
        old, token = _GatherRows.apply(token, tape, rows)  # (B, C, W)
        occupied = (tape.written.gather(1, rows) & valid).to(old.dtype)
        removed = old * weights.unsqueeze(-1) * p.erase.unsqueeze(1)
        spills.append(spill_of(removed, weights, occupied))
        old = old.detach()
    else:
        old = tape.gather(rows)  # (B, C, W), a copy: the rows before this write
    erased = (old * weights.unsqueeze(-1) * p.erase.unsqueeze(1)).abs().sum(dim=(1, 2))
    token = _WriteRows.apply(token, weights, p.erase, p.add, tape, rows, valid, old)
    _after_write(tape, rows, valid, weights, state.clock)
    mass = weights.detach().sum(dim=1)  # (B,)
    for row in (s for spilled in incoming for s in _rows_of(spilled)):
        content, gate = row  # (B, W), (B, 1)
        lru = torch.tensor(tape.usage.least_recently_used(), device=interface.device)
        target = lru.unsqueeze(1)  # (B, 1)
        every = torch.ones_like(target, dtype=torch.bool)
        if spill:
            old, token = _GatherRows.apply(token, tape, target)
            occupied = tape.written.gather(1, target).to(old.dtype)
            spills.append(spill_of(old * gate.unsqueeze(-1), gate, occupied))
            old = old.detach()
        else:
            old = tape.gather(target)
        erased = erased + (old * gate.unsqueeze(-1)).abs().sum(dim=(1, 2))
        token = _WriteRows.apply(
            token, gate, torch.ones_like(content), content, tape, target, every, old
        )
        _after_write(tape, target, every, gate, state.clock)
        mass = mass + gate.detach().sum(dim=1)
    precedence_rows, precedence = state.precedence_rows, state.precedence
    if links is not None:
        changed = valid & (weights.detach() > 0)
        written_rows, w = torch.where(changed, rows, -1), weights.detach() * changed
        update_links(links, precedence_rows, precedence, written_rows, w)
        precedence_rows, precedence = update_precedence(
            precedence_rows, precedence, written_rows, w, precedence.shape[-1]
        )

    indices = tape.index.search(tape.memory, tape.written, p.read_keys, k)  # (B, R, K)
    recall = index_recall(tape, p.read_keys, indices, k) if check_recall else None
    words, read_weights, token = gather_read(tape, token, indices, p.read_keys, p.read_strengths)
    if links is not None:
        forward = follow_links(links, state.read_indices, state.read_weights, forward=True)
        backward = follow_links(links, state.read_indices, state.read_weights, forward=False)
        indices, read_weights = mix_link_reads(
            p.read_modes, indices, read_weights, forward, backward, k
        )
        R = read_heads
        rows_read, token = _GatherRows.apply(token, tape, indices.reshape(B, R * k))
        words = torch.einsum("brk,brkw->brw", read_weights, rows_read.reshape(B, R, k, -1))
    record_access(tape, indices, read_weights, state.clock)
    next_state = SparseRAMState(
        memory=tape.memory,
        read_weights=read_weights,
        read_indices=indices,
        precedence_rows=precedence_rows,
        precedence=precedence,
        last_access=tape.last_access,
        links=links,
        token=token,
        clock=state.clock + 1,
        tape=tape,
    )
    tape.advance(token)
    in_use = tape.in_use.to(interface.dtype)
    return words.reshape(B, -1), next_state, erased, mass, in_use, recall, join_spills(spills)


def _after_write(
    tape: SparseTape, rows: Tensor, valid: Tensor, weights: Tensor, clock: Tensor
) -> None:
    """Mark the rows a write changed as written, update the index and the accesses.

    Args:
        rows: (B, C) the rows written; valid: (B, C) which are distinct rows; weights:
            (B, C) their write weights; clock: (B,) the step.
    """
    changed = valid & (weights.detach() > 0)
    newly = changed & ~tape.written.gather(1, rows)
    tape.written.view(-1)[tape.flat_rows(rows)[changed]] = True
    tape.in_use += newly.sum(dim=1)
    tape.index.update(tape.memory, rows, changed)
    record_access(tape, rows, weights, clock)


def _rows_of(spilled: Spill) -> list[tuple[Tensor, Tensor]]:
    """A spill's rows one by one: content (B, W) and gate (B, 1)."""
    return [
        (spilled.content[:, s], spilled.gate[:, s : s + 1]) for s in range(spilled.gate.shape[1])
    ]


def index_recall(tape: SparseTape, queries: Tensor, found: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """How many of the exact k nearest written rows of ``queries`` (B, R, W) exist, and how
    many of them the index returned in ``found`` (B, R, k): (B,) each, detached.

    Exact search over every written row (``tiered.knn.exact_search``), O(B R N W): meant for
    a sampled step, not every step.
    """
    with torch.no_grad():
        exact = exact_search(tape.memory, tape.written, queries.detach(), k)  # (B, R, k)
        valid = exact >= 0
        # (B, R, k, k): exact row i among the rows found
        hit = (exact.unsqueeze(-1) == found.unsqueeze(-2)).any(dim=-1) & valid
        return valid.sum(dim=(1, 2)), hit.sum(dim=(1, 2))
