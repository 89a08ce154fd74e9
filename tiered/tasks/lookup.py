"""Key-value lookup against a store: the answer to each query is a value in a ROM.

Each sequence has ``queries`` steps; at each step the input is a key of the store (plus
optional noise) and the target is that row's value, read as bits (value > 0). The rows are
drawn at random from the store's committed rows, so with a store of a million random rows no
network can memorise the answers: a stack with a ROM over the same store can look them up,
a stack without one cannot do better than chance.

The store is opened lazily inside each process that draws batches, so DataLoader workers
(forked or spawned) each open their own zarr handle and never share zarr's event loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiered.storage import KVStore, StoreError, open_store
from tiered.tasks.base import Example, SequenceTask
from tiered.validation import (
    check_non_negative_float,
    check_positive_int,
    check_store_url,
)


class KeyValueLookup(SequenceTask):
    """Look up values by key in a key/value store (``tiered rom build``).

    Args:
        store: path or URL of the store the queries come from.
        queries: queries per sequence.
        noise: standard deviation of Gaussian noise added to each query key.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(self, store: str, queries: int = 8, noise: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store_url = check_store_url("KeyValueLookup", "store", store)
        self.queries = check_positive_int("KeyValueLookup", "queries", queries)
        self.noise = check_non_negative_float("KeyValueLookup", "noise", noise)
        probe = open_store("KeyValueLookup", self.store_url)  # fails early if it is missing
        if probe.rows < 1:
            raise StoreError(f"KeyValueLookup: store {self.store_url!r} has no rows")
        self.rows, self.key_width, self.value_width = probe.rows, probe.key_width, probe.value_width
        self._store: KVStore | None = None
        self._pid: int | None = None

    def _open(self) -> KVStore:
        import os

        if self._store is None or self._pid != os.getpid():  # one handle per process
            self._store, self._pid = KVStore.open(self.store_url), os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, None  # zarr handles do not cross processes
        return state

    @property
    def input_size(self) -> int:
        return self.key_width

    @property
    def output_size(self) -> int:
        return self.value_width

    def example(self, rng: np.random.Generator, split: str) -> Example:
        store = self._open()
        rows = rng.integers(0, self.rows, size=self.queries)
        keys, values = store.take_keys(rows), store.take_values(rows)
        if self.noise:
            keys = keys + rng.normal(0.0, self.noise, size=keys.shape).astype(np.float32)
        targets = (values > 0).astype(np.float32)
        return Example(keys, targets, np.ones(self.queries, dtype=bool))
