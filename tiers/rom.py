"""ROM: read-only memory, a frozen key/value store in zarr read by kNN.

Each step each read head sends a query q (key width) and a strength beta; the index
returns the K most similar keys (cosine), and the head reads

    w = softmax_k(beta * cos(q, key_k)),   r = sum_k w_k value_k   (then an optional projection)

Keys live in memory (the index needs them); values are read from zarr through an LRU cache
of ``cache_rows`` rows, or held in memory with ``values_in_memory``; each step's stats count
the value rows read and how many the cache served (``value_reads``, ``cache_hits``).
Gradients reach the query, the strength and the projection, never the store: no code path
writes a ROM store, which is opened read-only. Checkpoints record the store's URL, row count
and widths, not its contents; loading a checkpoint whose store is missing, shorter or of
another width fails with a message saying which.

Named dimensions: B batch, R read heads, K neighbours, Dk key width, Dv value width.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from tiered.knn import load_faiss, normalize_rows
from tiered.storage import KVStore, StoreError, open_store
from tiered.tier import Spill, Tier, TierOutput, Traffic, head_slices, tier_stats
from tiered.tiers.addressing import attend_rows, oneplus
from tiered.validation import check_bool, check_choice, check_positive_int, check_store_url

# index="auto" uses FAISS from this many rows on (when FAISS is installed).
ROM_FAISS_ROWS = 1 << 15


class ROMState(NamedTuple):
    """The ROM keeps nothing per sequence but its clock (B,)."""

    clock: Tensor


class ValueCache:
    """LRU cache of value rows read from the store, with running hit and miss counts.

    A row asked for is a hit when the cache held it before the call (an earlier step read
    it), a miss otherwise: a row asked for twice in one call and not held counts twice.
    """

    def __init__(self, store: KVStore, capacity: int) -> None:
        self.store, self.capacity = store, capacity
        self.rows: OrderedDict[int, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Values (n, Dv) of ``rows`` (n,), fetching the missing ones in one zarr read."""
        return self.lookup(rows)[0]

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values (n, Dv) of ``rows`` (any shape, n entries) and which were hits (n,) bool,
        fetching the missing ones in one zarr read."""
        flat = rows.reshape(-1).tolist()
        hit = np.fromiter((r in self.rows for r in flat), dtype=bool, count=len(flat))
        missing = sorted({r for r, h in zip(flat, hit, strict=True) if not h})
        self.hits += int(hit.sum())
        self.misses += len(flat) - int(hit.sum())
        if missing:
            fetched = self.store.take_values(np.asarray(missing))
            self.rows.update(zip(missing, fetched, strict=True))
        out = (
            np.stack([self.rows[r] for r in flat])
            if flat
            else np.zeros((0, self.store.value_width), np.float32)
        )
        for row in set(flat):
            self.rows.move_to_end(row)
        while len(self.rows) > self.capacity:
            self.rows.popitem(last=False)
        return out, hit

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ROM(Tier):
    """Read-only memory over a key/value store built with ``tiered rom build``.

    Args:
        store: the store's path or fsspec URL.
        k: keys each read head retrieves.
        read_heads: read heads R.
        index: "exact" (matmul + top-k), "faiss" (the store's saved IVF index, or one built
            on open) or "auto" (FAISS from 32768 rows when installed).
        nprobe: inverted lists FAISS visits per query.
        values_in_memory: load every value into memory instead of reading through the cache.
        cache_rows: capacity of the LRU cache of values read from the store.
        read_width: if set, a trainable linear projection of each head's read to this width.
        rewrite_penalty: accepted for the tier contract; a ROM never writes, so its rewrite
            is always 0.
        period: accepted for the tier contract; a ROM never writes.
        name: the tier's name in logs; defaults to ``"rom"``.
    """

    fills_caches = True

    def __init__(
        self,
        store: str,
        k: int = 8,
        read_heads: int = 1,
        index: str = "auto",
        nprobe: int = 16,
        values_in_memory: bool = False,
        cache_rows: int = 65536,
        read_width: int | None = None,
        rewrite_penalty: float = 0.0,
        period: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(rewrite_penalty=rewrite_penalty, period=period, name=name)
        self.k = check_positive_int("ROM", "k", k)
        self.read_heads = check_positive_int("ROM", "read_heads", read_heads)
        self.index_kind = check_choice("ROM", "index", index, ("auto", "exact", "faiss"))
        self.nprobe = check_positive_int("ROM", "nprobe", nprobe)
        self.cache_rows = check_positive_int("ROM", "cache_rows", cache_rows)
        self.store_url = check_store_url("ROM", "store", store)
        self.kv = open_store("ROM", self.store_url)
        if self.kv.rows < 1:
            raise StoreError(f"ROM: store {self.store_url!r} has no committed rows")
        self.rows, self.key_width, self.value_width = (
            self.kv.rows,
            self.kv.key_width,
            self.kv.value_width,
        )
        keys = torch.from_numpy(normalize_rows(torch.from_numpy(self.kv.read_keys())).numpy())
        self.register_buffer("unit_keys", keys, persistent=False)  # (N, Dk), not in checkpoints
        self.values_in_memory = check_bool("ROM", "values_in_memory", values_in_memory)
        values = (
            torch.from_numpy(self.kv.read_values()) if self.values_in_memory else torch.zeros(0)
        )
        self.register_buffer("all_values", values, persistent=False)
        self.cache = ValueCache(self.kv, self.cache_rows)
        self.has_value_cache = not self.values_in_memory
        self.faiss_index = self._make_index()
        self.projection = (
            nn.Linear(self.value_width, check_positive_int("ROM", "read_width", read_width))
            if read_width is not None
            else None
        )

    def _make_index(self) -> Any | None:
        faiss = load_faiss()
        wants = self.index_kind == "faiss" or (
            self.index_kind == "auto" and self.rows >= ROM_FAISS_ROWS
        )
        if not wants or faiss is None:
            return None
        saved = self.kv.load_index()
        if saved is not None and saved[1] == self.rows:
            index = faiss.deserialize_index(saved[0])
        else:
            index = build_faiss_index(faiss, self.unit_keys.numpy())
        index.nprobe = self.nprobe
        return index

    @property
    def interface_size(self) -> int:
        return self.read_heads * (self.key_width + 1)

    @property
    def query_slices(self) -> list[slice]:
        """Each head's query: the first R x Dk interface features."""
        return head_slices(self.read_heads, self.key_width)

    @property
    def read_size(self) -> int:
        width = self.projection.out_features if self.projection is not None else self.value_width
        return self.read_heads * width

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ROMState:
        B = check_positive_int("ROM", "batch_size", batch_size)
        return ROMState(clock=torch.zeros(B, device=device, dtype=torch.long))

    def search(self, queries: Tensor) -> Tensor:
        """Row indices (B, R, K) of the most similar keys to ``queries`` (B, R, Dk); -1
        where the index found fewer than K."""
        K = min(self.k, self.rows)
        with torch.no_grad():
            flat = normalize_rows(queries.detach()).reshape(-1, self.key_width)
            if self.faiss_index is None:
                scores = flat.to(self.unit_keys.dtype) @ self.unit_keys.T  # (B R, N)
                index = torch.topk(scores, K, dim=-1).indices
            else:
                _, labels = self.faiss_index.search(
                    np.ascontiguousarray(flat.float().cpu().numpy()), K
                )
                index = torch.from_numpy(labels).to(queries.device)  # -1: fewer than K
        return index.reshape(*queries.shape[:2], K)

    def fetch_values(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Values (B, R, K, Dv) of ``rows`` (B, R, K), from memory or through the cache, and
        which rows (B, R, K) were served without a store read (all of them from memory)."""
        if self.values_in_memory:
            return self.all_values[rows], torch.ones_like(rows, dtype=torch.bool)
        values, hit = self.cache.lookup(rows.cpu().numpy())
        values = torch.from_numpy(values).reshape(*rows.shape, self.value_width)
        return values.to(rows.device), torch.from_numpy(hit).reshape(rows.shape).to(rows.device)

    def forward(
        self,
        interface: Tensor,
        state: ROMState,
        incoming: tuple[Spill, ...] = (),
        with_traffic: bool = False,
    ) -> TierOutput | tuple[TierOutput, Traffic]:
        """Read: R heads, K keys each; nothing is written (``step``; with ``with_traffic``
        it returns the ``Traffic`` too)."""
        out = self.step(interface, state, incoming)
        return out if with_traffic else out[0]

    def step(
        self, interface: Tensor, state: ROMState, incoming: tuple[Spill, ...] = ()
    ) -> tuple[TierOutput, Traffic]:
        """The read, and the ``Traffic`` with each head's largest read weight (a Cache with
        ``fill_from`` naming this ROM fills from it); a ROM takes no spills."""
        if incoming:
            raise ValueError(f"ROM '{self.name}' is read-only: it cannot take spills")
        self.check_interface(interface, state.clock)
        B, R, Dk = interface.shape[0], self.read_heads, self.key_width
        queries, strengths = torch.split(interface, [R * Dk, R], dim=-1)
        queries = queries.reshape(B, R, Dk)
        found = self.search(queries)  # (B, R, K), -1 where nothing was found
        rows = found.clamp_min(0)
        keys = self.unit_keys[rows].to(interface.dtype)  # (B, R, K, Dk), constants
        values, hit = self.fetch_values(rows)  # (B, R, K, Dv) constants, (B, R, K)
        read, weights = attend_rows(
            queries, oneplus(strengths), keys, values.to(interface.dtype), found < 0
        )
        if self.projection is not None:
            read = self.projection(read)
        zero = interface.new_zeros(B)
        stats = tier_stats(
            zero,
            write_mass=zero,
            read_weights=weights,
            slots_used=interface.new_full((B,), float(self.rows)),
            value_reads=(found >= 0).sum(dim=(1, 2)),
            cache_hits=(hit & (found >= 0)).sum(dim=(1, 2)),
        )
        out = TierOutput(read.reshape(B, -1), ROMState(state.clock + 1), stats)
        return out, Traffic(peak=weights.max(dim=-1).values)

    # ---- checkpoints record the store, not its contents
    def get_extra_state(self) -> dict[str, Any]:
        return {"store": self.store_url, "rows": self.rows, "key_width": self.key_width,
                "value_width": self.value_width}  # fmt: skip

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Check that the store this ROM reads matches the one the checkpoint was trained
        on: at least as many rows and the same widths (the URL may differ: stores move)."""
        if self.rows < state["rows"]:
            raise StoreError(
                f"ROM '{self.name}': the checkpoint was trained on {state['rows']} rows of "
                f"{state['store']!r}, but the store {self.store_url!r} has only {self.rows}"
            )
        if (self.key_width, self.value_width) != (state["key_width"], state["value_width"]):
            raise StoreError(
                f"ROM '{self.name}': the checkpoint expects key/value widths "
                f"({state['key_width']}, {state['value_width']}) (store {state['store']!r}); "
                f"the store {self.store_url!r} has ({self.key_width}, {self.value_width})"
            )

    def extra_repr(self) -> str:
        return (
            f"store={self.store_url!r}, rows={self.rows}, k={self.k}, "
            f"read_heads={self.read_heads}, "
            f"index={'faiss' if self.faiss_index is not None else 'exact'}, " + super().extra_repr()
        )


def build_faiss_index(faiss: Any, unit_keys: np.ndarray, seed: int = 0) -> Any:
    """IVF-Flat (inner product) over unit-norm keys (N, Dk); ids are row numbers."""
    n, width = unit_keys.shape
    nlist = max(1, min(n // 39, int(4 * np.sqrt(n))))
    quantizer = faiss.IndexFlatIP(width)
    index = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = unit_keys[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add_with_ids(
        np.ascontiguousarray(unit_keys, dtype=np.float32), np.arange(n, dtype=np.int64)
    )
    return index
