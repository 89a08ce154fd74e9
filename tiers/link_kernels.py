"""One pass over each temporal link matrix per step: the dense RAM's fused link step.

A step of the DNC updates each write head's link matrix and then reads it twice (forward
and backward weights). Written as tensor operations that is about ten passes over
B x H x N x N numbers forward and more backward, each a fresh allocation; at 1024 slots
the step is bound by those passes. ``link_step`` does the update and both reads in one pass
(read L_{t-1}, write L_t) and its backward in one more (read L_{t-1} and the gradient of
L_t, write the gradient of L_{t-1}); nothing else of size N x N is saved.

On CPUs the passes are C kernels (``kernels/links.c``, ``kernel="c"``), compiled at first
use with the system C compiler for this machine and kept under ``~/.cache/tiered/kernels``.
Loaded after torch, their OpenMP loops run on torch's own worker threads. Without a
compiler, on GPUs, and for dtypes other than float32/float64, the same algebra runs as
torch operations (``kernel="torch"``). ``tiered.tiers.linkage`` keeps the plain autograd
reference (``kernel="reference"``).

Link matrices come from a per-process pool (``LinkPool``), so a training loop reuses the
same memory batch after batch instead of page-faulting fresh 32 MiB blocks every step.

Named dimensions: B batch, H write heads, R read heads, N slots; P = B H link matrices.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from tiered.tiers import linkage
from tiered.tiers.link_pool import POOL, LinkPool  # noqa: F401  (LinkPool: re-exported)

KERNELS = ("auto", "c", "torch", "reference")
_kernel = "auto"


def set_kernel(kernel: str) -> str:
    """Choose how ``link_step`` runs: "c", "torch", "reference" or "auto" (the default: C
    on CPUs for float32/float64 when the kernels build, else torch); returns the previous
    choice. "reference" is the plain autograd composition of ``tiered.tiers.linkage`` (the
    code before the fused step), for comparisons."""
    global _kernel
    if kernel not in KERNELS:
        raise ValueError(f"link kernel must be one of {KERNELS}, got {kernel!r}")
    previous, _kernel = _kernel, kernel
    return previous


def resolved_kernel(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The kernel ``link_step`` uses for tensors of this device and dtype."""
    if _kernel in ("reference", "torch"):
        return _kernel
    if device.type != "cpu" or _suffix(dtype) is None:
        return "torch"
    if _kernel == "c" and _library() is None:
        raise RuntimeError("link kernel 'c' was chosen but the C kernels could not be built")
    return "c" if _library() is not None else "torch"


# --------------------------------------------------------------------------- torch algebra


def _scaled(link: Tensor, write: Tensor, out: Tensor) -> Tensor:
    """out = (1 - w_i - w_j) link, in two passes and no N x N temporary."""
    torch.mul(link, (1.0 - write).unsqueeze(-1), out=out)
    return out.addcmul_(link, write.unsqueeze(-2), value=-1.0)


def _forward_torch(link: Tensor, precedence: Tensor, write: Tensor, reads: Tensor):
    """The link step as torch operations; shapes as in ``link_step``. Its one N x N result
    comes from the pool (on CPUs)."""
    B, H, N, _ = link.shape
    out = _scaled(link, write, POOL.take((B, H, N, N), link.dtype, link.device))
    flat = out.view(B * H, N, N)
    flat.baddbmm_(write.reshape(B * H, N, 1), precedence.reshape(B * H, 1, N))
    out.diagonal(dim1=-2, dim2=-1).zero_()
    forward = torch.einsum("bhij,brj->brhi", out, reads)
    backward = torch.einsum("bhij,bri->brhj", out, reads)
    return out, forward, backward


