"""Disk: long-term memory appended at a slow clock, kept across episodes and runs.

On each of its ticks the Disk appends one row (key, value) per batch element to a zarr
key/value store (``tiered.storage``); every step each read head reads it by kNN, like the
ROM: w = softmax_k(beta * cos(q, key_k)), r = sum_k w_k value_k. The store persists: a new
run pointed at the same store sees what earlier runs wrote.

Shared memory, explicit rules:
    - The store is shared across the batch and across sequences: it is the point of a disk.
      Per-sequence state is only the clock.
    - Appended rows are constants (the keys and values are detached): gradients reach the
      queries and strengths of reads, not what was written. Nothing is ever overwritten, so
      ``rewrite`` is 0; ``write_mass`` counts rows appended (1 per batch element that
      appended).
    - Stages: the Disk appends only in the stages named by ``append_stages``, by default
      only while training, so validation, test, predict and Lightning's sanity check read
      the Disk without leaving their sequences in it for later runs.
    - Ranks: the store is a folder of shards ``rank-<r>``. Each process appends only to its
      own shard (its torch.distributed rank, or ``rank``), and reads every shard as it was
      when the Disk first ran, plus its own appends. Shards are crash-safe stores, so a
      killed process never leaves a partial row.
    - One writer per shard: the first append takes the shard's writer lock
      (``tiered.storage.WriterLock``, a file lock beside it) and holds it until ``close()``
      or the end of the process; a second writer fails at once, naming the holder.
    - Search is exact (matmul + top-k over all rows held in memory); keys are held in
      memory, values are read through an LRU cache per shard, whose hits each step's stats
      count (``value_reads``, ``cache_hits``).

Named dimensions: B batch, R read heads, K neighbours, Dk key width, Dv value width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from tiered.knn import normalize_rows
from tiered.storage import (
    IncompleteStoreError,
    KVStore,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
    WriterLock,
)
from tiered.tier import (
    STAGES,
    Spill,
    Tier,
    TierOutput,
    Traffic,
    head_slices,
    join_spills,
    tier_stats,
    write_ticks,
)
from tiered.tiers.addressing import attend_rows, oneplus
from tiered.tiers.rom import ValueCache
from tiered.validation import (
    check_bool,
    check_positive_int,
    check_store_url,
    check_unit_interval,
)


class DiskState(NamedTuple):
    """Per-sequence state of the Disk.

    Attributes:
        clock: (B,) steps taken.
        keys: (P, Dk) with ``learn_writes``, the rows appended in this training window,
            not yet in the store (differentiable); None when there are none.
        values: (P, Dv) their values; None when there are none.
        pending: spills (rows (B, S, Dk), gates (B, S)) received since the last tick, which
            the next tick appends; None when there are none.
    """

    clock: Tensor
    keys: Tensor | None = None
    values: Tensor | None = None
    pending: Spill | None = None


def shard_url(store: str, rank: int) -> str:
    """The URL of ``rank``'s shard inside the store folder."""
    return f"{store.rstrip('/')}/rank-{rank}"


