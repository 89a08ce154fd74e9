"""A per-process pool of large CPU buffers for the dense RAM's link matrices.

glibc returns freed blocks above its mmap threshold (at most 32 MiB) to the kernel, so a
fresh B x H x N x N tensor per step is zero-filled page by page again; at 1024 slots that
cost more than the link step's arithmetic. ``tiered.tiers.link_kernels`` takes its link
matrices and backward temporaries from ``POOL`` instead.
"""

from __future__ import annotations

import threading
from collections import deque

import torch
from torch import Tensor


class LinkPool:
    """Large buffers kept for reuse: a buffer is lent again once nothing but the pool
    refers to its memory (no tensor a user holds, no autograd graph, no view of it).

    glibc returns blocks above its mmap threshold (at most 32 MiB) to the kernel on free,
    so a fresh B x H x N x N tensor per step is zero-filled page by page again: at 1024
    slots that cost more than the step's arithmetic. The pool keeps one base tensor per
    buffer and lends a separate tensor over the base's storage, so "in use" is read from
    the storage's reference count alone: every tensor, view or saved tensor over the memory
    counts, and Python's own reference counts (which newer CPythons do not keep for every
    local name) do not matter.

    ``take`` checks the longest-lent buffers first. When it checked every buffer and none
    was free (a first long sequence, with nothing released yet), it checks at most ``SCAN``
    for the next eighth of its size in takes, so such a sequence does not pay a quadratic
    scan. A free buffer of another shape is dropped. The pool holds what a batch needs at
    its peak (the link matrices every step saves for backward, and two or three more) until
    ``clear()``.
    """

    SCAN = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bases: deque[Tensor] = deque()
        self._short = 0  # takes left that check at most SCAN buffers

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of this shape, over reused memory when some is free."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        shape = tuple(shape)
        with self._lock:
            count = len(self._bases)
            limit = min(count, self.SCAN) if self._short else count
            self._short = max(0, self._short - 1)
            for _ in range(limit):
                base = self._bases.popleft()
                free = _unreferenced(base)
                if free and base.shape == shape and base.dtype == dtype:
                    self._bases.append(base)
                    return _alias(base)
                if not free:
                    self._bases.append(base)  # in use: checked last next time
                # else: free, of another shape: dropped
            if limit == count > self.SCAN:
                self._short = count // 8
            base = torch.empty(shape, dtype=dtype, device=device)
            self._bases.append(base)
            return _alias(base)

    def held_bytes(self) -> int:
        """Bytes of the buffers the pool holds, free or in use."""
        with self._lock:
            return sum(t.numel() * t.element_size() for t in self._bases)

    def clear(self) -> None:
        """Forget every buffer (those in use stay valid for whoever holds them)."""
        with self._lock:
            self._bases.clear()
            self._short = 0


def _alias(base: Tensor) -> Tensor:
    """A new tensor over ``base``'s storage (not a view: its own version counter)."""
    out = torch.empty(0, dtype=base.dtype, device=base.device)
    return out.set_(base.untyped_storage(), 0, base.shape, base.stride())


def _unreferenced(base: Tensor) -> bool:
    """True when nothing but ``base`` refers to its storage (the count also sees the
    temporary storage object this check makes)."""
    storage_count = getattr(torch._C, "_storage_Use_Count", None)
    if storage_count is None:
        return False  # cannot tell: never reuse
    return storage_count(base.untyped_storage()._cdata) <= 2


POOL = LinkPool()
