"""LevelProbe: the model scored at one fixed difficulty during a curriculum; and RepeatCopy's
count encoding, which a curriculum on ``repeats`` must not change."""

from __future__ import annotations

import csv
import types

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tiered import TieredModule
from tiered.controllers import LSTMController
from tiered.curriculum import LevelProbe, ThresholdCurriculum
from tiered.metrics import bit_errors, sequence_correct
from tiered.tasks import Copy, RepeatCopy, ShortestPath, Traversal
from tiered.tiers import Register


def _module(task, seed: int = 0) -> TieredModule:
    torch.manual_seed(seed)
    return TieredModule(LSTMController(task.input_size, task.output_size, Register(7)),
                        loss=task.loss)  # fmt: skip


def _copy(**kwargs) -> Copy:
    options = dict(lengths=(1, 3), eval_lengths=(1, 3), batch_size=5, train_batches=1000,
                   val_batches=1, seed=4)  # fmt: skip
    return Copy(**{**options, **kwargs})


def test_the_probe_scores_batches_drawn_at_its_level_and_gives_the_task_its_range_back():
    task, module = _copy(), _module(_copy())
    module.train()
    probe = LevelProbe("lengths", [6, 6], batches=3)
    values = probe.score(task, module)
    assert task.lengths == (1, 3) and module.training  # both as they were
    # the reference: the same task at lengths 6..6, its first 3 validation batches, by hand
    fixed = _copy(lengths=(6, 6))
    errors, right = [], []
    with torch.no_grad():
        for index in range(3):
            batch = fixed.make_batch("val", index)
            assert batch.inputs.shape[1] == 2 * 6 + 1  # every sequence at the probe's length
            logits = module.controller(batch.inputs).output
            errors.append(bit_errors(logits, batch.targets, batch.mask))
            right.append(sequence_correct(logits, batch.targets, batch.mask))
    reference = float(torch.cat(errors).double().mean())
    assert values["bit_errors"] == pytest.approx(reference, rel=1e-12)
    assert values["exact_match"] == pytest.approx(float(torch.cat(right).float().mean()))
    assert values["bit_errors"] > 0  # an untrained model: not a vacuous comparison
    assert probe.score(task, module) == values  # the same batches at every probe


def test_token_tasks_are_probed_by_accuracy():
    task = Traversal(nodes=(5, 6), eval_nodes=(5, 6), batch_size=3, val_batches=1)
    values = LevelProbe("nodes", [6, 6], metric="token_accuracy").score(task, _module(task))
    assert set(values) == {"token_accuracy", "exact_match"} and 0 <= values["token_accuracy"] <= 1
    assert task.nodes == (5, 6)
    # 7 nodes would need node ids the model was not sized for: refused, not an IndexError
    with pytest.raises(ValueError, match=r"LevelProbe: field='nodes': Traversal: nodes \[7, 7\] "
                       r"exceeds max_nodes=6, the node ids"):  # fmt: skip
        LevelProbe("nodes", [7, 7], metric="token_accuracy").score(task, _module(task))


def test_graph_tasks_refuse_curriculum_levels_beyond_their_node_ids():
    task = ShortestPath(nodes=(3, 5), eval_nodes=(6, 8))
    assert task.check_difficulty("nodes", [7, 8]) == (7, 8)
    with pytest.raises(ValueError, match=r"ShortestPath: nodes \[4, 9\] exceeds max_nodes=8"):
        task.check_difficulty("nodes", [4, 9])
    with pytest.raises(ValueError, match=r"ShortestPath: nodes \[1, 4\] needs at least 2 nodes"):
        task.check_difficulty("nodes", [1, 4])
    curriculum = ThresholdCurriculum("nodes", "val/token_accuracy", below=0.5, mode="max",
                                     maximum=12)  # fmt: skip
    with pytest.raises(ValueError, match=r"exceeds max_nodes=8.*\(at maximum=12; lower it\)"):
        curriculum.on_fit_start(types.SimpleNamespace(datamodule=task), None)


