"""Sparse RAM (Sparse Access Memory, Rae et al. 2016): reads and writes touch K rows.

Per step, with named dimensions B batch, N slots, W width, R read heads, K neighbours:

    write set   C = the rows read at the previous step (R K) plus the least recently used row
    write       w_c = g^w (gamma w^r_{t-1, c} / R + (1 - gamma) [c = LRU])     (deduplicated)
                M[c] <- M[c] (1 - w_c e) + w_c a                                 (in place)
    read        idx = kNN(q_r, K) over the written rows (cosine), per head r
                w^r = softmax(beta_r cos(q_r, M[idx])) over those K rows;  r_r = sum w^r M[idx]
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

Documented state contract: the buffer is shared by all states of a sequence; only the
newest state is valid to continue from (to branch a sequence, ``RAM.rebuild_state`` it).
"""

from __future__ import annotations

import heapq
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from tiered.knn import KNNIndex
from tiered.state import Opaque

DELTA = 0.005  # a weight above this counts as an access (SAM's delta)
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


class Segment:
    """One stretch of a sequence between detaches: its recorded steps share a gradient
    accumulator, cleared once backward has gone back to the segment's first step."""

    def __init__(self) -> None:
        self.steps = 0  # writes recorded for backward
        self.touched: list[Tensor] = []  # flat row ids whose gradient rows must be cleared


class UsageTracker:
    """Least-recently-used row per batch element: a lazy heap plus the never-used rows.

    A cache over ``last_access`` (B, N) (-1: never accessed), rebuildable from it at any
    time. Never-used rows come first, lowest index first; then the row accessed longest
    ago (lowest index on ties), as ``torch.argmin`` over ``last_access`` would pick.
    """

    def __init__(self, last_access: Tensor) -> None:
        self.heaps: list[list[tuple[int, int]]] = []
        self.last: list[dict[int, int]] = []
        self.unused: list[Tensor] = []  # sorted never-used rows of each batch element
        self.pointer: list[int] = []  # how many of them have been used since
        for row_times in last_access.detach().cpu():
            used = torch.nonzero(row_times >= 0).flatten().tolist()
            times = row_times[used].tolist() if used else []
            heap = list(zip(times, used, strict=True))
            heapq.heapify(heap)
            self.heaps.append(heap)
            self.last.append(dict(zip(used, times, strict=True)))
            self.unused.append(torch.nonzero(row_times < 0).flatten())
            self.pointer.append(0)

    def _first_unused(self, b: int) -> int | None:
        unused, last = self.unused[b], self.last[b]
        while self.pointer[b] < len(unused) and int(unused[self.pointer[b]]) in last:
            self.pointer[b] += 1  # used since (out of order)
        return int(unused[self.pointer[b]]) if self.pointer[b] < len(unused) else None

    def least_recently_used(self) -> list[int]:
        """The LRU row of each batch element."""
        out = []
        for b, heap in enumerate(self.heaps):
            row = self._first_unused(b)
            if row is None:
                while self.last[b].get(heap[0][1]) != heap[0][0]:
                    heapq.heappop(heap)  # a stale entry
                row = heap[0][1]
            out.append(row)
        return out

    def access(self, b: int, rows: list[int], time: int) -> None:
        """Mark ``rows`` of batch element ``b`` as accessed at ``time``."""
        for row in rows:
            self.last[b][row] = time
            heapq.heappush(self.heaps[b], (time, row))
        if len(self.heaps[b]) > 4 * len(self.last[b]) + 64:  # drop stale entries
            self.heaps[b] = [(t, row) for row, t in self.last[b].items()]
            heapq.heapify(self.heaps[b])


