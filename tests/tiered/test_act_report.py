"""experiments/benchmarks/act_report.py on real tiny runs of the shipped ACT variants."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tiered.cli import make_cli
from tiered.sweeps.runner import write_status

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
EXPERIMENTS = BENCHMARKS.parent


def _run(run: Path, variant: str) -> None:
    """Four steps of parity (7 entries) with a shipped ACT variant, logged like a sweep run."""
    make_cli([
        "fit", "--config", str(EXPERIMENTS / "tasks" / "parity.yaml"),
        "--config", str(EXPERIMENTS / "stacks" / "act.yaml"),
        "--config", str(EXPERIMENTS / "sweeps" / "act" / f"{variant}.yaml"),
        "--model.init_args.controller.init_args.register.init_args.hidden_size", "5",
        "--data.init_args.size", "7", "--data.init_args.batch_size", "6",
        "--data.init_args.val_batches", "1", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run), "--trainer.logger.name", "logs",
    ])  # fmt: skip
    write_status(run, {"state": "finished", "started": 1.0, "finished": 3.0})


def test_the_report_reads_error_ponder_steps_and_tau_of_each_run(tmp_path, benchmark_script):
    script = benchmark_script("act_report")
    sweep = tmp_path / "act_parity"
    later = tmp_path / "act_parity_pondernet"  # a variant swept on its own, tabled beside
    for variant in ("no_ponder", "tau_1e-2", "pondernet"):
        for seed in (0, 1):
            folder = later if variant == "pondernet" else sweep
            _run(folder / f"config={variant},seed={seed}", variant)
    out = tmp_path / "out"
    assert script.main([str(sweep), str(later), "--out", str(out)]) == 0
    with open(out / "act_parity.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["task"] for r in rows} == {"Parity"}
    plain = [r for r in rows if r["variant"] == "no_ponder"]
    pondering = [r for r in rows if r["variant"] == "tau_1e-2"]
    assert all(r["max_steps"] == "1" and float(r["ponder_steps"]) == 1.0 for r in plain)
    assert all(float(r["tau"]) == 1e-2 and r["max_steps"] == "10" for r in pondering)
    assert all(1.0 <= float(r["ponder_steps"]) <= 10.0 for r in pondering)
    ponder_net = [r for r in rows if r["variant"] == "pondernet"]
    assert all(r["halting"] == "PonderNet" and float(r["beta"]) == 0.01 for r in ponder_net)
    assert all(1.0 <= float(r["ponder_steps"]) <= 10.0 for r in ponder_net)
    for row in rows:  # one bit per sequence: the error rate and the exact match add up to 1
        assert float(row["bit_errors"]) + float(row["exact_match"]) == pytest.approx(1.0)
        assert row["step"] == "4" and float(row["wall_s"]) == 2.0
    text = (out / "act_parity.md").read_text()
    assert "# Adaptive Computation Time: Parity of 7 entries" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| no pondering (max_steps 1) |")  # ordered: then by tau
    assert lines[2].startswith("| ACT, tau 0.01 |") and lines[2].endswith("| 2 |")
    assert lines[3].startswith("| PonderNet, beta 0.01, prior 0.2 |")
    assert "`" + str(later) + "`" in text  # both folders named
    assert (out / "act_parity.png").stat().st_size > 0
    assert script.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
