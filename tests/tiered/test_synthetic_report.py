"""experiments/benchmarks/synthetic_report.py on real tiny runs of the shipped configs."""

from __future__ import annotations

import csv
from pathlib import Path

from tiered.cli import make_cli
from tiered.sweeps.runner import write_status

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
EXPERIMENTS = BENCHMARKS.parent


def _run(run: Path, variant: str) -> None:
    """A few batches of copy_curriculum.yaml with a sweep variant, logged like a sweep run."""
    make_cli([
        "fit", "--config", str(EXPERIMENTS / "tasks" / "copy_curriculum.yaml"),
        "--config", str(EXPERIMENTS / "stacks" / "register.yaml"),
        "--config", str(EXPERIMENTS / "sweeps" / "synthetic" / f"{variant}.yaml"),
        "--model.init_args.controller.init_args.register.init_args.hidden_size", "6",
        "--model.init_args.synthetic_check_every", "2",
        "--data.init_args.train_batches", "6", "--data.init_args.batch_size", "3",
        "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run), "--trainer.logger.name", "logs",
    ])  # fmt: skip
    task = str(EXPERIMENTS / "tasks" / "copy_curriculum.yaml")
    write_status(run, {"state": "finished", "started": 10.0, "finished": 12.5,
                       "args": ["--config", task]})  # fmt: skip


def test_the_report_reads_the_curriculum_and_the_cosine_of_each_run(tmp_path, benchmark_script):
    script = benchmark_script("synthetic_report")
    sweep = tmp_path / "sweep"
    _run(sweep / "config=synthetic_2,seed=0", "synthetic_2")
    _run(sweep / "config=full,seed=0", "full")
    out = tmp_path / "out"
    assert script.main([str(sweep), "--out", str(out)]) == 0
    with open(out / "synthetic_copy.csv") as handle:
        rows = {r["kind"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"full", "synthetic"} and rows["synthetic"]["window"] == "2"
    assert 0 <= int(rows["full"]["solved"]) <= 3  # three validations: at most three raises
    assert -1 <= float(rows["synthetic"]["cosine"]) <= 1 and rows["full"]["cosine"] == ""
    assert float(rows["full"]["wall_s"]) == 2.5
    # the gradient model's settings, read from the config Lightning saved for the run
    assert rows["synthetic"]["task"] == rows["full"]["task"] == "copy_curriculum"
    assert float(rows["synthetic"]["sg_lr"]) == 1e-4 and rows["synthetic"]["sg_hidden"] == "0"
    assert rows["full"]["sg_lr"] == ""
    text = (out / "synthetic_copy.md").read_text()
    assert "# Synthetic gradients: the longest copy length solved" in text
    assert "| 2 | synthetic gradients | linear, lr 0.0001, scale 1 |" in text
    assert "| - | full BPTT |  |" in text
    assert (out / "synthetic_copy.png").stat().st_size > 0
    assert script.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_solved_length_is_the_last_range_passed(benchmark_script):
    script = benchmark_script("synthetic_report")
    assert script.solved_length([]) == 0
    assert script.solved_length([2, 2, 2]) == 0  # never passed the first range
    assert script.solved_length([2, 3, 3, 4, 5, 5]) == 4  # 5 is being learnt
    assert script.solved_length([58, 59, 60], last_errors=0.1) == 60  # passed at the cap
    assert script.solved_length([58, 59, 60], last_errors=0.9) == 59
    assert script.variant_parts("config=synthetic_8") == ("synthetic", 8)
    assert script.variant_parts("config=full") == ("full", None)
    assert script.variant_parts("config=synthetic_2_lr1e-3_s0.5") == ("synthetic", 2)
