"""experiments/benchmarks/curriculum_report.py on real tiny runs of the shipped curriculum
variants (issue 18's evidence)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tiered.cli import make_cli
from tiered.sweeps.runner import write_status

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
EXPERIMENTS = BENCHMARKS.parent


def _run(run: Path, variant: str, *extra: str) -> None:
    """Six steps of copy_probe.yaml with a shipped variant, logged like a sweep run."""
    make_cli([
        "fit", "--config", str(EXPERIMENTS / "tasks" / "copy_probe.yaml"),
        "--config", str(EXPERIMENTS / "stacks" / "register.yaml"),
        "--config", str(EXPERIMENTS / "sweeps" / "curriculum" / f"{variant}.yaml"),
        "--model.init_args.controller.init_args.register.init_args.hidden_size", "5",
        "--data.init_args.batch_size", "3", "--trainer.max_steps", "6",
        "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run), "--trainer.logger.name", "logs", *extra,
    ])  # fmt: skip
    write_status(run, {"state": "finished", "started": 10.0, "finished": 14.0})


def test_the_report_reads_each_curriculum_and_its_probe(tmp_path, benchmark_script):
    script = benchmark_script("curriculum_report")
    sweep = tmp_path / "curriculum_copy"
    for variant in ("copy_uniform", "copy_threshold", "copy_bandit", "copy_bandit_gradient"):
        _run(sweep / f"config={variant},seed=0", variant)
    out = tmp_path / "out"
    assert script.main([str(sweep), "--out", str(out)]) == 0
    with open(out / "curriculum_copy.csv") as handle:
        rows = {r["curriculum"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"uniform", "threshold", "bandit, prediction gain",
                         "bandit, gradient gain"}  # fmt: skip
    for row in rows.values():  # an untrained model of 5 units: far from the bar at length 20
        assert row["reached"] == "" and int(row["last_step"]) == 6 and row["probes"] == "3"
        assert float(row["final_bit_errors"]) > 1.0 and float(row["wall_s"]) == 4.0
    shares = rows["bandit, gradient gain"]["arm_shares"].split()  # "1..5 0.50 6..10 0.17 ..."
    assert shares[::2] == ["1..5", "6..10", "11..15", "16..20"]  # every level, labelled
    assert math.isclose(sum(map(float, shares[1::2])), 1.0, abs_tol=0.02)
    assert rows["uniform"]["arm_shares"] == ""
    text = (out / "curriculum_copy.md").read_text()
    assert "# Curricula: steps to learn copy to length 20" in text
    assert "| uniform | > 6 (> 6 to > 6); 1 of 1 not reached |" in text
    assert (out / "curriculum_copy.png").stat().st_size > 0
    assert script.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_steps_to_the_bar_count_runs_that_missed_it_as_infinite(benchmark_script):
    script = benchmark_script("curriculum_report")
    rows = [{"reached": 300, "last_step": 300}, {"reached": None, "last_step": 1500},
            {"reached": 500, "last_step": 500}]  # fmt: skip
    assert script._steps_cell(rows) == "500 (300 to > 1500); 1 of 3 not reached"
    rows[1]["reached"] = 200
    assert script._steps_cell(rows) == "300 (200 to 500)"
    assert script.curriculum_of("config=repeat_copy_bandit") == "bandit, prediction gain"
    assert script.curriculum_of("config=copy_bandit_gradient") == "bandit, gradient gain"
    assert script.curriculum_of("config=copy_uniform") == "uniform"
