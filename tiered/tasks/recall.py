"""Associative recall and priority sort (Graves et al. 2014, the NTM paper)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tiered.tasks.base import Example, SequenceTask, check_range
from tiered.validation import check_non_negative_int, check_positive_int


def associative_recall_example(
    rng: np.random.Generator, bits: int, item_length: int, items: int, delay: int = 0
) -> Example:
    """A list of items, then a query item; output the item that followed the query.

    Each item is ``item_length`` random bit vectors preceded by a delimiter step (channel
    ``bits``). After ``delay`` blank steps, the query is a copy of one item (not the last),
    between two query delimiters (channel ``bits + 1``). Inputs (T, bits + 2); targets
    (T, bits), scored on the last ``item_length`` steps, which hold the next item.
    """
    K = item_length
    data = rng.integers(0, 2, size=(items, K, bits)).astype(np.float32)
    query = int(rng.integers(0, items - 1))
    T = items * (K + 1) + delay + 1 + K + 1 + K
    inputs = np.zeros((T, bits + 2), dtype=np.float32)
    for i in range(items):
        start = i * (K + 1)
        inputs[start, bits] = 1.0
        inputs[start + 1 : start + 1 + K, :bits] = data[i]
    q = items * (K + 1) + delay
    inputs[q, bits + 1] = 1.0
    inputs[q + 1 : q + 1 + K, :bits] = data[query]
    inputs[q + 1 + K, bits + 1] = 1.0
    targets = np.zeros((T, bits), dtype=np.float32)
    targets[T - K :] = data[query + 1]
    mask = np.zeros(T, dtype=bool)
    mask[T - K :] = True
    return Example(inputs, targets, mask)


def priority_sort_example(
    rng: np.random.Generator, bits: int, items: int, keep: int | None = None
) -> Example:
    """Vectors with scalar priorities; output the ``keep`` highest, sorted, highest first.

    Inputs (n + 1 + m, bits + 2), with m = min(keep, n) (m = n without ``keep``): vector i
    on [0, bits) with its priority in [-1, 1] on channel ``bits``; the delimiter on channel
    ``bits + 1`` at step n. Targets (n + 1 + m, bits): the m highest-priority vectors in
    order on the last m steps, which are scored. The NTM paper sorted 20 vectors and
    output the 16 highest.
    """
    n = items
    m = n if keep is None else min(keep, n)
    data = rng.integers(0, 2, size=(n, bits)).astype(np.float32)
    priority = rng.uniform(-1.0, 1.0, size=n).astype(np.float32)
    inputs = np.zeros((n + 1 + m, bits + 2), dtype=np.float32)
    inputs[:n, :bits] = data
    inputs[:n, bits] = priority
    inputs[n, bits + 1] = 1.0
    targets = np.zeros((n + 1 + m, bits), dtype=np.float32)
    targets[n + 1 :] = data[np.argsort(-priority, kind="stable")[:m]]
    mask = np.zeros(n + 1 + m, dtype=bool)
    mask[n + 1 :] = True
    return Example(inputs, targets, mask)


def _item_range(owner: str, field: str, value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return check_range(owner, field, (2, value), minimum=2)
    return check_range(owner, field, value, minimum=2)


class AssociativeRecall(SequenceTask):
    """Associative recall: given a query item, recall the item that followed it.

    Args:
        items: items per sequence for training and validation: [low, high], or one number
            n for [2, n].
        eval_items: items per sequence for test, like ``items``.
        bits: width of each vector (6 in the NTM paper).
        item_length: vectors per item (3 in the NTM paper).
        delay: blank steps between the last item and the query (0 in the NTM paper): a
            memory must keep the items over them.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        items: int | tuple[int, int] = (2, 6),
        eval_items: int | tuple[int, int] = (7, 12),
        bits: int = 6,
        item_length: int = 3,
        delay: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.items = _item_range("AssociativeRecall", "items", items)
        self.eval_items = _item_range("AssociativeRecall", "eval_items", eval_items)
        self.bits = check_positive_int("AssociativeRecall", "bits", bits)
        self.item_length = check_positive_int("AssociativeRecall", "item_length", item_length)
        self.delay = check_non_negative_int("AssociativeRecall", "delay", delay)

    @property
    def input_size(self) -> int:
        return self.bits + 2

    @property
    def output_size(self) -> int:
        return self.bits

    def example(self, rng: np.random.Generator, split: str) -> Example:
        low, high = self.eval_items if split == "test" else self.items
        items = int(rng.integers(low, high + 1))
        return associative_recall_example(rng, self.bits, self.item_length, items, self.delay)


class PrioritySort(SequenceTask):
    """Priority sort: read vectors with priorities, write them in order of priority.

    Args:
        items: [low, high] vectors per sequence for training and validation.
        eval_items: [low, high] vectors per sequence for test.
        bits: width of each vector (8 in the NTM paper).
        keep: output only this many highest-priority vectors (16 of 20 in the NTM paper);
            None outputs every vector.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        items: tuple[int, int] = (2, 10),
        eval_items: tuple[int, int] = (11, 20),
        bits: int = 8,
        keep: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.items = check_range("PrioritySort", "items", items)
        self.eval_items = check_range("PrioritySort", "eval_items", eval_items)
        self.bits = check_positive_int("PrioritySort", "bits", bits)
        self.keep = None if keep is None else check_positive_int("PrioritySort", "keep", keep)

    @property
    def input_size(self) -> int:
        return self.bits + 2

    @property
    def output_size(self) -> int:
        return self.bits

    def example(self, rng: np.random.Generator, split: str) -> Example:
        low, high = self.eval_items if split == "test" else self.items
        n = int(rng.integers(low, high + 1))
        return priority_sort_example(rng, self.bits, n, self.keep)
