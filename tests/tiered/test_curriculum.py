"""KeyValueRecall (the large-memory task) and ThresholdCurriculum."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tiered import TieredModule
from tiered.controllers import LSTMController
from tiered.curriculum import ThresholdCurriculum
from tiered.tasks import KeyValueRecall
from tiered.tasks.kv_recall import key_value_recall_example
from tiered.tiers import Register


def test_each_query_asks_for_the_value_stored_with_its_key():
    rng = np.random.default_rng(3)
    example = key_value_recall_example(rng, items=37, key_bits=6, value_bits=5, queries=7)
    inputs, targets, mask = example
    assert inputs.shape == (44, 12) and targets.shape == (44, 5)
    assert mask.tolist() == [False] * 37 + [True] * 7
    keys, values = inputs[:37, :6], inputs[:37, 6:11]
    assert len({tuple(k) for k in keys}) == 37  # distinct keys: one answer per query
    assert not inputs[:37, 11].any() and inputs[37:, 11].all()  # the query flag
    assert not inputs[37:, 6:11].any()  # a query shows no value
    for t in range(37, 44):
        (item,) = np.flatnonzero((keys == inputs[t, :6]).all(axis=1))
        np.testing.assert_array_equal(targets[t], values[item])
    assert not targets[:37].any()


def test_key_value_recall_rejects_more_items_than_distinct_keys():
    with pytest.raises(ValueError, match=r"eval_items reaches 65 items.*key_bits=6.*at most 64"):
        KeyValueRecall(key_bits=6, items=(2, 8), eval_items=(2, 65))
    with pytest.raises(ValueError, match="KeyValueRecall: items must satisfy 1 <= low <= high"):
        KeyValueRecall(items=(9, 3))
    task = KeyValueRecall(key_bits=3, items=(8, 8), eval_items=(8, 8), queries=2, batch_size=3)
    batch = task.make_batch("train", 0)  # all 8 keys of 3 bits, each once
    assert batch.inputs.shape == (3, 10, 3 + 8 + 1)


def _module(task: KeyValueRecall) -> TieredModule:
    controller = LSTMController(task.input_size, task.output_size, Register(hidden_size=9))
    return TieredModule(controller, loss=task.loss)


class _Lengths(L.Callback):
    """Records (step, sequence length) of every training batch the Trainer draws."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, batch.inputs.shape[1]))


