"""The reproduction scripts on tiny trained runs (the real fit, checkpoint and evaluation)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tiered.cli import make_cli
from tiered.sweeps.runner import write_status

BENCHMARKS = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks"
EXPERIMENTS = BENCHMARKS.parent


def _tiny_run(run: Path, task: str = "copy_ntm.yaml") -> None:
    """Three steps of a task file with a 9-slot dense RAM, checkpointed like a sweep run."""
    ram = ("{class_path: tiered.tiers.RAM, init_args: {slots: 9, width: 5, read_heads: 1, "
           "sparse: false}}")  # fmt: skip
    make_cli([
        "fit", "--config", str(EXPERIMENTS / "tasks" / task),
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


def test_copy_is_scored_at_each_length_from_a_sweeps_finished_runs(tmp_path, benchmark_script):
    sweep = tmp_path / "sweep"
    _tiny_run(sweep / "config=dnc,seed=0")
    _tiny_run(sweep / "config=dnc,seed=1")
    (sweep / "config=dnc_fixed,seed=0").mkdir(parents=True)
    write_status(sweep / "config=dnc_fixed,seed=0", {"state": "running"})  # not counted
    script = benchmark_script("reproduce")
    out = tmp_path / "out"
    assert script.main(["copy", str(sweep), "--sequences", "3", "--out", str(out)]) == 0
    with open(out / "copy.csv") as handle:
        rows = list(csv.DictReader(handle))
    settings = [label for label, _ in script.REPRODUCTIONS["copy"].settings]
    assert [(r["variant"], r["seed"], r["setting"]) for r in rows] == [
        ("dnc", str(seed), label) for seed in (0, 1) for label in settings
    ]
    for r in rows:
        length = int(r["setting"].removeprefix("L = "))
        assert float(r["chance"]) == 4 * length  # half of 8 L scored bits
        assert 0 <= float(r["bit_errors"]) <= 8 * length
    text = (out / "copy.md").read_text()
    assert "| dnc | 2 | L = 120 |" in text and "NTM (Graves et al. 2014" in text
    assert script.main(["copy", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_graph_tasks_keep_the_trained_sizes_and_score_answers_and_queries(
    tmp_path, benchmark_script
):
    sweep = tmp_path / "sweep"
    _tiny_run(sweep / "config=dnc,seed=0", task="traversal.yaml")
    script = benchmark_script("reproduce")
    out = tmp_path / "out"
    assert script.main(["traversal", str(sweep), "--sequences", "4", "--out", str(out)]) == 0
    with open(out / "traversal.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for r in rows:
        assert 0 <= float(r["per_query"]) <= float(r["per_answer"]) <= 1
    # A test range of small graphs keeps the node vocabulary of the trained task (16 nodes).
    task = script.build_task(EXPERIMENTS / "tasks" / "traversal.yaml",
                             {"eval_nodes": (5, 5), "eval_hops": (2, 2)}, 4)  # fmt: skip
    assert task.max_nodes == 16 and task.eval_nodes == (5, 5)
    with pytest.raises(ValueError, match="has no test range 'eval_lengths'"):
        script.build_task(EXPERIMENTS / "tasks" / "traversal.yaml", {"eval_lengths": (3, 3)}, 4)


def test_every_reproduction_names_a_shipped_task_file_and_a_sweep(benchmark_script):
    script = benchmark_script("reproduce")
    for name, spec in script.REPRODUCTIONS.items():
        assert (EXPERIMENTS / "tasks" / spec.task_file).is_file()
        assert (EXPERIMENTS / "sweeps" / f"repro_{name}.yaml").is_file()
        for _, ranges in spec.settings:  # every setting builds its task
            script.build_task(EXPERIMENTS / "tasks" / spec.task_file, ranges, 2)


BABI_TRAIN = """1 Mary moved to the bathroom.
2 Where is Mary? \tbathroom\t1
1 John went to the hallway.
2 Where is John? \thallway\t1
"""
BABI_TEST = """1 Mary went to the kitchen.
2 Where is Mary? \tkitchen\t1
3 Where is Mary? \tkitchen\t1
"""


def test_babi_is_scored_per_task_beside_the_published_lstm(tmp_path, benchmark_script):
    data = tmp_path / "data" / "en"
    data.mkdir(parents=True)
    for task in (1, 4):  # two tasks, the same small story files
        (data / f"qa{task}_x_train.txt").write_text(BABI_TRAIN)
        (data / f"qa{task}_x_test.txt").write_text(BABI_TEST)
    run = tmp_path / "sweep" / "config=dnc,seed=0"
    folder = EXPERIMENTS / "babi"
    make_cli([
        "fit", "--config", str(folder / "babi.yaml"), "--config", str(folder / "dnc.yaml"),
        "--data.init_args.path", str(data.parent), "--data.init_args.batch_size", "2",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(run / "checkpoints"),
        "--trainer.callbacks.save_last", "true",
    ])  # fmt: skip
    write_status(run, {"state": "finished"})
    script = benchmark_script("reproduce_babi")
    out = tmp_path / "out"
    argv = [str(tmp_path / "sweep"), "--data", str(data.parent), "--out", str(out)]
    assert script.main(argv) == 0
    with open(out / "babi.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["task"]) for r in rows] == [("dnc", "1"), ("dnc", "4")]
    assert all(float(r["error"]) in (0.0, 0.5, 1.0) for r in rows)  # two questions per task
    text = (out / "babi.md").read_text()
    assert "| 1 | 50 |" in text and "| 4 | 39 |" in text  # Weston et al.'s LSTM: 50% and 61%
    assert "| mean | 44.5 |" in text and "| failed | 2 |" in text
    assert script.summary({1: 0.0, 2: 0.06, 3: 0.05}) == (pytest.approx(0.11 / 3), 1)
