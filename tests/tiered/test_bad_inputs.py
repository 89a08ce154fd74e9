"""Bad constructor arguments found by experiments/benchmarks/reliability.py: each now fails
with an error naming the class, the argument and the value, and writes nothing."""

from __future__ import annotations

import pytest

from tiered.controllers import LSTMController
from tiered.storage import KVStore, StoreNotFoundError
from tiered.tasks import Copy, KeyValueLookup, PrioritySort, RepeatCopy, ShortestPath
from tiered.tiers import ROM, Cache, Disk, Register


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: Copy(lengths=5), r"Copy: lengths must be two integers \[low, high\], got 5"),
        (lambda: Copy(eval_lengths="1,2"), r"Copy: eval_lengths .* got '1,2'"),
        (lambda: RepeatCopy(repeats=5), r"RepeatCopy: repeats .* got 5"),
        (lambda: PrioritySort(items=5), r"PrioritySort: items .* got 5"),
        (lambda: ShortestPath(nodes=5), r"ShortestPath: nodes .* got 5"),
        (
            lambda: LSTMController(3, 2, Register(4), [Cache(3, 2)], input_skip="no"),
            r"LSTMController: input_skip must be true or false, got 'no'",
        ),
        (lambda: Disk(12345, 4, 3), r"Disk: store must be a folder path or URL .* got 12345"),
    ],
)
def test_wrong_types_name_the_class_the_argument_and_the_value(make, pattern):
    with pytest.raises(TypeError, match=pattern):
        make()


def test_missing_stores_and_non_bool_flags_name_their_owner(tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(StoreNotFoundError, match=f"ROM: store '{missing}' does not exist"):
        ROM(missing)
    with pytest.raises(StoreNotFoundError, match="KeyValueLookup: store '.*' does not exist"):
        KeyValueLookup(missing)
    store = KVStore.create(tmp_path / "kv", 3, 2)
    store.append([[1.0, 0.0, 0.0]], [[1.0, 1.0]])
    with pytest.raises(TypeError, match="ROM: values_in_memory must be true or false, got 2"):
        ROM(str(tmp_path / "kv"), values_in_memory=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kv"]  # nothing else written


def test_a_disk_store_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("not a store")
    with pytest.raises(ValueError, match=f"Disk: store must be a folder .* got a file: '{plain}'"):
        Disk(str(plain), 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
