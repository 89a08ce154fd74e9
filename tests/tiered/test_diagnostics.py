"""Diagnostics: traces of reads, writes and spills, the Callback (PNG and TensorBoard), and
``tiered inspect``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from tiered import TieredModule
from tiered.cli import main
from tiered.controllers import LSTMController
from tiered.diagnostics import DRAWN_SLOTS, TierDiagnostics, draw, summary, trace
from tiered.tasks import AssociativeRecall
from tiered.tiers import RAM, Cache, Register

ROOT = Path(__file__).resolve().parents[2]
D = torch.float64


def stack(sparse_slots: int = 0) -> LSTMController:
    tiers = [Cache(3, 4, spill_to="ram"), RAM(7, 4, read_heads=2)]
    if sparse_slots:
        tiers.append(RAM(sparse_slots, 4, read_heads=1, k=2, sparse=True, name="big",
                         index="exact"))  # fmt: skip
    return LSTMController(5, 3, Register(6), tiers)


def test_a_trace_records_reads_writes_and_spills_per_tier_and_step():
    torch.manual_seed(0)
    model = stack(sparse_slots=300)
    x = torch.randn(2, 9, 5)
    records = trace(model, x)
    no_spill = stack(sparse_slots=300)
    no_spill.tiers[0].spill_to = None
    no_spill.load_state_dict(model.state_dict())
    plain = trace(no_spill, x)
    assert len(records) == 2 and set(records[0]) == {"register", "cache", "ram", "big"}
    out = model(x)  # the same run in one call: the traced statistics are its statistics
    for b, record in enumerate(records):
        cache, ram, big = record["cache"], record["ram"], record["big"]
        assert cache.reads.shape == (9, 3) and ram.reads.shape == (9, 7)
        # the last step's reads are the final state's read weights, summed over heads
        final = out.state.tiers[1].read_weights[b].sum(dim=0).detach().numpy()
        np.testing.assert_allclose(ram.reads[-1], final, rtol=1e-5, atol=1e-7)
        assert (ram.reads.sum(axis=1) <= 2 + 1e-5).all()  # two heads, each at most 1
        for name in ("cache", "ram"):
            np.testing.assert_allclose(
                record[name].stats["write_mass"], out.aux[name].write_mass[b].detach().numpy(),
                rtol=1e-5, atol=1e-7,
            )  # fmt: skip
        np.testing.assert_allclose(
            cache.stats["spilled"], out.aux["cache"].spilled[b].detach().numpy(), rtol=1e-5
        )
        assert cache.stats["spilled"][1:].sum() > 0  # the cache overwrote and spilled
        # what the RAM took from the cache shows in its content-written heatmap: a model
        # with the same weights and no spill writes other content into the RAM
        spilling = cache.stats["spilled"] > 1e-3
        assert spilling.any()
        plain_ram = plain[b]["ram"].writes
        assert not np.allclose(ram.writes[spilling], plain_ram[spilling], atol=1e-6)
        np.testing.assert_allclose(ram.writes[0], plain_ram[0], rtol=1e-5)  # nothing yet
        # a sparse RAM above DRAWN_SLOTS is drawn over the rows it touched
        assert big.reads.shape[1] == len(big.slots) <= DRAWN_SLOTS
        assert ((big.reads > 0) | (big.writes > 0)).any(axis=0).all()  # only touched rows
        final = out.state.tiers[2].read_weights[b].sum().item()
        assert big.reads[-1].sum() == pytest.approx(final, rel=1e-5)
        assert record["register"].reads is None
    text = summary(records[0])
    assert "cache (Cache): write mass/step" in text and "spilled/step" in text
    fig = draw(records[0], "title")
    # three tiers x (two heatmaps + their colour bars), then four line plots
    assert len(fig.axes) == 3 * 4 + 4
    titles = [ax.get_title() for ax in fig.axes]
    assert "big (RAM): content written" in titles
    assert any(t.startswith("occupancy") for t in titles)


def test_a_trace_of_zero_inputs_is_finite_and_leaves_the_model_in_its_mode():
    model = stack()
    model.train()
    records = trace(model, torch.zeros(1, 4, 5))
    assert model.training
    for tr in records[0].values():
        for values in tr.stats.values():
            assert np.isfinite(values).all()


def _task() -> AssociativeRecall:
    return AssociativeRecall(
        items=(2, 3), eval_items=(4, 4), bits=3, item_length=1,
        batch_size=4, train_batches=4, val_batches=1, test_batches=1,
    )  # fmt: skip


def _fit(logger, tmp_path, callback):
    model = TieredModule(stack_for(_task()))
    trainer = L.Trainer(max_steps=4, val_check_interval=2, logger=logger, callbacks=[callback],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, _task())
    return trainer


def stack_for(task) -> LSTMController:
    return LSTMController(task.input_size, task.output_size, Register(6),
                          [Cache(3, 4, spill_to="ram"), RAM(7, 4, read_heads=1)])  # fmt: skip


def test_the_callback_saves_figures_and_summaries_beside_the_csv_logs(tmp_path):
    callback = TierDiagnostics(sequences=2, every_n_validations=1)
    trainer = _fit(CSVLogger(tmp_path, name="logs"), tmp_path, callback)
    folder = Path(trainer.log_dir) / "diagnostics"
    names = sorted(p.name for p in folder.iterdir())
    # validations after steps 2 and 4 (not the sanity check), two sequences each
    assert names == [f"step_{s}_seq{b}.{ext}" for s in (2, 4) for b in (0, 1)
                     for ext in ("png", "txt")]  # fmt: skip
    assert (folder / "step_4_seq0.png").read_bytes()[:4] == b"\x89PNG"
    assert "ram (RAM): write mass/step" in (folder / "step_4_seq0.txt").read_text()


def test_the_callback_draws_into_tensorboard_when_it_is_the_logger(tmp_path):
    # tensorboard is not a dependency (with it installed, `tiered fit` logs to TensorBoard
    # instead of CSV, which the other tests check): this runs where a user installed it.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(TensorBoardLogger(tmp_path, name="tb"), tmp_path, TierDiagnostics(sequences=1))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert "diagnostics/seq0" in events.Tags()["images"]
    assert [e.step for e in events.Images("diagnostics/seq0")] == [2, 4]
    assert not (tmp_path / "tb" / "version_0" / "diagnostics").exists()


def test_the_callback_checks_its_arguments():
    with pytest.raises(ValueError, match="TierDiagnostics: sequences must be a positive integer"):
        TierDiagnostics(sequences=0)


def test_tiered_inspect_draws_a_checkpoint_of_tiered_fit(tmp_path, capsys):
    stack_file = ROOT / "experiments" / "stacks" / "cache_spill_ram.yaml"
    args = ["fit", "--config", str(stack_file), "--data", "AssociativeRecall",
            "--data.init_args.items", "[2, 3]", "--data.init_args.eval_items", "[4, 5]",
            "--data.init_args.item_length", "1", "--data.init_args.batch_size", "3",
            "--data.init_args.train_batches", "2", "--data.init_args.val_batches", "1",
            "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    capsys.readouterr()
    assert main(["inspect", str(checkpoint), "--split", "test", "--sequences", "2",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "test sequence 1" in printed and "cache (Cache): write mass/step" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "summary.txt",
        "test_seq0.png",
        "test_seq1.png",
    ]


def test_tiered_inspect_says_what_is_missing_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(tmp_path / "nothing.ckpt")])
    assert exit_info.value.code == 2
    assert "checkpoint: no such file" in capsys.readouterr().err.splitlines()[-1]
    lonely = tmp_path / "lonely.ckpt"
    lonely.write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["inspect", str(lonely)])
    assert "give the run's config with --config" in capsys.readouterr().err.splitlines()[-1]
