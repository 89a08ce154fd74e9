"""k-nearest-neighbour search over memory rows, behind one small interface.

Similarity is cosine: rows and queries are compared after L2 normalisation. An index is a
*cache*: it holds nothing that cannot be rebuilt from the memory tensor (``rebuild``), so
it can be dropped after loading a checkpoint or moving to another device.

Backends:
    ExactKNN   matmul + ``torch.topk`` over all rows, block by block (bounded temporaries),
               with the rows' norms kept up to date; the default for small N and on GPUs.
    FaissKNN   FAISS IVF-Flat per batch element with a hash-table direct map, updated
               incrementally (remove and re-add only the rows that changed). While it
               holds at most EXHAUSTIVE_ROWS rows it is searched exactly in torch among the
               rows it holds (the written rows). Beyond that its coarse quantiser is
               trained on the memory's own rows, and trained again each time the rows it
               holds have doubled (``train_on="memory"``, the default; "random" keeps the
               quantiser trained once on random unit vectors). Its IVF lists live on the
               CPU; FAISS's GPU indexes are not used (docs/ram.md).

Named dimensions: B batch, N rows, W width, h queries per batch element, k neighbours.
Rows never written (``written`` False) are never returned; when fewer than k rows are
eligible, missing neighbours have index -1.
"""

from __future__ import annotations

import abc
import functools
import importlib
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tiered.validation import check_choice, check_positive_int

BACKENDS = ("auto", "exact", "faiss")
# What an IVF index's coarse quantiser is trained on (``FaissKNN``'s ``train_on``).
TRAIN_ON = ("memory", "random")
# A quantiser trained on the memory sees at most this many rows per list (FAISS's advice
# for k-means is 39 to 256 points per centroid).
TRAIN_ROWS_PER_LIST = 64
# k-means iterations of such a training (FAISS's default is 25; the lists barely move after
# 10 on the rows measured, and the training is repeated at every doubling).
TRAIN_ITERATIONS = 10
# index="auto" picks FAISS on CPU from this many rows on (when FAISS is installed).
FAISS_AUTO_ROWS = 1 << 15
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


