"""Key-value recall over many items: one memory row per item (the large-memory task).

A sequence shows ``n`` items, one per step, each a random binary key with a random binary
value; then ``queries`` steps each show the key of one of the items (flagged as a query)
and ask for its value. Nothing but the pairs themselves links a query to its answer, so a
model must store every item somewhere it can find it again by key: with thousands of items
a register cannot, a memory with a row per item and content lookup can. The number of
items is the difficulty a curriculum raises (``tiered.curriculum``), and test sequences can
hold many more items than any trained on (``eval_items``), which measures whether what was
learned keeps working in a memory filled far beyond the training lengths.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiered.tasks.base import Example, SequenceTask, check_range
from tiered.validation import check_positive_int


def key_value_recall_example(
    rng: np.random.Generator, items: int, key_bits: int, value_bits: int, queries: int
) -> Example:
    """``items`` (key, value) steps, then ``queries`` query steps; answer each with its value.

    Keys are distinct random ``key_bits``-bit vectors (drawn again on a repeat, so a query
    has one answer); values are random ``value_bits``-bit vectors. Inputs
    (T, key_bits + value_bits + 1), T = items + queries: an item step holds its key and
    value; a query step holds the key of a random item and 1 on the last channel. Targets
    (T, value_bits), scored on the query steps only.
    """
    if key_bits < 63 and items > 1 << key_bits:
        raise ValueError(f"KeyValueRecall: {items} items need distinct keys of more than "
                         f"{key_bits} bits")  # fmt: skip
    keys = _distinct_keys(rng, items, key_bits)
    values = rng.integers(0, 2, size=(items, value_bits)).astype(np.float32)
    asked = rng.integers(0, items, size=queries)
    T, K, V = items + queries, key_bits, value_bits
    inputs = np.zeros((T, K + V + 1), dtype=np.float32)
    inputs[:items, :K] = keys
    inputs[:items, K : K + V] = values
    inputs[items:, :K] = keys[asked]
    inputs[items:, K + V] = 1.0
    targets = np.zeros((T, V), dtype=np.float32)
    targets[items:] = values[asked]
    mask = np.zeros(T, dtype=bool)
    mask[items:] = True
    return Example(inputs, targets, mask)


def _distinct_keys(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """(n, bits) float32 rows of 0/1, no two alike."""
    keys = rng.integers(0, 2, size=(n, bits)).astype(np.uint8)
    while True:
        _, first = np.unique(keys, axis=0, return_index=True)
        repeated = np.setdiff1d(np.arange(n), first)
        if len(repeated) == 0:
            return keys.astype(np.float32)
        keys[repeated] = rng.integers(0, 2, size=(len(repeated), bits))


class KeyValueRecall(SequenceTask):
    """Key-value recall: store many (key, value) items, then answer queries by key.

    Args:
        items: [low, high] items per sequence for training and validation; a curriculum
            may raise it while training (``tiered.curriculum.ThresholdCurriculum``).
        eval_items: [low, high] items per sequence for test.
        key_bits: bits of each key (keys are distinct within a sequence, so a sequence
            holds at most 2**key_bits items).
        value_bits: bits of each value; a query's answer.
        queries: query steps at the end of each sequence.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        items: tuple[int, int] = (2, 16),
        eval_items: tuple[int, int] = (32, 64),
        key_bits: int = 24,
        value_bits: int = 8,
        queries: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.key_bits = check_positive_int("KeyValueRecall", "key_bits", key_bits)
        self.value_bits = check_positive_int("KeyValueRecall", "value_bits", value_bits)
        self.queries = check_positive_int("KeyValueRecall", "queries", queries)
        self.items = self._check_items("items", items)
        self.eval_items = self._check_items("eval_items", eval_items)

    def _check_items(self, field: str, value: Any) -> tuple[int, int]:
        low, high = check_range("KeyValueRecall", field, value)
        if self.key_bits < 63 and high > 1 << self.key_bits:
            raise ValueError(
                f"KeyValueRecall: {field} reaches {high} items, but keys of key_bits="
                f"{self.key_bits} bits allow at most {1 << self.key_bits} distinct ones"
            )
        return low, high

    def check_difficulty(self, field: str, value: Any) -> tuple[int, int]:
        super().check_difficulty(field, value)
        return self._check_items(field, value)

    @property
    def input_size(self) -> int:
        return self.key_bits + self.value_bits + 1

    @property
    def output_size(self) -> int:
        return self.value_bits

    def example(self, rng: np.random.Generator, split: str) -> Example:
        low, high = self.eval_items if split == "test" else self.items
        items = int(rng.integers(low, high + 1))
        return key_value_recall_example(rng, items, self.key_bits, self.value_bits, self.queries)
