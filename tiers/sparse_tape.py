"""The machinery under the sparse RAM: its buffers, caches and backward (the rollback).

``SparseTape`` holds a sequence's memory buffer, ``written`` mask, ``last_access``, kNN index
and LRU heap (everything but the buffers is a cache rebuildable from them).
``_WriteRows`` and ``_GatherRows`` are the two autograd Functions a step goes through; a
scalar token chains them (write t, read t, write t+1, ...) so that autograd visits the
steps strictly in reverse. Backward never reads or changes the buffer: it rolls the dense
gradient accumulator dM back through each write from the write's saved old rows.

Named dimensions: B batch, N slots, W width, S rows touched by a step.
"""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

from tiered.knn import KNNIndex
from tiered.state import Opaque
from tiered.tier import ACCESS_THRESHOLD
from tiered.tiers.sparse_links import LinkTables, lazy_zeros

DELTA = ACCESS_THRESHOLD  # a weight above this counts as an access (SAM's delta)


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
    the link tables (sparse DNC, optional), the kNN index, the usage tracker, the gradient
    accumulator and the count of writes recorded in the current segment.
    Everything but the buffers is a cache rebuildable from the buffers.
    """

    def __init__(
        self,
        memory: Tensor,
        written: Tensor,
        last_access: Tensor,
        index: KNNIndex,
        links: LinkTables | None = None,
    ):
        self.memory = memory
        self.links = links  # the sparse temporal links' buffers, None without links
        self.written = written
        self.last_access = last_access
        self.index = index
        self.usage = UsageTracker(last_access)
        self.grad: Tensor | None = None
        self.touched: list[Tensor] = []  # flat row ids of the accumulator not yet cleared
        self.pass_id: int | None = None  # the autograd graph task that last touched them
        # Writes recorded for backward since the last detach (the current segment): backward
        # clears the accumulator when it reaches the segment's first.
        self.recorded = 0
        self.in_use = written.sum(dim=1)  # (B,) rows ever written
        self.head: Tensor | None = None  # the newest state's token (detached)

    def check_newest(self, token: Tensor, owner: str) -> None:
        """Raise unless ``token`` is the newest state's: the buffers hold only the newest
        memory, so continuing from an older state would read and write the wrong one."""
        if self.head is not None and token.data_ptr() != self.head.data_ptr():
            raise RuntimeError(
                f"{owner}: this state is not the newest state of its sequence. The sparse "
                "RAM's buffers are shared by all states of a sequence and hold the newest "
                "memory only. Continue from the newest state; to branch a sequence, copy the "
                "newest state with RAM.rebuild_state(state) and step each copy"
            )

    def advance(self, token: Tensor) -> None:
        """Record ``token`` as the newest state's."""
        self.head = token.detach()

    def detached(self) -> SparseTape:
        """Start a new segment: backward of later steps stops here (truncated BPTT)."""
        self.recorded = 0
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
        """The dense gradient of the memory, dM, for the backward pass now running.

        On CPU it is allocated zero-filled by the kernel (``lazy_zeros``), so only rows
        that backward touches become resident: memory stays flat in N. Touched rows are
        cleared when backward reaches a segment's first step. A pass that stopped before
        that (``torch.autograd.grad`` asked only for some inputs, an error raised inside
        backward) leaves rows behind: the next pass, a different autograd graph task,
        clears them before it adds anything, so it never sees another pass's gradients.
        """
        if self.grad is None or self.grad.shape != self.memory.shape:
            self.grad = lazy_zeros(tuple(self.memory.shape), self.memory.dtype, self.memory.device)
            self.touched.clear()
        task = torch._C._current_graph_task_id()  # the running backward pass (torch's own
        # non-reentrant checkpointing tells passes apart the same way)
        if task != self.pass_id:
            self.clear_touched()
            self.pass_id = task
        return self.grad

    def touch(self, flat: Tensor) -> None:
        """Note accumulator rows (flat ids) that now hold a gradient."""
        self.touched.append(flat)

    def clear_touched(self) -> None:
        """Zero every accumulator row noted since the last clear."""
        if self.grad is not None:
            flat_grad = self.grad.view(-1, self.grad.shape[-1])
            for rows in self.touched:
                flat_grad.index_fill_(0, rows, 0.0)
        self.touched.clear()


class _WriteRows(torch.autograd.Function):
    """M[rows] <- M[rows] (1 - w e) + w a, in place, with the sparse rollback as backward."""

    @staticmethod
    def forward(ctx, token, weights, erase, add, tape, rows, valid, old):  # type: ignore[override]
        # ``old``: (B, S, W) the rows before this write, gathered once by the caller.
        new = old * (1.0 - weights.unsqueeze(-1) * erase.unsqueeze(1)) + weights.unsqueeze(
            -1
        ) * add.unsqueeze(1)
        tape.put(rows, valid, new)
        ctx.tape, ctx.position = tape, tape.recorded
        if any(ctx.needs_input_grad):
            tape.recorded += 1
            ctx.save_for_backward(weights, erase, add, old, rows, valid)
        return token.detach() + 0.0

    @staticmethod
    def backward(ctx, grad_token):  # type: ignore[override]
        weights, erase, add, old, rows, valid = ctx.saved_tensors
        tape = ctx.tape
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
        tape.touch(flat[valid])  # the accumulator now holds dM_{t-1} there
        if ctx.position == 0:  # back at the segment's first step: clear for the next pass
            tape.clear_touched()
        return (
            torch.zeros_like(grad_token),
            grad_weights,
            grad_erase,
            grad_add,
            None,
            None,
            None,
            None,
        )


class _GatherRows(torch.autograd.Function):
    """Copies of buffer rows; backward adds their gradients to the accumulator."""

    @staticmethod
    def forward(ctx, token, tape, rows):  # type: ignore[override]
        ctx.tape = tape
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
            tape.touch(flat[valid])
        dtype = grad_rows.dtype if grad_rows is not None else torch.float32
        zero = torch.zeros((), dtype=dtype, device=rows.device)  # the token's gradient
        return zero if grad_token is None else torch.zeros_like(grad_token), None, None