class FaissKNN(KNNIndex):
    """FAISS IVF-Flat (inner product on normalised rows), one index per batch element.

    Args:
        faiss: the imported faiss module.
        batch_size: B.
        slots: N, the number of rows (sets the number of inverted lists, ~sqrt(N)).
        width: W.
        nprobe: inverted lists visited per query; more is slower and more exact.
        seed: seed of the random vectors the first coarse quantiser is trained on, and of
            the sample of rows later ones are trained on.
        exhaustive_rows: while an index holds at most this many rows, it is searched
            exactly among the rows it holds (the rows written): in torch, over those rows
            gathered from the memory, O(rows W) per query. With the lists mostly empty,
            ``nprobe`` lists would hold few of the rows: with 30 rows written in 2^16 slots
            (width 16), 8 of 256 lists returned 12% of k = 8 neighbours, and the best row
            38% of the time (see docs/ram.md). Visiting every list instead costs O(nlist)
            per query whatever the rows: 3.1 ms for 8 indexes of 128 rows at 2^20 slots
            (1024 lists), 0.17 ms at 2^10 (32 lists).
        train_on: "memory": once an index holds more than ``exhaustive_rows`` rows (and at
            least one per list), its coarse quantiser is trained on (a sample of up to
            ``TRAIN_ROWS_PER_LIST`` per list of) the rows it holds, and trained again, with
            every row re-added, each time the rows held double: O(rows W) at each doubling,
            amortised over the writes between. A quantiser trained on random unit vectors
            partitions the sphere evenly, not where the memory's rows lie, and sends a
            query's neighbours to lists it does not visit (docs/ram.md). "random": never
            retrained.
    """

    def __init__(
        self,
        faiss: Any,
        batch_size: int,
        slots: int,
        width: int,
        nprobe: int,
        seed: int = 0,
        exhaustive_rows: int = EXHAUSTIVE_ROWS,
        train_on: str = "memory",
    ) -> None:
        self.faiss = faiss
        self.width = width
        self.nprobe = nprobe
        self.seed = seed
        self.exhaustive_rows = exhaustive_rows
        self.train_on = check_choice("RAM", "train_on", train_on, TRAIN_ON)
        self.nlist = max(1, min(slots // 8, int(math.sqrt(slots))))
        trained = faiss.deserialize_index(_trained_ivf(width, self.nlist, seed))
        self.indexes = []
        for _ in range(batch_size):
            index = faiss.clone_index(trained)
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            index.nprobe = nprobe
            self.indexes.append(index)
        # The rows each index holds, listed while there are at most ``capacity`` of them:
        # held (B, capacity) row ids (-1 pad), count (B,) rows held, member (B, N) (lazily
        # zero-filled) which rows are held.
        self.capacity = exhaustive_rows
        self.held = np.full((batch_size, max(exhaustive_rows, 1)), -1, dtype=np.int64)
        self.count = np.zeros(batch_size, dtype=np.int64)
        self.member = np.zeros((batch_size, slots), dtype=bool)
        # rows held when each index's quantiser was last trained on the memory (0: never)
        self.trained_at = np.zeros(batch_size, dtype=np.int64)

    def _hold(self, b: int, ids: np.ndarray) -> None:
        """Record that index ``b`` now holds the rows ``ids`` (some may be held already)."""
        new = np.unique(ids[~self.member[b, ids]])
        self.member[b, new] = True
        start = self.count[b]
        if start + len(new) <= self.capacity:
            self.held[b, start : start + len(new)] = new
        self.count[b] = start + len(new)

    def _due(self, b: int) -> bool:
        """Whether index ``b``'s quantiser is to be trained on the memory now."""
        rows = int(self.count[b])
        return (
            self.train_on == "memory"
            and rows > self.exhaustive_rows
            and rows >= self.nlist
            and rows >= 2 * self.trained_at[b]
        )

    def _train_on_memory(self, b: int, memory: Tensor) -> None:
        """Train index ``b``'s coarse quantiser on (a sample of) the rows it holds, then
        re-add every one of them: O(rows W), once per doubling of the rows held."""
        faiss = self.faiss
        rows = np.flatnonzero(self.member[b]).astype(np.int64)
        vectors = _unit_rows(memory[b], rows)
        most = TRAIN_ROWS_PER_LIST * self.nlist
        rng = np.random.default_rng(self.seed + b)
        sample = vectors if len(rows) <= most else vectors[rng.choice(len(rows), most, False)]
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.width), self.width, self.nlist, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.min_points_per_centroid = 1  # silence FAISS's small-training warning
        index.cp.seed = self.seed + b
        index.cp.niter = TRAIN_ITERATIONS
        index.train(np.ascontiguousarray(sample))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = self.nprobe
        index.add_with_ids(vectors, rows)
        self.indexes[b] = index
        self.trained_at[b] = len(rows)

    def rebuild(self, memory: Tensor, written: Tensor) -> None:
        self.held.fill(-1)
        self.count.fill(0)
        self.trained_at.fill(0)
        self.member = np.zeros_like(self.member)  # fresh zero pages, not B N bytes written
        for b, index in enumerate(self.indexes):
            index.reset()
            rows = torch.nonzero(written[b]).flatten()
            if not len(rows):
                continue
            ids = rows.cpu().numpy().astype(np.int64)
            self._hold(b, ids)
            if self._due(b):  # train on these rows, then add them once
                self._train_on_memory(b, memory)
            else:
                vectors = normalize_rows(memory[b, rows].detach()).float().cpu().numpy()
                index.add_with_ids(np.ascontiguousarray(vectors), ids)

    def update(self, memory: Tensor, rows: Tensor, valid: Tensor) -> None:
        rows_cpu = rows.cpu().numpy()
        valid_cpu = valid.cpu().numpy()
        gathered = memory.detach().gather(
            1, rows.clamp_min(0).unsqueeze(-1).expand(-1, -1, memory.shape[-1])
        )
        vectors = normalize_rows(gathered).float().cpu().numpy()
        for b, index in enumerate(self.indexes):
            # each row once (the RAM passes distinct rows; FAISS would add a repeat twice)
            ids, first = np.unique(rows_cpu[b][valid_cpu[b]].astype(np.int64), return_index=True)
            if not len(ids):
                continue
            index.remove_ids(self.faiss.IDSelectorArray(len(ids), self.faiss.swig_ptr(ids)))
            index.add_with_ids(np.ascontiguousarray(vectors[b][valid_cpu[b]][first]), ids)
            self._hold(b, ids)
            if self._due(b):
                self._train_on_memory(b, memory)

    def search(self, memory: Tensor, written: Tensor, queries: Tensor, k: int) -> Tensor:
        few = self.count <= min(self.exhaustive_rows, self.capacity)  # (B,) searched exactly
        out = torch.empty((*queries.shape[:2], k), dtype=torch.long, device=memory.device)
        if few.any():
            out.copy_(self._search_held(memory, queries, k, int(self.count[few].max())))
        if not few.all():
            q = normalize_rows(queries.detach()).float().cpu().numpy()
            for b in np.flatnonzero(~few):
                # every list while the rows are few but were not all listed (capacity below
                # an exhaustive_rows raised after construction): exact as well
                exact = self.count[b] <= self.exhaustive_rows
                self.indexes[b].nprobe = self.nlist if exact else self.nprobe
                _, labels = self.indexes[b].search(np.ascontiguousarray(q[b]), k)
                out[b] = torch.from_numpy(labels).to(out.device)
        return out.to(queries.device)

    def _search_held(self, memory: Tensor, queries: Tensor, k: int, rows: int) -> Tensor:
        """Exact search among the first ``rows`` held rows of every batch element."""
        B, N, W = memory.shape
        held = torch.from_numpy(self.held[:, : max(rows, 1)]).to(memory.device)  # (B, H)
        flat = (held.clamp_min(0) + torch.arange(B, device=held.device)[:, None] * N).flatten()
        gathered = memory.detach().reshape(B * N, W).index_select(0, flat).view(B, -1, W)
        local = exact_search(gathered, held >= 0, queries, k)
        found = held.gather(1, local.clamp_min(0).flatten(1)).view_as(local)  # (B, h, k)
        return torch.where(local >= 0, found, -1)


def _unit_rows(memory: Tensor, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` of one memory (N, W), L2-normalised, as contiguous float32 numpy."""
    picked = memory.detach().index_select(0, torch.from_numpy(rows).to(memory.device))
    return np.ascontiguousarray(normalize_rows(picked).float().cpu().numpy())


@functools.lru_cache(maxsize=8)
def _trained_ivf(width: int, nlist: int, seed: int) -> np.ndarray:
    """An empty IVF-Flat index trained on random unit vectors, serialised; made once per
    (width, nlist) in a process and copied for every batch element and every sequence."""
    faiss = load_faiss()
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((max(39 * nlist, 256), width)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(width)
    index = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # silence FAISS's small-training warning
    index.train(train)
    return faiss.serialize_index(index)


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


def make_index(backend: str, batch_size: int, slots: int, width: int, nprobe: int = 8) -> KNNIndex:
    """An empty index of the resolved ``backend`` ("exact" or "faiss")."""
    check_positive_int("RAM", "nprobe", nprobe)
    if backend == "faiss":
        faiss = load_faiss()
        assert faiss is not None
        return FaissKNN(faiss, batch_size, slots, width, nprobe)
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
