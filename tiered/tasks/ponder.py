"""Tasks that reward thinking longer per input: parity and addition (Graves 2016, "Adaptive
Computation Time for Recurrent Neural Networks", sections 3.1 and 3.3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tiered.tasks.base import Example, SequenceTask, check_range
from tiered.validation import check_choice, check_positive_int

DIGIT_CLASSES = 11  # the digits 0..9, and "no digit" past a number's end


def parity_example(rng: np.random.Generator, size: int, nonzero: tuple[int, int],
                   length: int, count: str = "ones") -> Example:  # fmt: skip
    """``length`` independent vectors of ``size`` entries in {-1, 0, 1}, each with a random
    number of non-zero entries in ``nonzero`` (at random places, each -1 or 1 at random);
    the target at each step is 1 when the number of ones (``count="ones"``, the ACT paper's
    target) or of non-zero entries (``"nonzero"``) is odd. Every step is scored.

    Inputs (length, size), targets (length, 1), mask (length,).
    """
    inputs = np.zeros((length, size), dtype=np.float32)
    targets = np.zeros((length, 1), dtype=np.float32)
    for t in range(length):
        chosen = int(rng.integers(nonzero[0], nonzero[1] + 1))
        places = rng.choice(size, size=chosen, replace=False)
        inputs[t, places] = rng.choice([-1.0, 1.0], size=chosen)
        counted = int((inputs[t] == 1.0).sum()) if count == "ones" else chosen
        targets[t, 0] = counted % 2
    return Example(inputs, targets, np.ones(length, dtype=bool))


def digits_of(value: int, places: int) -> list[int]:
    """The decimal digits of ``value``, least significant first, as classes: 0..9 for the
    number's digits and 10 ("no digit") for the places past its last (0 has one digit, 0)."""
    text = str(value)[::-1]
    if len(text) > places:
        raise ValueError(f"digits_of: {value} has more than {places} digits")
    return [int(c) for c in text] + [10] * (places - len(text))


def addition_example(rng: np.random.Generator, digits: int, count: int, places: int) -> Example:
    """``count`` numbers of 1..``digits`` digits, one per step; after each, output the sum so
    far (the ACT paper's addition).

    Inputs (count, digits * 11): per digit place, least significant first, a one-hot of its
    class (``digits_of``). Targets (count, places * 11): the running sum's classes one-hot,
    ``places`` of them. Every step is scored.
    """
    inputs = np.zeros((count, digits * DIGIT_CLASSES), dtype=np.float32)
    targets = np.zeros((count, places * DIGIT_CLASSES), dtype=np.float32)
    total = 0
    for t in range(count):
        length = int(rng.integers(1, digits + 1))
        low = 0 if length == 1 else 10 ** (length - 1)
        number = int(rng.integers(low, 10**length))
        total += number
        for place, cls in enumerate(digits_of(number, digits)):
            inputs[t, place * DIGIT_CLASSES + cls] = 1.0
        for place, cls in enumerate(digits_of(total, places)):
            targets[t, place * DIGIT_CLASSES + cls] = 1.0
    return Example(inputs, targets, np.ones(count, dtype=bool))


class Parity(SequenceTask):
    """Parity (ACT paper): vectors of ``size`` entries in {-1, 0, 1}; output whether the number
    of ones is odd (the paper's target; ``count="nonzero"`` counts every non-zero entry).
    The ACT paper gives one vector per sequence (``length`` 1), so all the work for it must be
    done at that one step: the paper reports a plain LSTM near chance and ACT solving it.

    Args:
        size: entries per vector (64 in the paper).
        nonzero: [low, high] non-zero entries per vector for training and validation (a
            curriculum can raise it); None: 1..size.
        eval_nonzero: the same for test; None: 1..size.
        length: vectors per sequence, each scored on its own.
        count: what the parity is of: "ones" (the +1 entries, as in the paper) or "nonzero".
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        size: int = 64,
        nonzero: tuple[int, int] | None = None,
        eval_nonzero: tuple[int, int] | None = None,
        length: int = 1,
        count: str = "ones",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = check_positive_int("Parity", "size", size)
        self.count = check_choice("Parity", "count", count, ("ones", "nonzero"))
        everything = (1, self.size)
        self.nonzero = check_range("Parity", "nonzero", nonzero or everything)
        self.eval_nonzero = check_range("Parity", "eval_nonzero", eval_nonzero or everything)
        self.length = check_positive_int("Parity", "length", length)
        for field, value in (("nonzero", self.nonzero), ("eval_nonzero", self.eval_nonzero)):
            if value[1] > self.size:
                raise ValueError(
                    f"Parity: {field}={list(value)} has more non-zero entries than size={size}"
                )

    @property
    def input_size(self) -> int:
        return self.size

    @property
    def output_size(self) -> int:
        return 1

    def check_difficulty(self, field: str, value: Any) -> tuple[int, int]:
        low, high = super().check_difficulty(field, value)
        if high > self.size:
            raise ValueError(f"Parity: {field} [{low}, {high}] exceeds size={self.size}")
        return low, high

    def example(self, rng: np.random.Generator, split: str) -> Example:
        nonzero = self.eval_nonzero if split == "test" else self.nonzero
        return parity_example(rng, self.size, nonzero, self.length, self.count)


class Addition(SequenceTask):
    """Addition (ACT paper): numbers of up to ``digits`` digits, one per step, given digit by
    digit; after each, output the sum so far, digit by digit (a bits task over one-hot digit
    classes; exact match is the share of sequences with every sum right).

    Args:
        digits: the most digits per number (5 in the paper).
        numbers: [low, high] numbers per sequence for training and validation (1..5 in the
            paper).
        eval_numbers: the same for test.
        **kwargs: batch_size, train_batches, val_batches, test_batches, seed and
            num_workers, as in ``SequenceTask``.
    """

    loss = "bits"

    def __init__(
        self,
        digits: int = 5,
        numbers: tuple[int, int] = (1, 5),
        eval_numbers: tuple[int, int] = (1, 5),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.digits = check_positive_int("Addition", "digits", digits)
        self.numbers = check_range("Addition", "numbers", numbers)
        self.eval_numbers = check_range("Addition", "eval_numbers", eval_numbers)
        most = max(self.numbers[1], self.eval_numbers[1])
        # the largest sum, most * (10^digits - 1), has at most this many digits
        self.places = len(str(most * (10**self.digits - 1)))

    @property
    def input_size(self) -> int:
        return self.digits * DIGIT_CLASSES

    @property
    def output_size(self) -> int:
        return self.places * DIGIT_CLASSES

    def check_difficulty(self, field: str, value: Any) -> tuple[int, int]:
        low, high = super().check_difficulty(field, value)
        most = (10**self.places - 1) // (10**self.digits - 1)  # numbers whose sum still fits
        if field in ("numbers", "eval_numbers") and high > most:
            raise ValueError(
                f"Addition: {field} [{low}, {high}] can make sums of more than {self.places} "
                f"digits, the output size (set by the largest of numbers and eval_numbers); "
                f"at most {most} numbers fit: raise eval_numbers to at least {high}"
            )
        return low, high

    def example(self, rng: np.random.Generator, split: str) -> Example:
        numbers = self.eval_numbers if split == "test" else self.numbers
        count = int(rng.integers(numbers[0], numbers[1] + 1))
        return addition_example(rng, self.digits, count, self.places)
