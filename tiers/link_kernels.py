"""One pass over each temporal link matrix per step: the dense RAM's fused link step.

A step of the DNC updates each write head's link matrix and then reads it twice (forward
and backward weights). Written as tensor operations that is about ten passes over
B x H x N x N numbers forward and more backward, each pass a fresh allocation; at 1024
slots the step is bound by those passes. ``link_step`` does the update and both reads in
one pass (read L_{t-1}, write L_t) and its backward in one more (read L_{t-1} and the
gradient of L_t, write the gradient of L_{t-1}); nothing else of size N x N is saved. On
CPUs the passes are numba kernels (``kernel="numba"``, the default where numba imports), run
over the batch by a few Python threads (the kernels release the GIL, so no OpenMP runtime
spins against torch's); elsewhere the same algebra runs as torch operations
(``kernel="torch"``). ``tiered.tiers.linkage`` keeps the plain autograd reference.

Link matrices come from a per-process pool (``LinkPool``), so a training loop reuses the
same memory batch after batch instead of page-faulting fresh 32 MiB blocks every step.

Named dimensions: B batch, H write heads, R read heads, N slots; P = B H link matrices.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from tiered.tiers import linkage

KERNELS = ("auto", "numba", "torch", "reference")
_kernel = "auto"


def set_kernel(kernel: str) -> str:
    """Choose how ``link_step`` runs: "numba", "torch", "reference" or "auto" (numba on CPUs
    when it imports, else torch); returns the previous choice. "reference" is the plain
    autograd composition of ``tiered.tiers.linkage`` (the code before the fused step), for
    comparisons; CUDA tensors take "torch" unless "reference" is chosen."""
    global _kernel
    if kernel not in KERNELS:
        raise ValueError(f"link kernel must be one of {KERNELS}, got {kernel!r}")
    previous, _kernel = _kernel, kernel
    return previous


def resolved_kernel(device: torch.device) -> str:
    """The kernel ``link_step`` uses for tensors on ``device``."""
    if _kernel == "reference":
        return "reference"
    if device.type != "cpu":
        return "torch"
    if _kernel == "auto":
        return "numba" if _numba_kernels() is not None else "torch"
    if _kernel == "numba" and _numba_kernels() is None:
        raise RuntimeError("link kernel 'numba' was chosen but numba does not import")
    return _kernel


# --------------------------------------------------------------------------- buffer pool


class LinkPool:
    """Large buffers kept for reuse: a tensor goes back to the pool once nothing but the
    pool refers to it (no Python reference, no autograd graph, no view of it).

    glibc returns blocks above its mmap threshold (at most 32 MiB) to the kernel on free,
    so a fresh B x H x N x N tensor per step is zero-filled page by page again: at 1024
    slots that cost more than the step's arithmetic. ``take`` checks the longest-lent
    buffers first (at most ``SCAN`` of them, so a first long sequence, with nothing free
    yet, does not pay a quadratic scan); a free buffer of another shape is dropped. The
    pool holds what one batch needs at its peak (the links of every step, saved for
    backward) until ``clear()``.
    """

    SCAN = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lent: deque[Tensor] = deque()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of this shape, reused when one is free."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        shape = tuple(shape)
        with self._lock:
            for _ in range(min(len(self._lent), self.SCAN)):
                buffer = self._lent.popleft()
                if not _unreferenced(buffer):
                    self._lent.append(buffer)  # still in use: check it last next time
                elif buffer.shape == shape and buffer.dtype == dtype:
                    self._lent.append(buffer)
                    return buffer
                # else: free, of another shape: dropped
            buffer = torch.empty(shape, dtype=dtype, device=device)
            self._lent.append(buffer)
            return buffer

    def held_bytes(self) -> int:
        """Bytes of the buffers the pool holds, free or in use."""
        with self._lock:
            return sum(t.numel() * t.element_size() for t in self._lent)

    def clear(self) -> None:
        """Forget every buffer (those in use stay valid for whoever holds them)."""
        with self._lock:
            self._lent.clear()


def _unreferenced(buffer: Tensor) -> bool:
    """True when only the caller's own names refer to ``buffer``: no other Python name, no
    C++ holder (a saved tensor in an autograd graph), no view sharing its storage."""
    # getrefcount sees: the caller's local name and getrefcount's argument.
    if sys.getrefcount(buffer) > 3:
        return False
    use_count = getattr(buffer, "_use_count", None)
    storage_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or storage_count is None:
        return False  # cannot tell: never reuse
    return use_count() == 1 and storage_count(buffer.untyped_storage()._cdata) <= 2


POOL = LinkPool()


# --------------------------------------------------------------------------- torch algebra


def _forward_torch(link: Tensor, precedence: Tensor, write: Tensor, reads: Tensor):
    """The link step as torch operations; shapes as in ``link_step``."""
    w_i = write.unsqueeze(-1)  # (B, H, N, 1)
    out = torch.mul(link, (1.0 - w_i) - write.unsqueeze(-2))
    out.add_(w_i * precedence.unsqueeze(-2))
    out.diagonal(dim1=-2, dim2=-1).zero_()
    forward = torch.einsum("bhij,brj->brhi", out, reads)
    backward = torch.einsum("bhij,bri->brhj", out, reads)
    return out, forward, backward


def _backward_torch(link, precedence, write, reads, grad_link, grad_forward, grad_backward):
    """Gradients of the link step as torch operations (see ``_LinkStep.backward``)."""
    w_i, w_j = write.unsqueeze(-1), write.unsqueeze(-2)
    # Gt[i, j] = G[i, j] + sum_r gf[r, i] x[r, j] + sum_r x[r, i] gb[r, j], zero diagonal.
    total = torch.einsum("brhi,brj->bhij", grad_forward, reads)
    total += torch.einsum("bri,brhj->bhij", reads, grad_backward)
    if grad_link is not None:
        total += grad_link
    total.diagonal(dim1=-2, dim2=-1).zero_()
    new = (1.0 - w_i - w_j) * link + w_i * precedence.unsqueeze(-2)
    new.diagonal(dim1=-2, dim2=-1).zero_()
    grad_prev = (1.0 - w_i - w_j) * total
    product = total * link
    grad_write = (
        torch.einsum("bhij,bhj->bhi", total, precedence) - product.sum(-1) - product.sum(-2)
    )
    grad_precedence = torch.einsum("bhij,bhi->bhj", total, write)
    grad_reads = torch.einsum("bhij,brhi->brj", new, grad_forward) + torch.einsum(
        "bhij,brhj->bri", new, grad_backward
    )
    return grad_prev, grad_precedence, grad_write, grad_reads


# --------------------------------------------------------------------------- numba kernels


@functools.cache
def _numba_kernels() -> Any | None:
    """The compiled kernels (made on first use, cached on disk by numba), or None without
    numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None

    jit = numba.njit(nogil=True, fastmath=True, cache=True, boundscheck=False)

    @jit
    def forward(link, precedence, write, keep, reads, heads, out, fwd, bwd, start, stop):
        """Pairs q in [start, stop): out[q] = the new link, fwd[q] = L x, bwd[q] = L^T x.

        link, out: (P, N, N); precedence, write, keep (= 1 - write): (P, N);
        reads: (B, R, N); fwd, bwd: (P, R, N).
        """
        N = link.shape[1]
        R = reads.shape[1]
        for q in range(start, stop):
            b = q // heads
            p, w, c = precedence[q], write[q], keep[q]
            for r in range(R):
                for j in range(N):
                    bwd[q, r, j] = 0
            for i in range(N):
                wi, ci = w[i], c[i]
                old, new = link[q, i], out[q, i]
                for j in range(N):
                    new[j] = (ci - w[j]) * old[j] + wi * p[j]
                new[i] = 0
                for r in range(R):
                    x, col = reads[b, r], bwd[q, r]
                    xi = x[i]
                    acc = new[i]
                    for j in range(N):
                        v = new[j]
                        acc += v * x[j]
                        col[j] += v * xi
                    fwd[q, r, i] = acc

    @jit
    def backward(link, precedence, write, keep, reads, heads, grad, has_grad, gf, gb,
                 grad_prev, want_prev, gw, gp, gx, scratch, start, stop):  # fmt: skip
        """Pairs q in [start, stop): the gradients of ``forward`` (see _LinkStep.backward).

        grad, grad_prev: (P, N, N) (grad read only when has_grad, grad_prev written only
        when want_prev); gf, gb, gx: (P, R, N); gw, gp: (P, N); scratch: (2, N) per call.
        """
        N = link.shape[1]
        R = reads.shape[1]
        total, new = scratch[0], scratch[1]
        for q in range(start, stop):
            b = q // heads
            p, w, c = precedence[q], write[q], keep[q]
            gwq, gpq = gw[q], gp[q]
            for j in range(N):
                gwq[j] = 0
                gpq[j] = 0
            for r in range(R):
                for j in range(N):
                    gx[q, r, j] = 0
            for i in range(N):
                wi, ci = w[i], c[i]
                old = link[q, i]
                if has_grad:
                    g = grad[q, i]
                    for j in range(N):
                        total[j] = g[j]
                else:
                    for j in range(N):
                        total[j] = 0
                # Gt[i, j] = G[i, j] + sum_r gf[r, i] x_r[j] + x_r[i] gb[r, j]
                for r in range(R):
                    x, y = reads[b, r], gb[q, r]
                    a, d = gf[q, r, i], x[i]
                    for j in range(N):
                        total[j] += a * x[j] + d * y[j]
                total[i] = 0
                row = total[i]
                for j in range(N):
                    t, o, cj = total[j], old[j], ci - w[j]
                    new[j] = cj * o + wi * p[j]
                    row += t * (p[j] - o)
                    gwq[j] -= t * o
                    gpq[j] += t * wi
                    total[j] = cj * t  # now the gradient of L_{t-1}'s row
                new[i] = 0
                gwq[i] += row
                if want_prev:
                    out = grad_prev[q, i]
                    for j in range(N):
                        out[j] = total[j]
                for r in range(R):
                    y, gxr = gb[q, r], gx[q, r]
                    a = gf[q, r, i]
                    acc = new[i]
                    for j in range(N):
                        v = new[j]
                        gxr[j] += v * a
                        acc += v * y[j]
                    gxr[i] += acc

    return forward, backward


