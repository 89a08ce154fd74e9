"""Training: resume equality, truncated BPTT, DDP on 2 CPU processes, task determinism."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tiered import TieredModule
from tiered.cli import make_cli
from tiered.controllers import LSTMController
from tiered.tasks import (
    AssociativeRecall,
    Copy,
    KeyValueRecall,
    PrioritySort,
    RepeatCopy,
    ShortestPath,
)
from tiered.tasks.base import BatchIndexSampler, TaskBatches, pad_examples
from tiered.tasks.copy import copy_example
from tiered.tiers import RAM, ROM, Cache, Disk, Register

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "experiments" / "stacks" / "cache_ram.yaml"
SMALL_COPY = [
    "--data", "Copy",
    "--data.init_args.lengths", "[1, 4]",
    "--data.init_args.batch_size", "4",
    "--data.init_args.train_batches", "3",
    "--data.init_args.val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.log_every_n_steps", "1",
    "--seed_everything", "7",
]  # fmt: skip


def _fit(tmp_path: Path, name: str, max_epochs: int, ckpt: Path | None = None) -> Path:
    args = ["fit", "--config", str(STACK), *SMALL_COPY, "--trainer.max_epochs", str(max_epochs)]
    args += ["--trainer.default_root_dir", str(tmp_path / name)]
    args += ["--trainer.logger", "false"]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    make_cli(args)
    # The epoch-end checkpoint, and last.ckpt (FinalCheckpoint): the one resumed from below.
    names = sorted(p.name for p in (tmp_path / name / "checkpoints").glob("*.ckpt"))
    assert names == [f"epoch={max_epochs - 1}-step={3 * max_epochs}.ckpt", "last.ckpt"], names
    return tmp_path / name / "checkpoints" / "last.ckpt"


def test_a_run_stopped_by_max_steps_mid_epoch_saves_last_ckpt_as_mid_epoch(tmp_path):
    # 3 batches per epoch: 4 steps end mid-epoch 1. last.ckpt is saved after step 4's batch,
    # where the loops still say "mid-epoch" (saved at the end of fit, Lightning would count
    # epoch 1 as finished), so a resume to 7 steps ends in the epoch an uninterrupted run of
    # 7 does. Lightning replays a resumed epoch's batches from its start (docs/sweeps.md), so
    # the weights are not the uninterrupted run's: the resume is exact only at epoch ends
    # (the next test).
    def fit(name: str, steps: int, ckpt: Path | None = None) -> dict:
        args = [
            "fit",
            "--config",
            str(STACK),
            *SMALL_COPY,
            "--trainer.max_steps",
            str(steps),
            "--trainer.default_root_dir",
            str(tmp_path / name),
            "--trainer.logger",
            "false",
        ]
        args += ["--ckpt_path", str(ckpt)] if ckpt else []  # fmt: skip
        make_cli(args)
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)

    whole = fit("whole", 7)
    first = fit("first", 4)
    assert first["global_step"] == 4 and first["epoch"] == 1  # not counted as finished
    resumed = fit("resumed", 7, ckpt=tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == whole["global_step"] == 7
    assert resumed["epoch"] == whole["epoch"] == 2
    progress = resumed["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    assert progress == whole["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]


def test_stopped_and_resumed_run_ends_with_the_same_weights(tmp_path):
    uninterrupted = torch.load(_fit(tmp_path, "whole", 4), weights_only=False)
    halfway = _fit(tmp_path, "first_half", 2)
    resumed = torch.load(_fit(tmp_path, "resumed", 4, ckpt=halfway), weights_only=False)
    assert resumed["global_step"] == uninterrupted["global_step"] == 12
    for key, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)
    for a, b in zip(
        resumed["optimizer_states"][0]["state"].values(),
        uninterrupted["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)


def _train(model: TieredModule, task: Copy, steps: int) -> dict[str, torch.Tensor]:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, task)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _model(tbptt_steps: int | None, seed: int = 0) -> TieredModule:
    torch.manual_seed(seed)
    controller = LSTMController(9, 8, Register(16), [Cache(5, 6, rewrite_penalty=0.01), RAM(7, 6)])
    return TieredModule(controller, tbptt_steps=tbptt_steps, gradient_clip_val=1.0)


def test_tbptt_with_one_window_equals_full_backpropagation():
    task = Copy(lengths=(2, 4), batch_size=4, train_batches=3)  # sequences of at most 9 steps
    full = _train(_model(None), task, 3)
    windowed = _train(_model(tbptt_steps=9), task, 3)
    for key, value in full.items():
        torch.testing.assert_close(windowed[key], value)


def test_tbptt_with_short_windows_trains_and_differs_from_full_backpropagation():
    task = Copy(lengths=(2, 4), batch_size=4, train_batches=3)
    before = _model(None).state_dict()
    full = _train(_model(None), task, 3)
    windowed = _train(_model(tbptt_steps=2), task, 3)
    moved = [not torch.equal(windowed[k], before[k]) for k in before]
    assert all(moved)  # every parameter received updates
    assert any(not torch.equal(windowed[k], full[k]) for k in full)


@pytest.mark.parametrize(
    "task_class", [Copy, RepeatCopy, AssociativeRecall, PrioritySort, ShortestPath, KeyValueRecall]
)
def test_tasks_are_deterministic_and_splits_differ(task_class):
    task = task_class(batch_size=5, seed=11)
    again = task_class(batch_size=5, seed=11)
    for a, b in zip(task.make_batch("train", 3), again.make_batch("train", 3), strict=True):
        assert torch.equal(a, b)
    train, val = task.make_batch("train", 0), task.make_batch("val", 0)
    assert train.inputs.shape[-1] == task.input_size
    assert not (train.inputs.shape == val.inputs.shape and torch.equal(train.inputs, val.inputs))
    assert train.mask.any(dim=1).all()  # every sequence has scored steps
    test = task.make_batch("test", 0)
    assert test.inputs.shape[1] > train.inputs.shape[1] // 2  # evaluation range is harder


def test_batch_sampler_gives_ranks_disjoint_batches_and_fresh_epochs():
    dataset = TaskBatches(Copy(batch_size=2), "train", 7)
    ranks = [BatchIndexSampler(dataset, fresh_each_epoch=True) for _ in range(2)]
    for rank, sampler in enumerate(ranks):
        sampler.num_replicas, sampler.rank, sampler.num_samples = 2, rank, 3
    first = [list(s) for s in ranks]
    assert first == [[0, 2, 4], [1, 3, 5]]
    for sampler in ranks:
        sampler.set_epoch(1)
    assert [list(s) for s in ranks] == [[7, 9, 11], [8, 10, 12]]
    fixed = BatchIndexSampler(dataset, fresh_each_epoch=False)
    fixed.set_epoch(5)
    assert list(fixed) == list(range(7))


def test_ddp_on_two_cpu_processes_trains_cache_and_ram(tmp_path):
    script = Path(sys.executable).parent / "tiered"
    result = subprocess.run(
        [str(script), "fit", "--config", str(STACK), *SMALL_COPY,
         "--data.init_args.train_batches", "4", "--trainer.max_epochs", "1",
         "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    checkpoints = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["epoch=0-step=2.ckpt", "last.ckpt"]
    for checkpoint in checkpoints:  # both written once, by rank 0, whole
        saved = torch.load(checkpoint, weights_only=False)
        assert saved["global_step"] == 2  # 4 batches shared by 2 ranks


def test_evaluation_sampler_pads_so_every_rank_gets_a_batch():
    dataset = TaskBatches(Copy(batch_size=2), "val", 3)
    ranks = [BatchIndexSampler(dataset, fresh_each_epoch=False) for _ in range(2)]
    for rank, sampler in enumerate(ranks):
        sampler.num_replicas, sampler.rank, sampler.num_samples = 2, rank, 2
    assert [list(s) for s in ranks] == [[0, 2], [1, 0]]


@pytest.mark.parametrize("tbptt_steps", [None, 3])
def test_schedulers_step_per_optimizer_step_and_plateau_waits_for_val_loss(tbptt_steps):
    from functools import partial

    task = Copy(lengths=(2, 3), batch_size=2, train_batches=4, val_batches=1)
    controller = LSTMController(9, 8, Register(6), [Cache(3, 4)])
    step = TieredModule(
        controller,
        optimizer=partial(torch.optim.SGD, lr=1.0),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        tbptt_steps=tbptt_steps,
    )
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(step, task)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.5**trainer.global_step)
    plateau = TieredModule(
        LSTMController(9, 8, Register(6), [Cache(3, 4)]),
        scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0),
        tbptt_steps=tbptt_steps,
    )
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(plateau, task)  # fmt: skip


def test_key_value_lookup_reads_a_store_in_forked_dataloader_workers(tmp_path):
    import numpy as np

    from tiered.storage import KVStore
    from tiered.tasks import KeyValueLookup

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((50, 6)).astype(np.float32)
    values = np.sign(rng.standard_normal((50, 3))).astype(np.float32)
    KVStore.create(tmp_path / "kv", 6, 3).append(keys, values)
    task = KeyValueLookup(str(tmp_path / "kv"), queries=4, batch_size=5, train_batches=6,
                          num_workers=2)  # fmt: skip
    single = task.make_batch("train", 2)  # opens the store in this process before forking
    loader = task.train_dataloader()
    batches = list(loader)
    assert len(batches) == 6
    assert torch.equal(batches[2].inputs, single.inputs)
    for batch in batches:  # every input is a stored key and every target its value's bits
        match = (batch.inputs.reshape(-1, 1, 6) == torch.from_numpy(keys)).all(-1)
        rows = match.float().argmax(-1)
        assert match.any(-1).all()
        expected = torch.from_numpy(values[rows.numpy()] > 0).float()
        assert torch.equal(batch.targets.reshape(-1, 3), expected)


def _padded_setup():
    """Copy sequences of lengths 5, 1 and 3 (11, 3 and 7 steps) padded to 11 steps, and a
    float64 module whose Register and Cache both carry a rewrite penalty."""
    torch.manual_seed(0)
    task = Copy(batch_size=3, lengths=(1, 5))
    rng = np.random.default_rng(0)
    batch = pad_examples([copy_example(rng, task.bits, n) for n in (5, 1, 3)], tokens=False)
    batch = batch._replace(inputs=batch.inputs.double(), targets=batch.targets.double())
    controller = LSTMController(
        input_size=task.input_size, output_size=task.output_size,
        register=Register(hidden_size=7, rewrite_penalty=0.5),
        tiers=[Cache(slots=3, width=5, rewrite_penalty=2.0)],
    )  # fmt: skip
    return batch, TieredModule(controller).double()


def test_the_rewrite_penalty_is_averaged_over_real_steps_only():
    batch, module = _padded_setup()
    assert batch.steps.sum(1).tolist() == [11, 3, 7] and batch.steps.shape[1] == 11
    out = module.controller(batch.inputs)
    real = batch.steps.double()
    task = torch.nn.functional.binary_cross_entropy_with_logits(
        out.output[batch.mask], batch.targets[batch.mask]
    )
    penalties = [(aux.penalty * real).sum() / real.sum() for aux in out.aux.values()]
    padded = [aux.penalty[~batch.steps].abs().sum() for aux in out.aux.values()]
    assert all(p > 0 for p in padded)  # padding steps do rewrite: they must not count
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached
        loss = module._step(batch, "val")
    torch.testing.assert_close(loss, task + sum(penalties))


def test_truncated_bptt_logs_the_same_real_step_penalty_as_one_pass():
    # With a learning rate of 0 the weights stay put, so the windows of _tbptt_step, with
    # the state carried between them, see what one pass over the padded batch sees.
    batch, module = _padded_setup()
    module.tbptt_steps, module.automatic_optimization = 4, False
    module.optimizer_factory = lambda params: torch.optim.SGD(params, lr=0.0)
    out = module.controller(batch.inputs)
    real = batch.steps.double()
    expected = {name: (aux.penalty * real).sum() / real.sum() for name, aux in out.aux.items()}

    class OneBatch(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([batch], batch_size=None)

    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(module, OneBatch())
    for name, value in expected.items():
        logged = trainer.callback_metrics[f"train/penalty/{name}"]
        torch.testing.assert_close(logged.double(), value.detach(), rtol=1e-5, atol=1e-7)


def test_truncated_windows_share_out_the_whole_batch_penalty():
    batch, module = _padded_setup()
    out = module.controller(batch.inputs)
    real = batch.steps.double()
    whole = sum((aux.penalty * real).sum() / real.sum() for aux in out.aux.values())
    state, shares = None, []
    for start in range(0, 11, 4):  # windows of 4, 4 and 3 steps, as tbptt_steps=4 cuts
        window = type(batch)(*(t[:, start : start + 4] for t in batch))
        window_out = module.controller(window.inputs, state)
        state = window_out.state
        _, _, sums = module._losses(window_out, window)
        shares.append(sum(sums.values()) / batch.steps.sum())
    torch.testing.assert_close(sum(shares), whole)


FIELDS = ("rewrite", "write_mass", "wrote", "read_entropy", "slots_used")


def _usage_stack(tmp_path: Path, input_size: int, output_size: int) -> LSTMController:
    """Every kind of tier: Register, Cache, dense and sparse RAM, a 40-row ROM, a Disk."""
    from tiered.storage import KVStore

    rng = np.random.default_rng(0)
    KVStore.create(tmp_path / "rom", 5, 3).append(
        rng.standard_normal((40, 5)).astype(np.float32),
        rng.standard_normal((40, 3)).astype(np.float32),
    )
    tiers = [
        Cache(5, 4),
        RAM(7, 4, read_heads=2, sparse=False),
        RAM(1100, 4, read_heads=2, k=3, name="sparse", recall_every=2),  # exact index
        ROM(str(tmp_path / "rom"), k=3),
        Disk(str(tmp_path / "disk"), 4, 3, k=2, period=2),
    ]
    return LSTMController(input_size, output_size, Register(6), tiers)


def test_training_logs_how_each_tier_is_used_and_no_head_counts(tmp_path):
    torch.manual_seed(0)
    task = Copy(batch_size=3, lengths=(1, 3), train_batches=3, val_batches=1)
    controller = _usage_stack(tmp_path, task.input_size, task.output_size)
    assert controller.tiers[2].sparse
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1)  # fmt: skip
    trainer.fit(TieredModule(controller), task)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    old = [k for k in logged if any(f"/{n}/" in k for n in ("reads", "writes", "slots_in_use"))]
    assert old == []
    # the largest read entropy: log of the slots read over (N dense, K sparse), and capacity
    read_over = {"register": 1, "cache": 5, "ram": 7, "sparse": 3, "rom": 3, "disk": 2}
    capacity = {"register": 6, "cache": 5, "ram": 7, "sparse": 1100, "rom": 40, "disk": 1e9}
    for stage in ("train", "val"):
        for name in read_over:
            for field in FIELDS:
                assert f"{stage}/{field}/{name}" in logged, (stage, field, name)
            assert 0 <= logged[f"{stage}/wrote/{name}"] <= 1
            assert 0 <= logged[f"{stage}/write_mass/{name}"] <= 1  # one write head each
            entropy = logged[f"{stage}/read_entropy/{name}"]
            assert 0 <= entropy <= math.log(read_over[name]) + 1e-6, (stage, name, entropy)
            assert 0 <= logged[f"{stage}/slots_used/{name}"] <= capacity[name]
        rates = {k for k in logged if k.startswith(f"{stage}/cache_hit_rate/")}
        assert rates == {f"{stage}/cache_hit_rate/rom", f"{stage}/cache_hit_rate/disk"}
        assert all(0 <= logged[k] <= 1 for k in rates)
        assert logged[f"{stage}/wrote/register"] == logged[f"{stage}/write_mass/register"] == 1
        assert logged[f"{stage}/read_entropy/register"] == 0
        assert logged[f"{stage}/write_mass/rom"] == 0 and logged[f"{stage}/slots_used/rom"] == 40
        assert logged[f"{stage}/slots_used/sparse"] >= 1
        # only the sparse RAM samples its index's recall; exact search finds every row
        assert {k for k in logged if k.startswith(f"{stage}/recall/")} == {f"{stage}/recall/sparse"}
        assert logged[f"{stage}/recall/sparse"] == 1
    assert 0 < logged["train/wrote/disk"] < 1  # a tick every 2nd step, appends in training
    assert logged["val/wrote/disk"] == 0  # validation reads the Disk without appending
    assert logged["train/cache_hit_rate/rom"] > 0  # 40 rows: later steps find rows held


def test_tier_statistics_are_logged_as_means_over_real_steps(tmp_path, monkeypatch):
    batch, _ = _padded_setup()
    controller = _usage_stack(tmp_path, batch.inputs.shape[-1], batch.targets.shape[-1])
    module = TieredModule(controller).double()
    out = module.controller(batch.inputs)
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(module, "log_dict", lambda values, **kwargs: logged.update(values))
    penalties = {name: torch.zeros(()) for name in out.aux}
    module._log_tiers("val", out.aux, penalties, batch.steps)
    real = batch.steps.double()  # (B, T): 11, 3 and 7 real steps of 11
    assert (real == 0).any()
    for name, aux in out.aux.items():
        for field in FIELDS:
            expected = (getattr(aux, field) * real).sum() / real.sum()
            torch.testing.assert_close(logged[f"val/{field}/{name}"], expected.detach())
    # padding steps do read and write, so a plain mean would differ: they must not count
    for name in ("register", "cache", "sparse"):
        plain = out.aux[name].slots_used.mean()
        assert not torch.isclose(logged[f"val/slots_used/{name}"], plain), name
    for name in ("rom", "disk"):
        aux = out.aux[name]
        rate = (aux.cache_hits * real).sum() / (aux.value_reads * real).sum()
        torch.testing.assert_close(logged[f"val/cache_hit_rate/{name}"], rate)
    assert not any("cache_hit_rate" in k and k.split("/")[-1] not in ("rom", "disk")
                   for k in logged)  # fmt: skip
