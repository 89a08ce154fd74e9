"""Priority sort, including the NTM paper's setting (output the 16 highest of 20)."""

from __future__ import annotations

import numpy as np
import pytest

from tiered.tasks import PrioritySort
from tiered.tasks.recall import priority_sort_example


def test_the_highest_keep_vectors_are_output_in_order_of_priority():
    rng = np.random.default_rng(3)
    example = priority_sort_example(rng, bits=4, items=7, keep=3)
    assert example.inputs.shape == (7 + 1 + 3, 6) and example.mask.sum() == 3
    priorities = example.inputs[:7, 4]
    order = np.argsort(-priorities, kind="stable")[:3]
    np.testing.assert_array_equal(example.targets[8:], example.inputs[order, :4])
    assert example.inputs[7, 5] == 1.0  # the delimiter
    # keep above the count outputs all of them; no keep, all of them too
    rng = np.random.default_rng(3)
    full = priority_sort_example(rng, bits=4, items=7, keep=50)
    rng = np.random.default_rng(3)
    default = priority_sort_example(rng, bits=4, items=7)
    np.testing.assert_array_equal(full.targets, default.targets)
    assert default.mask.sum() == 7


def test_the_ntm_setting_makes_37_step_sequences_with_16_scored():
    task = PrioritySort(items=[20, 20], eval_items=[20, 20], keep=16, batch_size=3)
    batch = task.make_batch("train", 0)
    assert batch.inputs.shape == (3, 37, 10) and (batch.mask.sum(-1) == 16).all()
    with pytest.raises(ValueError, match="PrioritySort: keep"):
        PrioritySort(keep=0)
