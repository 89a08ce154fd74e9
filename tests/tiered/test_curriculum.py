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


def _fit(tmp_path: Path, curriculum: ThresholdCurriculum, steps: int, ckpt: str | None = None):
    task = KeyValueRecall(items=(2, 3), key_bits=8, value_bits=3, queries=2, batch_size=2,
                          train_batches=1000, val_batches=1)  # fmt: skip
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_steps=steps, val_check_interval=2, check_val_every_n_epoch=None,
        callbacks=[curriculum, checkpoints], enable_progress_bar=False,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"), num_sanity_val_steps=1,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_module(task), datamodule=task, ckpt_path=ckpt)
    return task, trainer


def test_the_curriculum_raises_the_range_at_each_passed_validation_and_logs_it(tmp_path):
    # below=1e9: every validation passes; 6 steps, a validation every 2 -> 3 raises.
    curriculum = ThresholdCurriculum("items", "val/bit_errors", below=1e9, factor=2.0,
                                     maximum=10, low_fraction=0.5)  # fmt: skip
    task, _ = _fit(tmp_path, curriculum, steps=6)
    assert task.items == (5, 10)  # tops 3 -> 6 -> 10 (the maximum); bottoms 2 -> 3 -> 5
    assert curriculum.raises == [(2, 6), (4, 10)]  # no raise past the maximum at step 6
    assert task.make_batch("train", 99).inputs.shape[1] in range(5 + 2, 10 + 2 + 1)
    with open(next((tmp_path / "logs").glob("*/metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("curriculum/items_high")]
    assert [float(r["curriculum/items_high"]) for r in rows] == [6, 10, 10]
    assert [float(r["curriculum/items_low"]) for r in rows] == [3, 5, 5]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("ThresholdCurriculum")]
    assert state == {"level": [5, 10], "raises": [[2, 6], [4, 10]]}


def test_a_resumed_run_continues_its_curriculum(tmp_path):
    never = dict(metric="val/bit_errors", below=-1.0, factor=2.0, maximum=100)  # never passes
    first = ThresholdCurriculum("items", **{**never, "below": 1e9})
    _fit(tmp_path, first, steps=2)
    assert first.level == (2, 6)
    resumed = ThresholdCurriculum("items", **never)
    task, _ = _fit(tmp_path, resumed, steps=4, ckpt=str(tmp_path / "ckpt" / "last.ckpt"))
    assert task.items == (2, 6) and resumed.raises == [(2, 6)]  # the saved level, not (2, 3)


def test_curriculum_errors_name_the_field_and_value(tmp_path):
    with pytest.raises(ValueError, match=r"ThresholdCurriculum: factor must be > 1, got 1.0"):
        ThresholdCurriculum("items", "val/bit_errors", below=1.0, factor=1.0)
    with pytest.raises(ValueError, match=r"mode must be 'min' or 'max', got 'low'"):
        ThresholdCurriculum("items", "val/bit_errors", below=1.0, mode="low")
    with pytest.raises(ValueError, match=r"field='lengths' is not an attribute of the task"):
        _fit(tmp_path / "a", ThresholdCurriculum("lengths", "val/bit_errors", below=1.0), 2)
    with pytest.raises(ValueError, match=r"metric='val/acc' was not logged; logged: \["):
        _fit(tmp_path / "b", ThresholdCurriculum("items", "val/acc", below=1.0), 2)