def _fit(tmp_path: Path, *curricula: ThresholdCurriculum, steps: int, ckpt: str | None = None,
         key_bits: int = 8):  # fmt: skip
    task = KeyValueRecall(items=(2, 3), eval_items=(2, 3), key_bits=key_bits, value_bits=3,
                          queries=2, batch_size=2, train_batches=1000, val_batches=1)  # fmt: skip
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    lengths = _Lengths()
    trainer = L.Trainer(
        max_steps=steps, val_check_interval=2, check_val_every_n_epoch=None,
        callbacks=[*curricula, checkpoints, lengths], enable_progress_bar=False,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"), num_sanity_val_steps=1,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module = _module(task)
    trainer.fit(module, datamodule=task, ckpt_path=ckpt)
    return task, trainer, lengths.seen


def test_the_curriculum_raises_the_range_at_each_passed_validation_and_logs_it(tmp_path):
    # below=1e9: every validation passes; 6 steps, a validation every 2 -> 3 raises.
    curriculum = ThresholdCurriculum("items", "val/bit_errors", below=1e9, factor=2.0,
                                     maximum=10, low_fraction=0.5)  # fmt: skip
    task, trainer, seen = _fit(tmp_path, curriculum, steps=6)
    assert task.items == (5, 10)  # tops 3 -> 6 -> 10 (the maximum); bottoms 2 -> 3 -> 5
    assert curriculum.raises == [(2, 6), (4, 10)]  # no raise past the maximum at step 6
    # the batches the Trainer drew: items + 2 queries steps, in the range of their time
    ranges = {0: (2, 3), 1: (2, 3), 2: (3, 6), 3: (3, 6), 4: (5, 10), 5: (5, 10)}
    assert [step for step, _ in seen] == list(range(6))
    for step, length in seen:
        low, high = ranges[step]
        assert low + 2 <= length <= high + 2, (step, length)
    with open(next((tmp_path / "logs").glob("*/metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("curriculum/items_high")]
    assert [float(r["curriculum/items_high"]) for r in rows] == [6, 10, 10]
    assert [float(r["curriculum/items_low"]) for r in rows] == [3, 5, 5]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert saved[curriculum.state_key] == {"level": [5, 10], "raises": [[2, 6], [4, 10]]}
    trainer.validate(datamodule=task, verbose=False)  # not part of fit: no raise
    assert task.items == (5, 10) and curriculum.raises == [(2, 6), (4, 10)]


def test_max_mode_and_two_curricula_in_one_trainer(tmp_path):
    items = ThresholdCurriculum("items", "val/bit_errors", below=-1.0, mode="max", maximum=12)
    never = ThresholdCurriculum("eval_items", "val/loss", below=-1.0, maximum=12)  # min: never
    task, _, _ = _fit(tmp_path, items, never, steps=4)
    assert items.raises == [(2, 6), (4, 12)] and never.raises == []
    assert task.items == (2, 12) and task.eval_items == (2, 3)
    assert items.state_key != never.state_key


def test_a_resumed_run_continues_its_curriculum(tmp_path):
    always = dict(metric="val/bit_errors", below=1e9, factor=2.0, maximum=100)
    first = ThresholdCurriculum("items", **always)
    _fit(tmp_path / "a", first, steps=2)
    assert first.level == (2, 6)
    resumed = ThresholdCurriculum("items", **always)
    task, _, seen = _fit(tmp_path / "a", resumed, steps=4, ckpt=str(tmp_path / "a/ckpt/last.ckpt"))
    # the saved level, raised once more at step 4, and not again for the validation at step 2
    assert resumed.raises == [(2, 6), (4, 12)] and task.items == (2, 12)
    assert all(length >= 2 + 2 for _, length in seen) and [s for s, _ in seen] == [2, 3]
    stuck = ThresholdCurriculum("items", **{**always, "below": -1.0})  # never passes
    task, _, _ = _fit(tmp_path / "b", stuck, steps=2, ckpt=str(tmp_path / "a/ckpt/last.ckpt"))
    assert task.items == (2, 12) and stuck.raises == [(2, 6), (4, 12)]


def test_curriculum_errors_name_the_field_and_value(tmp_path):
    with pytest.raises(ValueError, match=r"ThresholdCurriculum: factor must be > 1, got 1.0"):
        ThresholdCurriculum("items", "val/bit_errors", below=1.0, factor=1.0)
    with pytest.raises(ValueError, match=r"mode must be 'min' or 'max', got 'low'"):
        ThresholdCurriculum("items", "val/bit_errors", below=1.0, mode="low")
    with pytest.raises(ValueError, match=r"below must be a number, got 'low'"):
        ThresholdCurriculum("items", "val/bit_errors", below="low")
    with pytest.raises(ValueError, match=r"field='lengths': KeyValueRecall: 'lengths' is not a "
                       r"\[low, high\] range of the task \(its value: None\); its ranges: "
                       r"\['eval_items', 'items'\]"):  # fmt: skip
        _fit(tmp_path / "a", ThresholdCurriculum("lengths", "val/bit_errors", below=1.0), steps=2)
    with pytest.raises(ValueError, match=r"field='batch_size': .*'batch_size' is not a"):
        _fit(tmp_path / "b", ThresholdCurriculum("batch_size", "val/loss", below=1.0), steps=2)
    with pytest.raises(ValueError, match=r"items reaches 100 items, but keys of key_bits=5 .*"
                       r"at most 32 .*\(at maximum=100; lower it\)"):  # fmt: skip
        _fit(tmp_path / "c", ThresholdCurriculum("items", "val/loss", below=1.0, maximum=100),
             steps=2, key_bits=5)  # fmt: skip
    with pytest.raises(ValueError, match=r"metric='val/acc' was not logged; logged: \["):
        _fit(tmp_path / "d", ThresholdCurriculum("items", "val/acc", below=1.0, maximum=9), steps=2)