class SparseTape(Opaque):
    """Per-sequence, non-tensor companion of a sparse RAM state: buffers and caches.

    Holds the memory buffer (B, N, W), the ``written`` mask (B, N), ``last_access`` (B, N),
    the kNN index, the usage tracker, the gradient accumulator and the current segment.
    Everything but the buffers is a cache rebuildable from the buffers.
    """

    def __init__(self, memory: Tensor, written: Tensor, last_access: Tensor, index: KNNIndex):
        self.memory = memory
        self.written = written
        self.last_access = last_access
        self.index = index
        self.usage = UsageTracker(last_access)
        self.grad: Tensor | None = None
        self.segment = Segment()
        self.in_use = written.sum(dim=1)  # (B,) rows ever written

    def detached(self) -> SparseTape:
        """Start a new segment: backward of later steps stops here (truncated BPTT)."""
        self.segment = Segment()
        return self

    # ---- buffer edits on the flat (B * N, W) view
    def flat_rows(self, rows: Tensor) -> Tensor:
        """Flat row ids (B, S) -> b * N + row."""
        B, N = self.memory.shape[:2]
        return rows + torch.arange(B, device=rows.device).unsqueeze(1) * N

    def put(self, rows: Tensor, valid: Tensor, values: Tensor) -> None:
        flat = self.flat_rows(rows)[valid]
        self.memory.view(-1, self.memory.shape[-1]).index_copy_(
            0, flat, values[valid].to(self.memory.dtype)
        )

    def gather(self, rows: Tensor) -> Tensor:
        """Rows (B, S) of the buffer, copied: (B, S, W); -1 reads row 0."""
        index = rows.clamp_min(0).unsqueeze(-1).expand(-1, -1, self.memory.shape[-1])
        return self.memory.gather(1, index)

    def accumulator(self) -> Tensor:
        """The dense gradient of the memory, dM, kept across backward passes.

        On CPU it is allocated zero-filled by the kernel (numpy's calloc), so only rows
        that backward touches become resident: memory stays flat in N. Touched rows are
        cleared after each backward.
        """
        if self.grad is None or self.grad.shape != self.memory.shape:
            if self.memory.device.type == "cpu" and self.memory.dtype in _NUMPY_DTYPES:
                zeros = np.zeros(tuple(self.memory.shape), dtype=_NUMPY_DTYPES[self.memory.dtype])
                self.grad = torch.from_numpy(zeros)
            else:
                self.grad = torch.zeros_like(self.memory)
        return self.grad


class _WriteRows(torch.autograd.Function):
    """M[rows] <- M[rows] (1 - w e) + w a, in place, with the sparse rollback as backward."""

    @staticmethod
    def forward(ctx, token, weights, erase, add, tape, rows, valid):  # type: ignore[override]
        segment = tape.segment
        old = tape.gather(rows)  # (B, S, W)
        new = old * (1.0 - weights.unsqueeze(-1) * erase.unsqueeze(1)) + weights.unsqueeze(
            -1
        ) * add.unsqueeze(1)
        tape.put(rows, valid, new)
        ctx.tape, ctx.segment, ctx.position = tape, segment, segment.steps
        if any(ctx.needs_input_grad):
            segment.steps += 1
            ctx.save_for_backward(weights, erase, add, old, rows, valid)
        return token.detach() + 0.0

    @staticmethod
    def backward(ctx, grad_token):  # type: ignore[override]
        weights, erase, add, old, rows, valid = ctx.saved_tensors
        tape, segment = ctx.tape, ctx.segment
        accumulator = tape.accumulator()  # holds dM_t on the rows that matter here
        flat = tape.flat_rows(rows)
        grad_new = accumulator.view(-1, accumulator.shape[-1])[flat.clamp_min(0)]  # (B, S, W)
        grad_new = grad_new * valid.unsqueeze(-1)
        w = weights.unsqueeze(-1)  # (B, S, 1)
        e = erase.unsqueeze(1)  # (B, 1, W)
        grad_old = grad_new * (1.0 - w * e)
        grad_weights = (grad_new * (add.unsqueeze(1) - old * e)).sum(-1)
        grad_erase = -(grad_new * old * w).sum(1)
        grad_add = (grad_new * w).sum(1)
        accumulator.view(-1, accumulator.shape[-1]).index_copy_(0, flat[valid], grad_old[valid])
        segment.touched.append(flat[valid])  # the accumulator now holds dM_{t-1} there
        if ctx.position == 0:  # back at the segment's first step: clear for the next pass
            for touched in segment.touched:
                accumulator.view(-1, accumulator.shape[-1]).index_fill_(0, touched, 0.0)
            segment.touched.clear()
        return torch.zeros_like(grad_token), grad_weights, grad_erase, grad_add, None, None, None


