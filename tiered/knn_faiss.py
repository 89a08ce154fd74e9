"""``FaissKNN``: the FAISS IVF-Flat backend of ``tiered.knn``'s kNN interface.

One index per batch element with a hash-table direct map, updated incrementally (remove and
re-add only the rows that changed), searched exactly in torch among the rows it holds while
they are few (``EXHAUSTIVE_ROWS``), its coarse quantiser trained on the memory's own rows
beyond that (``train_on``). Named dimensions as in ``tiered.knn``.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tiered.knn import EXHAUSTIVE_ROWS, KNNIndex, exact_search, load_faiss, normalize_rows
from tiered.validation import check_choice

# What an IVF index's coarse quantiser is trained on (``FaissKNN``'s ``train_on``).
TRAIN_ON = ("memory", "random")
# A quantiser trained on the memory sees at most this many rows per list (FAISS's advice
# for k-means is 39 to 256 points per centroid).
TRAIN_ROWS_PER_LIST = 64
# k-means iterations of such a training (FAISS's default is 25; the lists barely move after
# 10 on the rows measured, and the training is repeated at every doubling).
TRAIN_ITERATIONS = 10


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
        search_threads: how many batch elements' indexes are searched at once, by that many
            Python threads (FAISS releases the GIL while it searches; each search keeps the
            OpenMP threads of ``tiered.knn.set_faiss_threads``, 1 by default, so no thread
            spin-waits). 1 searches them one after another.
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
        search_threads: int = 1,
    ) -> None:
        self.faiss = faiss
        self.search_threads = search_threads
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
        self.capacity = min(exhaustive_rows, slots)  # an index never holds more than N rows
        self.held = np.full((batch_size, max(self.capacity, 1)), -1, dtype=np.int64)
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
                index.add_with_ids(_unit_rows(memory[b], ids), ids)

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

            def one(b: int) -> np.ndarray:
                # every list while the rows are few but were not all listed (capacity below
                # an exhaustive_rows raised after construction): exact as well
                exact = self.count[b] <= self.exhaustive_rows
                self.indexes[b].nprobe = self.nlist if exact else self.nprobe
                return self.indexes[b].search(np.ascontiguousarray(q[b]), k)[1]

            todo = [int(b) for b in np.flatnonzero(~few)]
            if self.search_threads > 1 and len(todo) > 1:
                found = list(_pool(self.search_threads, os.getpid()).map(one, todo))
            else:
                found = [one(b) for b in todo]
            for b, labels in zip(todo, found, strict=True):
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


@functools.lru_cache(maxsize=4)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` search threads, made once per count in each process (``pid``:
    a forked child has none of its parent's threads, so it makes its own pool)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiered-faiss")


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
