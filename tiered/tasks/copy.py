"""Copy and repeat copy (Graves et al. 2014, the Neural Turing Machine paper)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tiered.tasks.base import Example, SequenceTask, check_range
from tiered.validation import check_positive_int


def copy_example(rng: np.random.Generator, bits: int, length: int) -> Example:
    """A sequence of ``length`` random bit vectors, a delimiter, then the copy to output.

    Inputs (2L + 1, bits + 1): the vectors on channels [0, bits), the delimiter on channel
    ``bits`` at step L, then L blank steps. Targets (2L + 1, bits): the vectors again at
    steps L + 1 .. 2L, which are the only scored steps.
    """
    L = length
    data = rng.integers(0, 2, size=(L, bits)).astype(np.float32)
    inputs = np.zeros((2 * L + 1, bits + 1), dtype=np.float32)
    inputs[:L, :bits] = data
    inputs[L, bits] = 1.0
    targets = np.zeros((2 * L + 1, bits), dtype=np.float32)
    targets[L + 1 :] = data
    mask = np.zeros(2 * L + 1, dtype=bool)
    mask[L + 1 :] = True
    return Example(inputs, targets, mask)


def repeat_copy_example(
    rng: np.random.Generator, bits: int, length: int, repeats: int, max_repeats: int
) -> Example:
    """A sequence, then a delimiter carrying the repeat count; output it that many times.

    Inputs (L + 1 + L n + 1, bits + 2): the vectors on [0, bits); at step L the delimiter
    (channel ``bits``) and ``n / max_repeats`` (channel ``bits + 1``). Targets
    (same T, bits + 1): the sequence n times, then the end marker on channel ``bits``.
    Scored: the L n + 1 output steps.
    """
    L, n = length, repeats
    T = L + 1 + L * n + 1
    data = rng.integers(0, 2, size=(L, bits)).astype(np.float32)
    inputs = np.zeros((T, bits + 2), dtype=np.float32)
    inputs[:L, :bits] = data
    inputs[L, bits] = 1.0
    inputs[L, bits + 1] = n / max_repeats
    targets = np.zeros((T, bits + 1), dtype=np.float32)
    targets[L + 1 : L + 1 + L * n, :bits] = np.tile(data, (n, 1))
    targets[T - 1, bits] = 1.0
    mask = np.zeros(T, dtype=bool)
    mask[L + 1 :] = True
    return Example(inputs, targets, mask)


class Copy(SequenceTask):
    """Copy: read a sequence of random bit vectors, then write it back.

    Args:
        bits: width of each vector (8 in the NTM paper).
        lengths: [low, high] sequence lengths for training and validation.
        eval_lengths: [low, high] sequence lengths for test (generalisation).
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        bits: int = 8,
        lengths: tuple[int, int] = (1, 20),
        eval_lengths: tuple[int, int] = (21, 40),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bits = check_positive_int("Copy", "bits", bits)
        self.lengths = check_range("Copy", "lengths", lengths)
        self.eval_lengths = check_range("Copy", "eval_lengths", eval_lengths)

    @property
    def input_size(self) -> int:
        return self.bits + 1

    @property
    def output_size(self) -> int:
        return self.bits

    def example(self, rng: np.random.Generator, split: str) -> Example:
        low, high = self.eval_lengths if split == "test" else self.lengths
        return copy_example(rng, self.bits, int(rng.integers(low, high + 1)))


class RepeatCopy(SequenceTask):
    """Repeat copy: read a sequence and a repeat count, write the sequence that many times.

    Args:
        bits: width of each vector (8 in the NTM paper).
        lengths: [low, high] sequence lengths for training and validation.
        repeats: [low, high] repeat counts for training and validation. The count is shown
            divided by the top of this range as given here, whatever range is drawn later
            (a curriculum that changes ``repeats`` keeps the scale).
        eval_lengths: [low, high] sequence lengths for test.
        eval_repeats: [low, high] repeat counts for test.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        bits: int = 8,
        lengths: tuple[int, int] = (1, 10),
        repeats: tuple[int, int] = (1, 10),
        eval_lengths: tuple[int, int] = (1, 10),
        eval_repeats: tuple[int, int] = (11, 20),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bits = check_positive_int("RepeatCopy", "bits", bits)
        self.lengths = check_range("RepeatCopy", "lengths", lengths)
        self.repeats = check_range("RepeatCopy", "repeats", repeats)
        self.eval_lengths = check_range("RepeatCopy", "eval_lengths", eval_lengths)
        self.eval_repeats = check_range("RepeatCopy", "eval_repeats", eval_repeats)
        self.count_scale = self.repeats[1]  # fixed: the count's encoding never changes

    @property
    def input_size(self) -> int:
        return self.bits + 2

    @property
    def output_size(self) -> int:
        return self.bits + 1

    def example(self, rng: np.random.Generator, split: str) -> Example:
        lengths = self.eval_lengths if split == "test" else self.lengths
        repeats = self.eval_repeats if split == "test" else self.repeats
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        count = int(rng.integers(repeats[0], repeats[1] + 1))
        return repeat_copy_example(rng, self.bits, length, count, self.count_scale)
