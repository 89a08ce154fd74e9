"""Sweeps: grid expansion and naming, failures, resume after Ctrl-C, reports, Ray."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tiered.cli import make_cli
from tiered.sweeps import SweepError, load_sweep
from tiered.sweeps.cli import main as sweep_main
from tiered.sweeps.runner import read_status

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
STACKS = EXPERIMENTS / "stacks"
TINY = [
    "--data", "tiered.tasks.Copy",
    "--data.init_args.lengths", "[1, 3]",
    "--data.init_args.batch_size", "4",
    "--data.init_args.train_batches", "4",
    "--data.init_args.val_batches", "1",
    "--trainer.max_steps", "4",
    "--trainer.val_check_interval", "2",
    "--trainer.check_val_every_n_epoch", "null",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def write_sweep(tmp_path: Path, **content) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_grid_expands_into_named_runs_with_configs_overrides_and_seeds(tmp_path):
    path = write_sweep(
        tmp_path,
        base=[str(STACKS / "ram.yaml")],
        grid={
            "config": [str(STACKS / "register.yaml"), str(STACKS / "cache.yaml")],
            "model.init_args.gradient_clip_val": [1.0, 0.5],
        },
        seeds=[0, 7],
        metric={"name": "val/bit_errors", "mode": "min"},
        args=["--trainer.max_steps", "5"],
    )
    spec = load_sweep(path)
    runs = spec.runs()
    assert len(runs) == 8
    names = [run.name for run in runs]
    assert names[0] == "config=register,gradient_clip_val=1,seed=0"
    assert "config=cache,gradient_clip_val=0.5,seed=7" in names
    assert len(set(names)) == 8 and len({run.variant for run in runs}) == 4
    run = next(r for r in runs if r.name == "config=cache,gradient_clip_val=0.5,seed=7")
    args = list(run.args)
    assert args[:4] == [
        "--config",
        str(STACKS / "ram.yaml"),
        "--config",
        str(STACKS / "cache.yaml"),
    ]
    assert args[args.index("--model.init_args.gradient_clip_val") + 1] == "0.5"
    assert args[args.index("--seed_everything") + 1] == "7"
    assert args[args.index("--trainer.max_steps") + 1] == "5"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"grid": {}, "metric": {"name": "m"}, "sedes": [1]}, "unknown keys \\['sedes'\\]"),
        ({"grid": {"a": 1}, "metric": {"name": "m"}}, "grid.a must be a non-empty list"),
        ({"grid": {}, "metric": {"name": "m"}, "seeds": [1, 1]}, "seeds must be distinct"),
        ({"grid": {}}, "metric must be"),
        ({"grid": {}, "metric": {"name": "m", "mode": "up"}}, "metric.mode must be 'min' or 'max'"),
        (
            {"base": ["nope.yaml"], "metric": {"name": "m"}},
            "base names 'nope.yaml', which is not a file",
        ),
    ],
)
def test_bad_sweep_files_name_the_field(tmp_path, content, message):
    path = write_sweep(tmp_path, **content)
    with pytest.raises(SweepError, match=f"^sweep {path}: .*{message}"):
        load_sweep(path)


def test_a_sweep_file_with_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("grid:\n  a: [1, 2\nseeds: [0]\n")
    with pytest.raises(SweepError, match=f"^sweep {path}: YAML syntax error at line 3, column"):
        load_sweep(path)
    result = subprocess.run(
        [sys.executable, "-m", "tiered.cli", "sweep", "run", str(path), "--dry-run"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: sweep {path}: YAML syntax error at line 3")


def test_local_sweep_records_failures_goes_on_reports_and_skips_finished_runs(tmp_path, capsys):
    path = write_sweep(
        tmp_path,
        base=[str(STACKS / "register.yaml")],
        grid={"model.init_args.gradient_clip_val": [1.0, -1.0]},  # -1 fails validation
        seeds=[0, 1],
        metric={"name": "val/task_loss", "mode": "min"},
        args=TINY,
    )
    out = tmp_path / "out"
    assert sweep_main(["run", str(path), "--out", str(out), "--workers", "2"]) == 1
    states = {p.name: read_status(p)["state"] for p in out.iterdir() if p.is_dir()}
    assert states == {
        "gradient_clip_val=1,seed=0": "finished",
        "gradient_clip_val=1,seed=1": "finished",
        "gradient_clip_val=-1,seed=0": "failed",
        "gradient_clip_val=-1,seed=1": "failed",
    }
    failed = read_status(out / "gradient_clip_val=-1,seed=0")
    assert "gradient_clip_val must be a finite number >= 0, got -1.0" in failed["error"]
    finished = read_status(out / "gradient_clip_val=1,seed=0")
    assert isinstance(finished["metric"], float)
    report = (out / "report.md").read_text()
    assert "| gradient_clip_val=1 |" in report and "2 finished, 2 failed" in report
    assert (out / "curves.png").stat().st_size > 0 and (out / "final.png").stat().st_size > 0
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("variant,mean,std,finished,failed")
    mtime = (out / "gradient_clip_val=1,seed=0" / "status.json").stat().st_mtime
    capsys.readouterr()
    sweep_main(["run", str(path), "--out", str(out), "--workers", "2"])
    assert "2 already finished, 2 to run" in capsys.readouterr().out
    assert (out / "gradient_clip_val=1,seed=0" / "status.json").stat().st_mtime == mtime
    assert sweep_main(["run", str(path), "--out", str(out), "--dry-run"]) == 0


def test_a_sweep_stopped_by_ctrl_c_resumes_unfinished_runs_from_their_checkpoints(tmp_path):
    slow = [*TINY]
    slow[slow.index("--trainer.max_steps") + 1] = "400"
    slow[slow.index("--data.init_args.train_batches") + 1] = "400"
    slow[slow.index("--trainer.val_check_interval") + 1] = "10"
    path = write_sweep(
        tmp_path,
        base=[str(STACKS / "cache_ram.yaml")],
        grid={},
        seeds=[3],
        metric={"name": "val/task_loss", "mode": "min"},
        args=slow,
    )
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "tiered"
    sweep = subprocess.Popen(
        [str(script), "sweep", "run", str(path), "--out", str(out), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    checkpoint = out / "base,seed=3" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint was written in time"
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, output
    status = read_status(out / "base,seed=3")
    assert status["state"] == "interrupted" and checkpoint.exists()
    # resume: the run continues from last.ckpt and finishes
    assert sweep_main(["run", str(path), "--out", str(out), "--workers", "1"]) == 0
    status = read_status(out / "base,seed=3")
    assert status["state"] == "finished" and status["resumed"] is True
    assert "Restoring states from the checkpoint" in (out / "base,seed=3" / "log.txt").read_text()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_backend_runs_a_sweep_on_a_local_ray_instance(tmp_path):
    path = write_sweep(
        tmp_path,
        base=[str(STACKS / "register.yaml")],
        grid={},
        seeds=[0, 1],
        metric={"name": "val/task_loss", "mode": "min"},
        args=TINY,
    )
    out = tmp_path / "out"
    code = sweep_main(["run", str(path), "--out", str(out), "--backend", "ray", "--num-cpus", "2"])
    assert code == 0
    runs = json.loads((out / "runs.json").read_text())
    assert [r["name"] for r in runs] == ["base,seed=0", "base,seed=1"]
    assert all(read_status(out / r["name"])["state"] == "finished" for r in runs)


SWEEPS = sorted((EXPERIMENTS / "sweeps").glob("*.yaml"))


def test_every_yaml_under_sweeps_is_a_sweep_or_one_of_its_values():
    used = set(SWEEPS)
    for sweep in SWEEPS:
        used |= {Path(v) for v in load_sweep(sweep).grid.get("config", ())}
    assert set((EXPERIMENTS / "sweeps").rglob("*.yaml")) <= used
    assert len(SWEEPS) >= 3


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_expand_and_every_variant_instantiates(sweep, lookup_store_in_cwd):
    runs = load_sweep(sweep).runs()
    first_of_each = {run.variant: run for run in reversed(runs)}
    assert len(runs) == len(first_of_each) * 3  # three seeds
    for run in first_of_each.values():
        cli = make_cli([*run.args, "--trainer.logger", "false"], run=False)
        assert cli.model.controller.input_size == cli.datamodule.input_size


def test_report_ranks_nan_metrics_and_unfinished_variants_last():
    from tiered.sweeps.report import summarize

    records = [
        {"variant": "a", "state": "finished", "metric": float("nan"), "wall_s": None},
        {"variant": "a", "state": "finished", "metric": 3.0, "wall_s": None},
        {"variant": "b", "state": "failed", "metric": None, "wall_s": None},
        {"variant": "c", "state": "finished", "metric": 0.5, "wall_s": None},
    ]
    assert [r["variant"] for r in summarize(records, "min")] == ["c", "a", "b"]
    assert [r["variant"] for r in summarize(records, "max")] == ["a", "c", "b"]
    assert summarize(records, "min")[1]["not_finite"] == 1


def test_a_folder_made_by_another_sweep_is_not_reused(tmp_path, capsys):
    content = dict(base=[str(STACKS / "register.yaml")], grid={}, seeds=[0],
                   metric={"name": "val/task_loss", "mode": "min"})  # fmt: skip
    path = write_sweep(tmp_path, **content, args=["--trainer.max_steps", "5"])
    run_dir = tmp_path / "out" / "base,seed=0"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "finished", "args": ["--other"]}))
    assert sweep_main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "was made with other arguments" in capsys.readouterr().err


def test_a_training_that_outlives_a_killed_sweep_is_not_started_twice(tmp_path):
    # SIGKILL to `tiered sweep run` alone leaves its `tiered fit` child training (it has a
    # session of its own); the run folder's lock, shared with the child, keeps a second
    # sweep from starting the same run beside it until that training ends.
    slow = [*TINY]
    slow[slow.index("--trainer.max_steps") + 1] = "300"
    slow[slow.index("--data.init_args.train_batches") + 1] = "300"
    path = write_sweep(tmp_path, base=[str(STACKS / "register.yaml")], grid={}, seeds=[0],
                       metric={"name": "val/task_loss", "mode": "min"}, args=slow)  # fmt: skip
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "tiered"
    sweep = subprocess.Popen(
        [str(script), "sweep", "run", str(path), "--out", str(out), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run_dir = out / "base,seed=0"
    deadline = time.time() + 240
    while time.time() < deadline and not list(run_dir.glob("logs/*/hparams.yaml")):
        time.sleep(0.2)  # the training child has started
    sweep.kill()
    sweep.wait()
    child_pid = read_status(run_dir)["state"] == "running" and _fit_pid(run_dir)
    assert child_pid, "the training child should still be running"
    assert sweep_main(["run", str(path), "--out", str(out), "--workers", "1"]) != 0
    assert (run_dir / "log.txt").read_text().count("=== attempt") == 1  # not started again
    os.kill(child_pid, signal.SIGTERM)
    deadline = time.time() + 120
    while time.time() < deadline and _alive(child_pid):
        time.sleep(0.2)
    assert sweep_main(["run", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert read_status(run_dir)["state"] == "finished"


def _fit_pid(run_dir: Path) -> int | None:
    """The process id of the `tiered fit` training in ``run_dir``, found in /proc."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fit" in cmdline and str(run_dir).encode() in cmdline:
                return int(proc.name)
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
