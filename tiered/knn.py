"""k-nearest-neighbour search over memory rows, behind one small interface.

Similarity is cosine: rows and queries are compared after L2 normalisation. An index is a
*cache*: it holds nothing that cannot be rebuilt from the memory tensor (``rebuild``), so
it can be dropped after loading a checkpoint or moving to another device.

Backends:
    ExactKNN   matmul + ``torch.topk`` over all rows, block by block (bounded temporaries),
               with the rows' norms kept up to date; the default for small N and on GPUs.
    FaissKNN   (``tiered.knn_faiss``) FAISS IVF-Flat per batch element with a hash-table
               direct map, updated incrementally (remove and re-add only the rows that
               changed). While it holds at most EXHAUSTIVE_ROWS rows (``RAM(exhaustive_rows=)``
               sets another bound) it is searched exactly in torch among the rows it
               holds (the written rows). Beyond that its coarse
               quantiser is trained on the memory's own rows, and again each time the rows
               it holds double (``train_on="memory"``, the default; "random" keeps the
               quantiser trained once on random unit vectors). Its IVF lists live on the
               CPU; FAISS's GPU indexes are not used (docs/ram.md).

Named dimensions: B batch, N rows, W width, h queries per batch element, k neighbours.
Rows never written (``written`` False) are never returned; when fewer than k rows are
eligible, missing neighbours have index -1.
"""

from __future__ import annotations

import abc
import importlib
import warnings
from typing import Any

import torch
from torch import Tensor

from tiered.validation import check_choice, check_positive_int

BACKENDS = ("auto", "exact", "faiss")
# index="auto" picks FAISS on CPU from this many rows on (when FAISS is installed). On the
# 2-core CPU, filled memories, nprobe 64: at 2^16 slots the sparse DNC's step took 22.1 ms
# with exact search and 19.5 ms with FAISS; below that exact search is the cheaper, and it
# misses nothing (experiments/results/sparse_ram_scaling_prefill1_nprobe64_log2-10-16-20.md).
FAISS_AUTO_ROWS = 1 << 16
# Inverted lists a FAISS search visits by default: the fewest with which a noisy query's
# source row was found at least 99% of the time at every size measured, 2^14 to 2^20
# (experiments/results/knn_recall.md; 100% at 2^20 in the scaling run above).
DEFAULT_NPROBE = 64
# A FAISS index holding at most this many rows is searched exactly among them (in torch).
EXHAUSTIVE_ROWS = 4096
# Exact search scores at most this many (row, query) pairs at once: 4 MiB in float32 on the
# CPU, where blocks that fit the caches were fastest (at 2^20 slots, batch 8, 4 queries:
# 182 ms per search with 2^20, 256 ms with 2^22, 295 ms with 2^24; 409 ms all at once and
# without cached norms); 256 MiB on GPUs, where each block costs kernel launches.
BLOCK_SCORES = {"cpu": 1 << 20, "cuda": 1 << 26}
_warned_missing_faiss = False


def load_faiss() -> Any | None:
    """Import FAISS lazily; None when it is not installed."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def normalize_rows(x: Tensor) -> Tensor:
    """L2-normalise the last axis; zero vectors stay zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class KNNIndex(abc.ABC):
    """Per-batch-element nearest-neighbour index over the rows of a (B, N, W) memory."""

    @abc.abstractmethod
    def rebuild(self, memory: Tensor, written: Tensor) -> None:
        """Forget everything and index the written rows of ``memory`` (B, N, W)."""

    @abc.abstractmethod
    def update(self, memory: Tensor, rows: Tensor, valid: Tensor) -> None:
        """Re-index ``rows`` (B, S) (where ``valid``) from their new contents in ``memory``."""

    @abc.abstractmethod
    def search(self, memory: Tensor, written: Tensor, queries: Tensor, k: int) -> Tensor:
        """Indices (B, h, k) of the k rows most similar to ``queries`` (B, h, W), or -1."""