class _GatherRows(torch.autograd.Function):
    """Copies of buffer rows; backward adds their gradients to the accumulator."""

    @staticmethod
    def forward(ctx, token, tape, rows):  # type: ignore[override]
        ctx.tape, ctx.segment = tape, tape.segment
        ctx.save_for_backward(rows)
        return tape.gather(rows), token.detach() + 0.0

    @staticmethod
    def backward(ctx, grad_rows, grad_token):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        tape = ctx.tape
        if grad_rows is not None:
            accumulator = tape.accumulator()
            flat = tape.flat_rows(rows)
            valid = rows >= 0
            accumulator.view(-1, accumulator.shape[-1]).index_add_(
                0, flat[valid], grad_rows[valid].to(accumulator.dtype)
            )
            ctx.segment.touched.append(flat[valid])
        zero = torch.zeros((), dtype=grad_rows.dtype if grad_rows is not None else torch.float32)
        return zero if grad_token is None else torch.zeros_like(grad_token), None, None


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
        last_access: (B, N) step of each row's last access, -1 never (in place).
        token: () the link that orders the steps' backward passes.
        clock: (B,) steps taken.
        tape: the ``SparseTape`` (buffers, kNN index, usage heap, rollback record).
    """

    memory: Tensor
    read_weights: Tensor
    read_indices: Tensor
    last_access: Tensor
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
    from tiered.tiers.addressing import safe_norm

    dot = torch.einsum("brw,brkw->brk", keys, rows)
    similarity = dot / (safe_norm(keys).unsqueeze(-1) * safe_norm(rows) + 1e-6)
    scores = (strengths.unsqueeze(-1) * similarity).masked_fill(indices < 0, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # a head with no rows at all reads zeros
    words = torch.einsum("brk,brkw->brw", weights, rows)
    return words, weights, token


def record_access(tape: SparseTape, rows: Tensor, weights: Tensor, time: Tensor) -> None:
    """Update ``last_access`` and the LRU heap for rows whose weight exceeds DELTA."""
    accessed = (weights.detach() > DELTA) & (rows >= 0)
    flat_rows, flat_accessed = rows.reshape(rows.shape[0], -1), accessed.reshape(rows.shape[0], -1)
    times = time.tolist()
    for b, (row_list, mask) in enumerate(
        zip(flat_rows.tolist(), flat_accessed.tolist(), strict=True)
    ):
        hit = sorted({r for r, m in zip(row_list, mask, strict=True) if m})
        if hit:
            tape.usage.access(b, hit, times[b])
            tape.last_access[b, hit] = times[b]


class SparseInterface(NamedTuple):
    """The sparse RAM's slice of the interface vector, split and squashed.

    Attributes:
        read_keys: (B, R, W).
        read_strengths: (B, R), >= 1.
        erase: (B, W) in [0, 1].
        add: (B, W).
        write_gate: (B, 1) in [0, 1].
        interpolation: (B, 1) in [0, 1]: 1 rewrites the rows just read, 0 the LRU row.
    """

    read_keys: Tensor
    read_strengths: Tensor
    erase: Tensor
    add: Tensor
    write_gate: Tensor
    interpolation: Tensor


def sparse_interface_size(width: int, read_heads: int) -> int:
    """R (W + 1) + 2 W + 2 features."""
    return read_heads * (width + 1) + 2 * width + 2


def parse_sparse_interface(interface: Tensor, width: int, read_heads: int) -> SparseInterface:
    """Layout: R read keys (W each), R read strengths, erase (W), add (W), write gate,
    interpolation gate."""
    from tiered.tiers.addressing import oneplus

    B, W, R = interface.shape[0], width, read_heads
    parts = torch.split(interface, [R * W, R, W, W, 1, 1], dim=-1)
    return SparseInterface(
        read_keys=parts[0].reshape(B, R, W),
        read_strengths=oneplus(parts[1]),
        erase=torch.sigmoid(parts[2]),
        add=parts[3],
        write_gate=torch.sigmoid(parts[4]),
        interpolation=torch.sigmoid(parts[5]),
    )


def sparse_step(
    interface: Tensor, state: SparseRAMState, *, width: int, read_heads: int, k: int, tick: Tensor
) -> tuple[Tensor, SparseRAMState, Tensor, Tensor]:
    """One SAM step: write (on ticks), then read K rows per head.

    Returns:
        words (B, R * W), the next state, the erased content (B,) and the rows in use (B,).
    """
    tape: SparseTape = state.tape
    p = parse_sparse_interface(interface, width, read_heads)
    B = interface.shape[0]
    lru = torch.tensor(tape.usage.least_recently_used(), device=interface.device)
    rows, weights, valid = write_weights_over(
        state.read_indices, state.read_weights, lru, p.interpolation, p.write_gate
    )
    weights = weights * tick.to(weights.dtype).unsqueeze(1)  # (B, C); zero off ticks
    old = tape.gather(rows)  # (B, C, W), a detached copy
    erased = (old * weights.unsqueeze(-1) * p.erase.unsqueeze(1)).abs().sum(dim=(1, 2))
    token = _WriteRows.apply(state.token, weights, p.erase, p.add, tape, rows, valid)
    changed = valid & (weights.detach() > 0)
    newly = changed & ~tape.written.gather(1, rows)
    tape.written.view(-1)[tape.flat_rows(rows)[changed]] = True
    tape.in_use += newly.sum(dim=1)
    tape.index.update(tape.memory, rows, changed)
    record_access(tape, rows, weights, state.clock)

    indices = tape.index.search(tape.memory, tape.written, p.read_keys, k)  # (B, R, K)
    words, read_weights, token = gather_read(tape, token, indices, p.read_keys, p.read_strengths)
    record_access(tape, indices, read_weights, state.clock)
    next_state = SparseRAMState(
        memory=tape.memory,
        read_weights=read_weights,
        read_indices=indices,
        last_access=tape.last_access,
        token=token,
        clock=state.clock + 1,
        tape=tape,
    )
    return words.reshape(B, -1), next_state, erased, tape.in_use.to(interface.dtype)
