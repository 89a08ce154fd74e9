"""Parity and Addition (the ACT paper's tasks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiered.tasks import Addition, Parity
from tiered.tasks.ponder import DIGIT_CLASSES, digits_of


def test_parity_targets_are_the_parity_of_the_non_zero_count():
    task = Parity(size=11, nonzero=(3, 7), eval_nonzero=(9, 11), length=5, batch_size=13)
    batch = task.make_batch("train", 0)
    assert batch.inputs.shape == (13, 5, 11) and batch.targets.shape == (13, 5, 1)
    count = (batch.inputs != 0).sum(-1)  # (B, T)
    assert count.min() >= 3 and count.max() <= 7
    assert set(batch.inputs.unique().tolist()) == {-1.0, 0.0, 1.0}
    ones = (batch.inputs == 1).sum(-1)  # the paper's target: the parity of the ones
    torch.testing.assert_close(batch.targets[..., 0], (ones % 2).float())
    assert not torch.equal(ones % 2, count % 2)  # the signs matter
    nonzero = Parity(size=11, nonzero=(3, 7), length=5, batch_size=13, count="nonzero")
    other = nonzero.make_batch("train", 0)
    torch.testing.assert_close(other.targets[..., 0], ((other.inputs != 0).sum(-1) % 2).float())
    with pytest.raises(ValueError, match="count"):
        Parity(count="odd")
    assert batch.mask.all()
    test = task.make_batch("test", 0)
    assert (test.inputs != 0).sum(-1).min() >= 9  # the evaluation range


def test_parity_checks_its_ranges_against_the_size():
    with pytest.raises(ValueError, match=r"nonzero=\[1, 9\] has more non-zero entries than size=8"):
        Parity(size=8, nonzero=(1, 9))
    task = Parity(size=8, nonzero=(1, 2))
    assert task.check_difficulty("nonzero", [1, 8]) == (1, 8)
    with pytest.raises(ValueError, match="exceeds size=8"):
        task.check_difficulty("nonzero", [1, 9])


def _decode(one_hot: np.ndarray, places: int) -> int:
    classes = one_hot.reshape(places, DIGIT_CLASSES).argmax(-1)
    digits = [str(c) for c in classes if c < 10]
    assert all(c == 10 for c in classes[len(digits) :])  # "no digit" only past the end
    return int("".join(reversed(digits)))


def test_addition_outputs_the_running_sum_digit_by_digit():
    task = Addition(digits=3, numbers=(2, 4), eval_numbers=(6, 7), batch_size=9)
    assert task.places == len(str(7 * 999)) and task.output_size == task.places * 11
    batch = task.make_batch("train", 3)
    for b in range(9):
        steps = int(batch.mask[b].sum())
        assert 2 <= steps <= 4
        total = 0
        for t in range(steps):
            number = _decode(batch.inputs[b, t].numpy(), 3)
            assert number < 1000
            total += number
            assert _decode(batch.targets[b, t].numpy(), task.places) == total
    assert int(task.make_batch("test", 0).mask.sum(1).min()) >= 6


def test_digits_and_difficulty_limits_are_named():
    assert digits_of(305, 4) == [5, 0, 3, 10] and digits_of(0, 2) == [0, 10]
    with pytest.raises(ValueError, match="more than 2 digits"):
        digits_of(305, 2)
    task = Addition(digits=2, numbers=(1, 3), eval_numbers=(1, 5))  # sums up to 495: 3 places
    assert task.check_difficulty("numbers", [1, 10]) == (1, 10)  # 10 * 99 = 990 still fits
    with pytest.raises(ValueError, match="at most 10 numbers fit: raise eval_numbers to at least"):
        task.check_difficulty("numbers", [1, 11])