# Below this many link entries (P N^2) a kernel runs on the calling thread: handing work
# to another thread costs more than it saves.
PARALLEL_ENTRIES = 1 << 18


def _threads(pairs: int, slots: int) -> int:
    if pairs * slots * slots < PARALLEL_ENTRIES:
        return 1
    return max(1, min(pairs, torch.get_num_threads()))


@functools.lru_cache(maxsize=4)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """Kernel threads, made once per count in each process (a forked child makes its own)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiered-links")


def _run(pairs: int, slots: int, call) -> None:
    """Run ``call(start, stop)`` over [0, pairs) split among up to torch's thread count."""
    threads = _threads(pairs, slots)
    if threads == 1:
        call(0, pairs)
        return
    bounds = [pairs * k // threads for k in range(threads + 1)]
    jobs = [
        _pool(threads, os.getpid()).submit(call, bounds[k], bounds[k + 1])
        for k in range(1, threads)
    ]
    call(bounds[0], bounds[1])
    for job in jobs:
        job.result()


def _forward_numba(link: Tensor, precedence: Tensor, write: Tensor, reads: Tensor):
    forward_kernel, _ = _numba_kernels()
    B, H, N, _ = link.shape
    R = reads.shape[1]
    P = B * H
    out = POOL.take((B, H, N, N), link.dtype, link.device)
    fwd = torch.empty(B, H, R, N, dtype=link.dtype)
    bwd = torch.empty(B, H, R, N, dtype=link.dtype)
    arrays = [
        t.contiguous().reshape(shape).numpy()
        for t, shape in (
            (link, (P, N, N)),
            (precedence, (P, N)),
            (write, (P, N)),
            (1.0 - write, (P, N)),
            (reads, (B, R, N)),
        )
    ]
    outs = [out.view(P, N, N).numpy(), fwd.view(P, R, N).numpy(), bwd.view(P, R, N).numpy()]
    _run(P, N, lambda s, e: forward_kernel(*arrays[:5], H, *outs, s, e))
    return out, fwd.transpose(1, 2), bwd.transpose(1, 2)


def _backward_numba(link, precedence, write, reads, grad_link, grad_forward, grad_backward,
                    want_prev):  # fmt: skip
    _, backward_kernel = _numba_kernels()
    B, H, N, _ = link.shape
    R = reads.shape[1]
    P = B * H
    dtype = link.dtype
    grad_prev = POOL.take((B, H, N, N), dtype, link.device) if want_prev else None
    gw = torch.empty(P, N, dtype=dtype)
    gp = torch.empty(P, N, dtype=dtype)
    gx = torch.empty(B, H, R, N, dtype=dtype)
    flat = lambda t, shape: t.contiguous().reshape(shape).numpy()  # noqa: E731
    ins = [
        flat(link, (P, N, N)),
        flat(precedence, (P, N)),
        flat(write, (P, N)),
        flat(1.0 - write, (P, N)),
        flat(reads, (B, R, N)),
    ]
    dummy = ins[0][:1, :1, :1]
    grad = flat(grad_link, (P, N, N)) if grad_link is not None else dummy
    gf = flat(grad_forward.transpose(1, 2), (P, R, N))
    gb = flat(grad_backward.transpose(1, 2), (P, R, N))
    prev = grad_prev.view(P, N, N).numpy() if grad_prev is not None else dummy
    outs = [gw.numpy(), gp.numpy(), gx.view(P, R, N).numpy()]

    def call(start: int, stop: int) -> None:
        scratch = torch.empty(2, N, dtype=dtype).numpy()
        backward_kernel(*ins, H, grad, grad_link is not None, gf, gb, prev, want_prev,
                        *outs, scratch, start, stop)  # fmt: skip

    _run(P, N, call)
    return grad_prev, gp.view(B, H, N), gw.view(B, H, N), gx.sum(dim=1)


# --------------------------------------------------------------------------- the step


class _LinkStep(torch.autograd.Function):
    """L_t from L_{t-1}, and both directional reads of L_t, with a one-pass backward.

    Backward, with Gt = dLoss/dL_t + sum_r gf_r x_r^T + sum_r x_r gb_r^T (zero diagonal):
    dL_{t-1} = (1 - w_i - w_j) Gt; dw[k] = sum_j Gt[k, j] (p[j] - L[k, j]) -
    sum_i Gt[i, k] L[i, k]; dp[j] = sum_i Gt[i, j] w[i]; dx_r = L_t^T gf_r + L_t gb_r.
    Saved: the inputs only (L_{t-1} is the previous step's output, held anyway).
    """

    @staticmethod
    def forward(ctx, link, precedence, write, reads):  # type: ignore[override]
        kernel = resolved_kernel(link.device)
        ctx.kernel = kernel
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(link, precedence, write, reads)
        if kernel == "numba":
            return _forward_numba(link, precedence, write, reads)
        return _forward_torch(link, precedence, write, reads)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_link, grad_forward, grad_backward):  # type: ignore[override]
        link, precedence, write, reads = ctx.saved_tensors
        B, H, N, _ = link.shape
        R = reads.shape[1]
        if grad_forward is None:
            grad_forward = link.new_zeros(B, R, H, N)
        if grad_backward is None:
            grad_backward = link.new_zeros(B, R, H, N)
        if ctx.kernel == "numba":
            grads = _backward_numba(link, precedence, write, reads, grad_link, grad_forward,
                                    grad_backward, ctx.needs_input_grad[0])  # fmt: skip
        else:
            grads = _backward_torch(link, precedence, write, reads, grad_link, grad_forward,
                                    grad_backward)  # fmt: skip
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def link_step(
    link: Tensor, precedence: Tensor, write_weights: Tensor, read_weights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """L_t = (1 - w_i - w_j) L_{t-1} + w_i p_{t-1}[j] (zero diagonal), then f = L_t x and
    b = L_t^T x for the last read weights x, in one pass over each link matrix.

    Same values and gradients as ``linkage.update_link_reference`` followed by
    ``linkage.directional_read_weights`` both ways.

    Args:
        link: (B, H, N, N) L_{t-1}.
        precedence: (B, H, N) p_{t-1}.
        write_weights: (B, H, N) w_t.
        read_weights: (B, R, N) the previous step's read weights x.

    Returns:
        L_t (B, H, N, N), forward weights (B, R, H, N), backward weights (B, R, H, N).
    """
    if resolved_kernel(link.device) == "reference":
        new = linkage.update_link(link, precedence, write_weights)
        return (
            new,
            linkage.directional_read_weights(new, read_weights, forward=True),
            linkage.directional_read_weights(new, read_weights, forward=False),
        )
    return _LinkStep.apply(link, precedence, write_weights, read_weights)