def _fit(tmp_path, *callbacks, steps=6, resume=None, task=None):
    task = task or _copy()
    trainer = L.Trainer(
        max_steps=steps, val_check_interval=2, check_val_every_n_epoch=None,
        callbacks=[*callbacks, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=1, default_root_dir=tmp_path,
    )  # fmt: skip
    module = _module(task)
    trainer.fit(module, datamodule=task, ckpt_path=resume)
    return trainer, task, module


def _logged(tmp_path, name):
    with open(next((tmp_path / "logs").glob("*/metrics.csv"))) as f:
        return [(int(r["step"]), float(r[name])) for r in csv.DictReader(f) if r.get(name)]


def test_during_a_curriculum_the_probe_stays_at_its_level(tmp_path):
    raise_always = ThresholdCurriculum("lengths", "val/bit_errors", below=1e9, factor=2.0,
                                       maximum=12)  # fmt: skip
    probe = LevelProbe("lengths", [9, 9], batches=2)
    _, task, module = _fit(tmp_path, raise_always, probe)
    assert task.lengths == (1, 12)  # the curriculum moved: 3 -> 6 -> 12
    logged = _logged(tmp_path, "probe/bit_errors")
    assert [step for step, _ in logged] == [2, 4, 6]  # after each validation of fit only
    assert _logged(tmp_path, "probe/exact_match")
    # the last probe, scored again for the trained model, by the same batches at length 9
    assert logged[-1][1] == pytest.approx(probe.score(task, module)["bit_errors"], rel=1e-6)
    assert probe.reached is None and not _logged(tmp_path, "probe/reached")


def test_a_bar_stops_the_fit_and_the_step_reached_survives_a_resume(tmp_path):
    probe = LevelProbe("lengths", [2, 2], batches=1, bar=1e9, stop=True)  # passed at once
    trainer, _, _ = _fit(tmp_path, probe, steps=10)
    assert probe.reached == 2 and trainer.global_step == 2  # stopped at the first probe
    assert _logged(tmp_path, "probe/reached") == [(2, 2.0)]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert saved[probe.state_key] == {"reached": 2}
    resumed = LevelProbe("lengths", [2, 2], batches=1, bar=1e9)
    _fit(tmp_path / "b", resumed, steps=4, resume=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.reached == 2  # kept, not moved to the resumed run's first probe
    never = LevelProbe("lengths", [2, 2], batches=1, bar=-1.0, stop=True)
    trainer, _, _ = _fit(tmp_path / "c", never, steps=4)
    assert never.reached is None and trainer.global_step == 4


def test_bad_probes_are_named():
    with pytest.raises(ValueError, match=r"LevelProbe: level must be a \[low, high\] pair of "
                       r"ints, got \[3\]"):  # fmt: skip
        LevelProbe("lengths", [3])
    with pytest.raises(ValueError, match=r"metric must be one of \['bit_errors', 'exact_match', "
                       r"'token_accuracy'\], got 'loss'"):  # fmt: skip
        LevelProbe("lengths", [3, 3], metric="loss")
    with pytest.raises(ValueError, match=r"stop=True needs a bar"):
        LevelProbe("lengths", [3, 3], stop=True)
    with pytest.raises(ValueError, match=r"batches must be"):
        LevelProbe("lengths", [3, 3], batches=0)
    with pytest.raises(ValueError, match=r"bar must be a number or null, got 'low'"):
        LevelProbe("lengths", [3, 3], bar="low")


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (LevelProbe("items", [3, 3]), r"LevelProbe: field='items': Copy: 'items' is not a"),
        (LevelProbe("lengths", [4, 2]), r"LevelProbe: field='lengths': .*lengths"),
        (LevelProbe("lengths", [3, 3], metric="token_accuracy"),
         r"metric='token_accuracy' needs a token task; Copy scores bits"),
    ],
)  # fmt: skip
def test_a_probe_the_task_cannot_draw_is_refused_before_training(tmp_path, probe, message):
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, probe, steps=2)


def test_repeat_copy_keeps_its_count_encoding_when_a_curriculum_changes_the_repeats():
    task = RepeatCopy(bits=3, lengths=(2, 2), repeats=(1, 4), val_batches=1, batch_size=6)
    task.repeats = (8, 8)  # as a curriculum would set it
    batch = task.make_batch("train", 0)
    counts = batch.inputs[:, 2, 4].numpy()  # the delimiter step (L = 2), count channel
    np.testing.assert_allclose(counts, 8 / 4)  # still divided by the constructed top, 4
    assert batch.inputs.shape[1] == 2 + 1 + 2 * 8 + 1


def test_the_probe_runs_under_the_trainer_s_precision():
    task = _copy()
    module = _module(task)
    probe = LevelProbe("lengths", [4, 4], batches=1, bar=1e9)  # passed at the first probe
    trainer = L.Trainer(max_steps=2, val_check_interval=2, check_val_every_n_epoch=None,
                        precision="bf16-true", callbacks=[probe], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, task)  # bf16 weights: float32 inputs would fail without the plugin
    assert probe.reached == 2
    assert next(module.parameters()).dtype == torch.bfloat16
    values = probe.score(task, module, trainer.precision_plugin)
    assert np.isfinite(values["bit_errors"]) and 0 <= values["exact_match"] <= 1