class Disk(Tier):
    """Persistent, append-only memory read by kNN.

    Args:
        store: folder path or fsspec URL of the store (created when missing).
        key_width: Dk.
        value_width: Dv.
        k: rows each read head retrieves.
        read_heads: read heads R.
        cache_rows: capacity of each shard's LRU cache of values.
        rank: the shard this process appends to; None uses the torch.distributed rank
            (0 without DDP).
        append_stages: the stages in which the Disk appends, among "train", "validate",
            "test", "predict" and "sanity_check" (Lightning's running stages; outside
            Lightning, "train" in train mode and "validate" in eval mode). Reads are
            served in every stage.
        rewrite_penalty: accepted for the tier contract; appends never overwrite, so the
            rewrite is always 0.
        period: the Disk appends on every ``period``-th step (a slow clock); reads are
            served every step.
        name: the tier's name in logs; defaults to ``"disk"``.
        learn_writes: keep the rows appended while gradients are on in a differentiable
            write buffer in the state, which reads see like stored rows, until the training
            window ends (``flush``; the training module flushes at the end of each window),
            so the interface that forms keys and values gets gradients. Rows of earlier
            windows and runs, in the store, stay constants. Off: rows go to the store at
            once, detached.
        spill_threshold: in [0, 1]: a row spilled into this Disk by a tier whose
            ``spill_to`` names it is appended at the Disk's next tick (as both key and
            value) when its gate reaches this; rows below it are dropped.
        clock_rule: with ``period > 1``: "last", "mean" or "gate" (``tiered.tier.Tier``):
            what key and value a tick appends.
    """

    accepts_spills = True
    fills_caches = True

    def __init__(
        self,
        store: str,
        key_width: int,
        value_width: int,
        k: int = 8,
        read_heads: int = 1,
        cache_rows: int = 65536,
        rank: int | None = None,
        append_stages: list[str] | tuple[str, ...] = ("train",),
        rewrite_penalty: float = 0.0,
        period: int = 16,
        name: str | None = None,
        learn_writes: bool = False,
        spill_threshold: float = 0.5,
        clock_rule: str = "last",
    ) -> None:
        super().__init__(
            rewrite_penalty=rewrite_penalty, period=period, name=name, clock_rule=clock_rule
        )
        self.learn_writes = check_bool("Disk", "learn_writes", learn_writes)
        self.spill_threshold = check_unit_interval("Disk", "spill_threshold", spill_threshold)
        self.store_url = check_store_url("Disk", "store", store)
        if "://" not in self.store_url and Path(self.store_url).is_file():
            raise ValueError(
                f"Disk: store must be a folder (it holds one shard per rank), got a file: "
                f"{self.store_url!r}"
            )
        self.key_width = check_positive_int("Disk", "key_width", key_width)
        self.value_width = check_positive_int("Disk", "value_width", value_width)
        self.k = check_positive_int("Disk", "k", k)
        self.read_heads = check_positive_int("Disk", "read_heads", read_heads)
        self.cache_rows = check_positive_int("Disk", "cache_rows", cache_rows)
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ValueError(f"Disk: rank must be a non-negative integer or None, got {rank!r}")
        self.fixed_rank = rank
        if not isinstance(append_stages, (list, tuple)) or not all(
            isinstance(stage, str) and stage in STAGES for stage in append_stages
        ):
            raise ValueError(
                f"Disk: append_stages must be a list of stages among {list(STAGES)}, got "
                f"{append_stages!r}"
            )
        self.append_stages = tuple(append_stages)
        self._opened = False  # shards open lazily: the DDP rank is known only at run time
        self.has_value_cache = True
        self._lock: WriterLock | None = None  # taken by the first append

    # ------------------------------------------------------------------ shards
    def _open(self) -> None:
        """Open every shard (creating this rank's), and load all keys into memory."""
        if self._opened:
            return
        if self.fixed_rank is not None:
            self.rank = self.fixed_rank
        else:
            self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        own = shard_url(self.store_url, self.rank)
        try:
            self.own = KVStore.open(own, mode="a")
        except IncompleteStoreError:  # an interrupted creation of our own shard: no rows
            self._take_lock(own)  # never remake a shard another writer is creating
            self.own = KVStore.create(own, self.key_width, self.value_width, overwrite=True)
        except StoreNotFoundError:
            self._take_lock(own)
            self.own = KVStore.create(own, self.key_width, self.value_width)
        if (self.own.key_width, self.own.value_width) != (self.key_width, self.value_width):
            raise StoreError(
                f"Disk '{self.name}': store {own!r} has key/value widths "
                f"({self.own.key_width}, {self.own.value_width}), the tier was given "
                f"({self.key_width}, {self.value_width})"
            )
        self.shards: list[KVStore] = []
        for url in self._shard_urls():
            try:
                shard = self.own if url == own else KVStore.open(url, mode="r")
            except (IncompleteStoreError, StoreNotFoundError):
                # another rank is creating it now (its folder may exist before its group
                # does): its rows show in the next run
                continue
            if (shard.key_width, shard.value_width) == (self.key_width, self.value_width):
                self.shards.append(shard)
        self.caches = [ValueCache(shard, self.cache_rows) for shard in self.shards]
        keys, owners, rows = [], [], []
        for index, shard in enumerate(self.shards):
            n = shard.rows
            if n:
                keys.append(normalize_rows(torch.from_numpy(shard.read_keys())))
                owners.append(torch.full((n,), index, dtype=torch.long))
                rows.append(torch.arange(n))
        self.keys = torch.cat(keys) if keys else torch.zeros(0, self.key_width)
        self.owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        self.local_row = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        self.own_index = self.shards.index(self.own)
        self._opened = True

    def _take_lock(self, url: str) -> None:
        """Take our shard's writer lock, or raise naming the shard and its writer."""
        if self._lock is not None and self._lock.held_here:
            return
        try:
            self._lock = WriterLock.acquire(url)
        except StoreLockedError as error:
            raise StoreLockedError(
                f"Disk '{self.name}': shard {url!r} (rank {self.rank}) already has a writer: "
                f"{error}. Give each process its own rank, or stop the other writer"
            ) from None
        if self._opened:  # the shard may have grown since we opened it: continue after it
            fresh = KVStore.open(url, mode="a")
            self.shards[self.own_index] = self.own = fresh
            self.caches[self.own_index] = ValueCache(fresh, self.cache_rows)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the writer lock behind: a copy takes its own to append."""
        state = dict(self.__dict__)
        state["_lock"] = None
        return state

    def close(self) -> None:
        """Give up the shard's writer lock (the next append takes it again)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _shard_urls(self) -> list[str]:
        if "://" in self.store_url:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.store_url)
            names = (
                [p.rstrip("/").split("/")[-1] for p in fs.ls(path, detail=False)]
                if fs.exists(path)
                else []
            )
        else:
            folder = Path(self.store_url)
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        names = sorted(n for n in names if n.startswith("rank-"))
        return [f"{self.store_url.rstrip('/')}/{n}" for n in names]

    @property
    def rows(self) -> int:
        """Rows this Disk can read now (all shards at open, plus its own appends)."""
        self._open()
        return int(self.keys.shape[0])

    # -------------------------------------------------------------- the contract
    @property
    def interface_size(self) -> int:
        return self.read_heads * (self.key_width + 1) + self.key_width + self.value_width

    @property
    def query_slices(self) -> list[slice]:
        """Each head's query: the first R x Dk interface features."""
        return head_slices(self.read_heads, self.key_width)

    @property
    def read_size(self) -> int:
        return self.read_heads * self.value_width

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> DiskState:
        B = check_positive_int("Disk", "batch_size", batch_size)
        return DiskState(clock=torch.zeros(B, device=device, dtype=torch.long))

    def append(self, keys: Tensor, values: Tensor) -> None:
        """Append rows (n, Dk) and (n, Dv) to this rank's shard and to the in-memory index."""
        self._open()
        self._take_lock(shard_url(self.store_url, self.rank))
        n = keys.shape[0]
        stop = self.own.append(
            keys.detach().float().cpu().numpy(), values.detach().float().cpu().numpy()
        )
        start = stop - n
        self.keys = torch.cat([self.keys, normalize_rows(keys.detach().float().cpu())])
        self.owner = torch.cat([self.owner, torch.full((n,), self.own_index, dtype=torch.long)])
        self.local_row = torch.cat([self.local_row, torch.arange(start, start + n)])

    @property
    def write_slices(self) -> list[slice]:
        """The key and value to append: after the read heads' queries and strengths."""
        start = self.read_heads * (self.key_width + 1)
        return [slice(start, self.interface_size)]

    def forward(
        self,
        interface: Tensor,
        state: DiskState,
        incoming: tuple[Spill, ...] = (),
        with_traffic: bool = False,
    ) -> TierOutput | tuple[TierOutput, Traffic]:
        """Append on ticks (one row per batch element) in the ``append_stages``, then read
        by kNN (``step``; with ``with_traffic`` it returns the ``Traffic`` too)."""
        out = self.step(interface, state, incoming)
        return out if with_traffic else out[0]

    def step(
        self, interface: Tensor, state: DiskState, incoming: tuple[Spill, ...] = ()
    ) -> tuple[TierOutput, Traffic]:
        """One step: keep ``incoming`` spills for the next tick; on ticks in the
        ``append_stages`` append one row per batch element and the pending spills whose gate
        reaches ``spill_threshold`` (to the write buffer with ``learn_writes`` while
        gradients are on, else to the store); then read by kNN over the store and the
        buffer. Returns the ``TierOutput`` and the ``Traffic`` (each head's largest read
        weight)."""
        self.check_interface(interface, state.clock)
        self._open()
        B, R, Dk, Dv = interface.shape[0], self.read_heads, self.key_width, self.value_width
        queries, strengths, write_keys, write_values = torch.split(
            interface, [R * Dk, R, Dk, Dv], dim=-1
        )
        tick = write_ticks(state.clock, self.period)  # (B,)
        appending = self.current_stage in self.append_stages
        if not appending:
            tick = torch.zeros_like(tick)
        pending = join_spills([*([state.pending] if state.pending is not None else []),
                               *(incoming if appending else ())])  # fmt: skip
        new_keys, new_values = [write_keys[tick]], [write_values[tick]]
        spilled = torch.zeros(B, device=interface.device, dtype=interface.dtype)
        if pending is not None:
            take = tick.unsqueeze(1) & (pending.gate.detach() >= self.spill_threshold)  # (B, S)
            new_keys.append(pending.content[take])
            new_values.append(pending.content[take])
            spilled = take.sum(dim=1).to(interface.dtype)
            left = pending.gate * (~tick).unsqueeze(1).to(pending.gate.dtype)
            pending = pending._replace(gate=left) if bool((left > 0).any()) else None
        keys, values = state.keys, state.values
        if bool(tick.any()):
            rows_k, rows_v = torch.cat(new_keys), torch.cat(new_values)
            if self.learn_writes and torch.is_grad_enabled():
                keys = rows_k if keys is None else torch.cat([keys, rows_k])
                values = rows_v if values is None else torch.cat([values, rows_v])
            else:
                self.append(rows_k, rows_v)
        queries = queries.reshape(B, R, Dk)
        buffered = 0 if keys is None else keys.shape[0]
        if self.rows + buffered == 0:
            words = interface.new_zeros(B, R * Dv)
            weights = interface.new_zeros(B, R, 1)  # nothing read
            hit = torch.zeros(B, R, 0, dtype=torch.bool)
        else:
            words, weights, hit = self._read(queries, oneplus(strengths), keys, values)
            words = words.reshape(B, -1)
        stats = tier_stats(
            interface.new_zeros(B),
            write_mass=tick.to(interface.dtype) + spilled,  # one per appended row
            read_weights=weights,
            slots_used=interface.new_full((B,), float(self.rows + buffered)),
            value_reads=interface.new_full((B,), float(hit.shape[1] * hit.shape[2])),
            cache_hits=hit.sum(dim=(1, 2)).to(interface.device),
        )
        next_state = DiskState(state.clock + 1, keys, values, pending)
        peak = weights.max(dim=-1).values  # (B, R)
        return TierOutput(words, next_state, stats), Traffic(peak=peak)

    def flush(self, state: DiskState) -> DiskState:
        """Append the write buffer's rows (detached) to the store and empty the buffer: the
        end of a training window. The training module calls it at the end of each window
        (a truncated-BPTT window, or a batch); call it yourself when training a
        ``learn_writes`` Disk outside Lightning."""
        if state.keys is not None and state.keys.shape[0] > 0:
            self.append(state.keys, state.values)  # type: ignore[arg-type]
        return state._replace(keys=None, values=None)

    def _read(
        self,
        queries: Tensor,
        strengths: Tensor,
        buffer_keys: Tensor | None = None,
        buffer_values: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reads over the K most similar rows of every shard and of the write buffer:
        words (B, R, Dv), weights (B, R, K), and which rows (B, R, K) were served without
        a store read (value cache hits, and buffer rows), on the CPU."""
        n = self.rows
        buffered = 0 if buffer_keys is None else buffer_keys.shape[0]
        K = min(self.k, n + buffered)
        with torch.no_grad():
            unit = normalize_rows(queries.detach()).float().cpu().reshape(-1, self.key_width)
            scores = unit @ self.keys.T  # (B R, n)
            if buffered:
                own = normalize_rows(buffer_keys.detach().float().cpu())  # type: ignore[union-attr]
                scores = torch.cat([scores, unit @ own.T], dim=-1)
            top = torch.topk(scores, K, dim=-1).indices  # (B R, K)
        shape = (*queries.shape[:2], K)  # (B, R, K)
        stored = top < n
        keys = (
            self.keys[top.clamp(max=max(n - 1, 0))]
            if n
            else torch.zeros(*top.shape, self.key_width)
        )
        keys = keys.to(queries).reshape(*shape, -1)  # constants
        values = torch.zeros(top.numel(), self.value_width)
        hit = torch.ones(top.numel(), dtype=torch.bool)
        flat_stored = stored.reshape(-1)
        if bool(flat_stored.any()):
            found, found_hit = self._values(top.reshape(-1)[flat_stored])
            values[flat_stored], hit[flat_stored] = found, found_hit
        values = values.to(queries).reshape(*shape, -1)
        if buffered:
            local = (top - n).clamp_min(0).to(queries.device)  # (B R, K)
            from_buffer = (~stored).to(queries.device).reshape(*shape, 1)
            keys = torch.where(from_buffer, buffer_keys[local].reshape(*shape, -1), keys)  # type: ignore[index]
            values = torch.where(from_buffer, buffer_values[local].reshape(*shape, -1), values)  # type: ignore[index]
        missing = torch.zeros(shape, dtype=torch.bool, device=values.device)
        words, weights = attend_rows(queries, strengths, keys, values, missing)
        return words, weights, hit.reshape(shape)

    def _values(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Values (..., Dv) of global rows (any shape), fetched per shard through the
        caches, and which rows (same shape as ``rows``) were cache hits."""
        flat = rows.reshape(-1)
        out = torch.empty(flat.shape[0], self.value_width)
        hit = torch.zeros(flat.shape[0], dtype=torch.bool)
        owners = self.owner[flat]
        for index in owners.unique().tolist():
            mask = owners == index
            local = self.local_row[flat[mask]].numpy()
            values, hits = self.caches[index].lookup(local)
            out[mask] = torch.from_numpy(values)
            hit[mask] = torch.from_numpy(hits)
        return out.reshape(*rows.shape, self.value_width), hit.reshape(rows.shape)

    # ---- checkpoints record the store and its rows, not its contents
    def get_extra_state(self) -> dict[str, Any]:
        self._open()
        return {"store": self.store_url, "rank": self.rank, "rows": self.own.rows,
                "key_width": self.key_width, "value_width": self.value_width}  # fmt: skip

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._open()
        if state["rank"] == self.rank and self.own.rows < state["rows"]:
            raise StoreError(
                f"Disk '{self.name}': the checkpoint saw {state['rows']} rows in shard "
                f"{shard_url(state['store'], state['rank'])!r}, but "
                f"{shard_url(self.store_url, self.rank)!r} has only {self.own.rows}"
            )

    def extra_repr(self) -> str:
        return (
            f"store={self.store_url!r}, key_width={self.key_width}, "
            f"value_width={self.value_width}, k={self.k}, "
            f"append_stages={list(self.append_stages)}, " + super().extra_repr()
        )