def _backward_torch(link, precedence, write, reads, grad_link, grad_forward, grad_backward):
    """Gradients of the link step as torch operations (see ``_LinkStep.backward``); its
    N x N temporaries come from the pool (on CPUs)."""
    B, H, N, _ = link.shape
    R = reads.shape[1]
    P = B * H

    def take() -> Tensor:
        return POOL.take((B, H, N, N), link.dtype, link.device)

    # Gt = G + U V with U = [gf^T, x^T] (P, N, 2R), V = [x, gb] (P, 2R, N); zero diagonal.
    x = reads.unsqueeze(1).expand(B, H, R, N)
    u = torch.cat([grad_forward.transpose(1, 2), x], dim=2).reshape(P, 2 * R, N)
    v = torch.cat([x, grad_backward.transpose(1, 2)], dim=2).reshape(P, 2 * R, N)
    total = take()
    if grad_link is None:
        torch.bmm(u.transpose(1, 2), v, out=total.view(P, N, N))
    else:
        torch.baddbmm(grad_link.reshape(P, N, N), u.transpose(1, 2), v,
                      out=total.view(P, N, N))  # fmt: skip
    total.diagonal(dim1=-2, dim2=-1).zero_()
    grad_precedence = torch.einsum("bhij,bhi->bhj", total, write)
    product = torch.mul(total, link, out=take())
    grad_write = (
        torch.einsum("bhij,bhj->bhi", total, precedence) - product.sum(-1) - product.sum(-2)
    )
    del product
    new = _scaled(link, write, take())
    new.view(P, N, N).baddbmm_(write.reshape(P, N, 1), precedence.reshape(P, 1, N))
    new.diagonal(dim1=-2, dim2=-1).zero_()
    grad_reads = torch.einsum("bhij,brhi->brj", new, grad_forward) + torch.einsum(
        "bhij,brhj->bri", new, grad_backward
    )
    del new
    grad_prev = _scaled(total, write, take())
    return grad_prev, grad_precedence, grad_write, grad_reads


# --------------------------------------------------------------------------- C kernels

