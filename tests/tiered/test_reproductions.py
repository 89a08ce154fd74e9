"""The reproduction scripts on tiny trained runs (the real fit, checkpoint and evaluation)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from tiered.cli import make_cli
from tiered.sweeps.runner import write_status

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
EXPERIMENTS = BENCHMARKS.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_run(run: Path) -> None:
    """Three steps of copy_ntm.yaml with a 9-slot dense RAM, checkpointed like a sweep run."""
    ram = ("{class_path: tiered.tiers.RAM, init_args: {slots: 9, width: 5, read_heads: 1, "
           "sparse: false}}")  # fmt: skip
    make_cli([
        "fit", "--config", str(EXPERIMENTS / "tasks" / "copy_ntm.yaml"),
        "--config", str(EXPERIMENTS / "stacks" / "dnc_128.yaml"),
        "--model.init_args.controller.init_args.register.init_args.hidden_size", "7",
        "--model.init_args.controller.init_args.tiers", f"[{ram}]",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--data.init_args.batch_size", "2", "--data.init_args.val_batches", "1",
        "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(run / "checkpoints"),
        "--trainer.callbacks.save_last", "true",
    ])  # fmt: skip
    write_status(run, {"state": "finished"})


def test_copy_is_scored_at_each_length_from_a_sweeps_finished_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports machine.py
    sweep = tmp_path / "sweep"
    _tiny_run(sweep / "config=dnc,seed=0")
    _tiny_run(sweep / "config=dnc,seed=1")
    (sweep / "config=dnc_fixed,seed=0").mkdir(parents=True)
    write_status(sweep / "config=dnc_fixed,seed=0", {"state": "running"})  # not counted
    script = _load("reproduce_copy")
    out = tmp_path / "out"
    assert (
        script.main([str(sweep), "--lengths", "2", "5", "--sequences", "3", "--out", str(out)]) == 0
    )
    with open(out / "copy.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["seed"]) for r in rows] == [("dnc", "0"), ("dnc", "1")]
    for r in rows:
        assert 0 <= float(r["L2"]) <= 16 and 0 <= float(r["L5"]) <= 40  # at most 8 L bits
    text = (out / "copy.md").read_text()
    assert "| dnc | 2 |" in text and "NTM (Graves et al. 2014" in text
    assert script.main([str(tmp_path / "out"), "--out", str(out)]) == 2  # no finished run