def exact_search(
    memory: Tensor,
    written: Tensor,
    queries: Tensor,
    k: int,
    norms: Tensor | None = None,
    block_scores: int | None = None,
) -> Tensor:
    """Exact cosine top-k over all written rows, block by block over the rows.

    The rows are scored in blocks of at most ``block_scores`` scores (B h rows each) and
    each block's top k merged into a running top k, so the temporaries stay bounded whatever
    N is (one (B, h, N) score matrix at N = 2^20 was 128 MiB per temporary). Among rows
    with exactly equal scores, which are returned and in what order may differ with the
    block size (as it is unspecified for ``torch.topk`` itself).

    Args:
        memory: (B, N, W).
        written: (B, N) boolean; only these rows are eligible.
        queries: (B, h, W).
        k: neighbours per query.
        norms: (B, N) the rows' L2 norms, if kept up to date by the caller (saves one pass
            over the memory); computed per block when None.
        block_scores: the most scores computed at once (default: ``BLOCK_SCORES`` of the
            memory's device type).

    Returns:
        (B, h, k) row indices, most similar first; -1 where fewer than k rows are eligible.
    """
    B, N, _ = memory.shape
    h = queries.shape[1]
    if N == 0:
        return torch.full((B, h, k), -1, dtype=torch.long, device=memory.device)
    if block_scores is None:
        block_scores = BLOCK_SCORES.get(memory.device.type, BLOCK_SCORES["cuda"])
    block = max(1, block_scores // max(1, B * h))
    with torch.no_grad():
        unit_queries = normalize_rows(queries).to(memory.dtype).transpose(1, 2)  # (B, W, h)
        best_scores: Tensor | None = None
        best_index: Tensor | None = None
        for start in range(0, N, block):
            stop = min(start + block, N)
            rows = memory[:, start:stop]  # (B, n, W), a view
            # (B, h, n) by bmm on the memory as it lies, divided by the row norms instead of
            # normalising the memory
            scores = torch.bmm(rows, unit_queries).transpose(1, 2)
            block_norms = rows.norm(dim=-1) if norms is None else norms[:, start:stop]
            scores = scores / block_norms.clamp_min(1e-12).unsqueeze(1)
            scores = scores.masked_fill(~written[:, None, start:stop], float("-inf"))
            top, index = torch.topk(scores, min(k, stop - start), dim=-1)
            index = index + start
            if best_scores is not None and best_index is not None:
                top = torch.cat([best_scores, top], dim=-1)
                index = torch.cat([best_index, index], dim=-1)
                top, order = torch.topk(top, min(k, top.shape[-1]), dim=-1)
                index = index.gather(-1, order)
            best_scores, best_index = top, index
        assert best_scores is not None and best_index is not None
        index = best_index.masked_fill(torch.isinf(best_scores), -1)
        if index.shape[-1] < k:
            pad = index.new_full((*index.shape[:-1], k - index.shape[-1]), -1)
            index = torch.cat([index, pad], dim=-1)
        return index


def row_norms(memory: Tensor, rows: Tensor) -> Tensor:
    """L2 norms (B, S) of the rows (B, S) (>= 0) of ``memory`` (B, N, W)."""
    index = rows.unsqueeze(-1).expand(-1, -1, memory.shape[-1])
    return memory.detach().gather(1, index).norm(dim=-1)


class ExactKNN(KNNIndex):
    """Exact search on the memory tensor itself. Its only cache is the rows' norms (B, N),
    updated with the rows that change, so a search makes one pass over the memory."""

    def __init__(self) -> None:
        self.norms: Tensor | None = None

    def rebuild(self, memory: Tensor, written: Tensor) -> None:
        """Norms of the written rows (only they are ever returned); zero elsewhere."""
        with torch.no_grad():
            self.norms = torch.zeros(written.shape, dtype=memory.dtype, device=memory.device)
            self.norms[written] = memory.detach()[written].norm(dim=-1)

    def update(self, memory: Tensor, rows: Tensor, valid: Tensor) -> None:
        if self.norms is None:  # never rebuilt: searches compute the norms themselves
            return None
        with torch.no_grad():
            B, N = self.norms.shape
            flat = (rows.clamp_min(0) + torch.arange(B, device=rows.device)[:, None] * N)[valid]
            self.norms.view(-1)[flat] = row_norms(memory, rows.clamp_min(0))[valid]
        return None

    def search(self, memory: Tensor, written: Tensor, queries: Tensor, k: int) -> Tensor:
        return exact_search(memory, written, queries, k, norms=self.norms)


def resolve_backend(index: str, slots: int, device: torch.device) -> str:
    """The backend for ``index`` ("auto", "exact" or "faiss") at ``slots`` rows on ``device``.

    "auto" is exact on GPUs (a matmul and top-k are fast there) and for fewer than
    ``FAISS_AUTO_ROWS`` rows; FAISS otherwise. Asking for FAISS without it installed falls
    back to exact search with a one-time warning.
    """
    global _warned_missing_faiss
    check_choice("RAM", "index", index, BACKENDS)
    if index == "exact":
        return "exact"
    if index == "auto" and (device.type == "cuda" or slots < FAISS_AUTO_ROWS):
        return "exact"
    if load_faiss() is None:
        if index == "faiss" and not _warned_missing_faiss:
            warnings.warn(
                "RAM: index='faiss' but FAISS is not installed (pip install tiered[faiss]); "
                "using exact search",
                stacklevel=3,
            )
            _warned_missing_faiss = True
        return "exact"
    return "faiss"


def make_index(
    backend: str,
    batch_size: int,
    slots: int,
    width: int,
    nprobe: int = DEFAULT_NPROBE,
    exhaustive_rows: int = EXHAUSTIVE_ROWS,
    search_threads: int = 1,
) -> KNNIndex:
    """An empty index of the resolved ``backend`` ("exact" or "faiss"); a FAISS index
    searches exactly while it holds at most ``exhaustive_rows`` rows, and searches
    ``search_threads`` batch elements at once."""
    check_positive_int("RAM", "nprobe", nprobe)
    if backend == "faiss":
        from tiered.knn_faiss import FaissKNN

        faiss = load_faiss()
        assert faiss is not None
        return FaissKNN(faiss, batch_size, slots, width, nprobe, exhaustive_rows=exhaustive_rows,
                        search_threads=search_threads)  # fmt: skip
    return ExactKNN()


def set_faiss_threads(threads: int = 1) -> int:
    """Set FAISS's OpenMP threads (process-wide).

    Measured on the 2-core CPU machine: with as many OpenMP threads as cores, a FAISS
    search slowed from ~3 ms to 160-400 ms per step whenever another process used a core
    (OpenMP threads spin-wait); with 1 thread it stayed at ~3-4 ms. Our searches are small
    (R queries per batch element), so 1 thread is the default.
    """
    faiss = load_faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    return threads