SOURCE = Path(__file__).with_name("kernels") / "links.c"
# -fassociative-math (without the rest of -ffast-math: NaN and infinities keep their meaning)
# lets the compiler vectorise the row sums. On x86, 256-bit vectors measured faster than
# 512-bit ones (forward 3.9 against 4.5 ms per step at 1024 slots, on the 2-core EPYC).
FLAGS = ("-O3", "-march=native", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-fPIC", "-shared")  # fmt: skip
X86_FLAGS = ("-mprefer-vector-width=256",)
OPENMP = "-fopenmp"
# Below this many link entries (P N^2) a kernel runs on one thread: waking others costs more.
PARALLEL_ENTRIES = 1 << 18


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tiered" / "kernels"


def _flags() -> tuple[str, ...]:
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    return FLAGS + (X86_FLAGS if x86 else ())


def _machine_key(compiler: str) -> str:
    """A hash of the source, the compiler and this CPU (the build uses -march=native)."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(_flags()).encode())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    digest.update(version.stdout.encode())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            digest.update(
                "".join(l for l in handle if l.startswith(("model name", "flags"))).encode()
            )
    except OSError:
        digest.update(platform.processor().encode())
    return digest.hexdigest()[:16]


def build_library(directory: Path | None = None) -> Path:
    """Compile ``kernels/links.c`` for this machine (once: the file is kept, named by a hash
    of the source, compiler and CPU) and return the shared library's path.

    Built with OpenMP where the compiler has it (its loops then run on torch's threads), else
    without (one thread; Apple's clang, for one, has no OpenMP by default).

    Raises:
        RuntimeError: no C compiler on PATH (``cc``, ``gcc`` or ``clang``), or it failed.
    """
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    key = _machine_key(compiler)
    if directory is None:
        directory = _cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: this user's folder in the temporary directory
            directory = Path(tempfile.gettempdir()) / f"tiered-kernels-{os.getuid()}"
    target = directory / f"links-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
    for extra in ((OPENMP,), ()):
        done = subprocess.run([compiler, *_flags(), *extra, "-o", str(partial), str(SOURCE)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode == 0:
            break
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} failed on {SOURCE.name}: {done.stderr.strip()[-500:]}")
    os.replace(partial, target)  # atomic: concurrent builds each finish a whole file
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning) when they cannot be built."""
    try:
        library = ctypes.CDLL(str(build_library()))  # after torch: binds to torch's OpenMP
    except (OSError, RuntimeError) as error:
        warnings.warn(
            f"tiered: the dense RAM's link kernels could not be built ({error}); using the "
            f"slower torch path (docs/tiers.md, 'Speed of the dense RAM')",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        forward = getattr(library, f"link_forward_{suffix}")
        forward.argtypes = [pointer] * 4 + [size] * 5 + [pointer] * 3
        forward.restype = None
        backward = getattr(library, f"link_backward_{suffix}")
        backward.argtypes = [pointer] * 4 + [size] * 5 + [pointer] * 7
        backward.restype = size
    library.links_openmp.argtypes = []
    library.links_openmp.restype = size
    return library


def built_with_openmp() -> bool:
    """Whether the C kernels were built with OpenMP (False also when they were not built)."""
    library = _library()
    return library is not None and bool(library.links_openmp())


def _fits_c(link: Tensor, precedence: Tensor, write: Tensor, reads: Tensor) -> bool:
    """The C kernels take one float dtype and the exact documented shapes; anything else
    (mixed dtypes, broadcast shapes) goes to the torch path, which promotes and broadcasts."""
    if link.dim() != 4 or precedence.dim() != 3 or write.dim() != 3 or reads.dim() != 3:
        return False
    B, H, N, _ = link.shape
    return (
        link.dtype == precedence.dtype == write.dtype == reads.dtype
        and all(t.device.type == "cpu" for t in (link, precedence, write, reads))
        and link.shape == (B, H, N, N)
        and precedence.shape == write.shape == (B, H, N)
        and reads.shape[0] == B
        and reads.shape[2] == N
    )


def _suffix(dtype: torch.dtype) -> str | None:
    return {torch.float32: "f32", torch.float64: "f64"}.get(dtype)


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _forward_c(link: Tensor, precedence: Tensor, write: Tensor, reads: Tensor):
    B, H, N, _ = link.shape
    R = reads.shape[1]
    P = B * H
    out = POOL.take((B, H, N, N), link.dtype, link.device)
    fwd = torch.empty(B, H, R, N, dtype=link.dtype)
    bwd = torch.empty(B, H, R, N, dtype=link.dtype)
    inputs = [t.contiguous() for t in (link, precedence, write, reads)]
    kernel = getattr(_library(), f"link_forward_{_suffix(link.dtype)}")
    kernel(*map(_pointer, inputs), P, H, N, R, P * N * N >= PARALLEL_ENTRIES,
           *map(_pointer, (out, fwd, bwd)))  # fmt: skip
    return out, fwd.transpose(1, 2), bwd.transpose(1, 2)


def _backward_c(link, precedence, write, reads, grad_link, grad_forward, grad_backward,
                want_prev):  # fmt: skip
    B, H, N, _ = link.shape
    R = reads.shape[1]
    P = B * H
    dtype = link.dtype
    grad_prev = POOL.take((B, H, N, N), dtype, link.device) if want_prev else None
    gw = torch.empty(B, H, N, dtype=dtype)
    gp = torch.empty(B, H, N, dtype=dtype)
    gx = torch.empty(B, H, R, N, dtype=dtype)
    inputs = [t.contiguous() for t in (link, precedence, write, reads)]
    grad = None if grad_link is None else grad_link.contiguous()
    gf = grad_forward.transpose(1, 2).contiguous()  # (B, H, R, N)
    gb = grad_backward.transpose(1, 2).contiguous()
    kernel = getattr(_library(), f"link_backward_{_suffix(dtype)}")
    failed = kernel(*map(_pointer, inputs), P, H, N, R, P * N * N >= PARALLEL_ENTRIES,
                    *map(_pointer, (grad, gf, gb, grad_prev, gw, gp, gx)))  # fmt: skip
    if failed:
        raise MemoryError(f"link step backward: no memory for {4 * N} scratch numbers")
    return grad_prev, gp, gw, gx.sum(dim=1)


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
        kernel = resolved_kernel(link.device, link.dtype)
        if kernel == "c" and not _fits_c(link, precedence, write, reads):
            kernel = "torch"
        ctx.kernel = kernel
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(link, precedence, write, reads)
        if kernel == "c":
            return _forward_c(link, precedence, write, reads)
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
        if ctx.kernel == "c":
            grads = _backward_c(link, precedence, write, reads, grad_link, grad_forward,
                                    grad_backward, ctx.needs_input_grad[0])  # fmt: skip
        else:
            grads = _backward_torch(link, precedence, write, reads, grad_link, grad_forward,
                                    grad_backward)  # fmt: skip
        return tuple(
            g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=True)
        )


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
    if resolved_kernel(link.device, link.dtype) == "reference":
        new = linkage.update_link(link, precedence, write_weights)
        return (
            new,
            linkage.directional_read_weights(new, read_weights, forward=True),
            linkage.directional_read_weights(new, read_weights, forward=False),
        )
    # One dtype and the exact shapes for the fused step (autograd sees the promotion and the
    # broadcast, as in the reference).
    dtype = functools.reduce(
        torch.promote_types, (t.dtype for t in (precedence, write_weights, read_weights)),
        link.dtype,
    )  # fmt: skip
    link, precedence, write_weights, read_weights = (
        t.to(dtype) for t in (link, precedence, write_weights, read_weights)
    )
    B, H, N = link.shape[0], link.shape[1], link.shape[-1]
    precedence = precedence.expand(B, H, N)
    write_weights = write_weights.expand(B, H, N)
    return _LinkStep.apply(link, precedence, write_weights, read_weights)
