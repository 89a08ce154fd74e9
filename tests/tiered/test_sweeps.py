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
    # Ctrl-C's SIGINT must reach Python's handler: a shell that started the tests in the
    # background (``make test &``) leaves SIGINT ignored, and the sweep would inherit that.
    sweep = subprocess.Popen(
        [str(script), "sweep", "run", str(path), "--out", str(out), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
    # Wait for the lock, not the process: a killed process's main thread turns zombie while
    # its other threads still hold its files, and with them the lock, for a moment longer.
    assert _lock_frees(run_dir, seconds=120), "the stopped training still holds the lock"
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


def _lock_frees(run_dir: Path, seconds: float) -> bool:
    """Whether the run folder's lock can be taken (and is given back) within ``seconds``."""
    from tiered.storage import StoreLockedError, WriterLock

    deadline = time.time() + seconds
    while True:
        try:
            lock = WriterLock.acquire(str(run_dir / "run"))
        except StoreLockedError:
            if time.time() > deadline:
                return False
            time.sleep(0.2)
            continue
        if lock is not None:
            lock.release()
        return True


def test_command_line_seeds_and_extra_args_reach_every_run_and_are_recorded(tmp_path, capsys):
    path = write_sweep(tmp_path, base=[str(STACKS / "register.yaml")], grid={}, seeds=[0, 1],
                       metric={"name": "val/task_loss", "mode": "min"}, args=TINY)  # fmt: skip
    out = tmp_path / "out"
    extra = ["--", "--trainer.max_steps", "2", "--model.init_args.gradient_clip_val", "0.5"]
    options = ["run", str(path), "--out", str(out), "--seeds", "5"]
    argv = [*options, *extra]
    assert sweep_main([*options, "--dry-run", *extra]) == 0
    *lines, summary = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["base,seed=5"]  # the file's 0, 1 not run
    command = lines[0].split("\t")[2]
    assert "--trainer.max_steps 4" in command  # the file's args, then the overrides after them
    assert command.index("--trainer.max_steps 4") < command.index("--trainer.max_steps 2")
    assert summary.endswith(
        "overrides: --seeds 5 (the file's: 0 1); extra arguments "
        "`-- --trainer.max_steps 2 --model.init_args.gradient_clip_val 0.5`"
    )
    assert not out.exists()  # a dry run writes nothing
    assert sweep_main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["base,seed=5"]
    status = read_status(out / "base,seed=5")
    assert status["state"] == "finished" and status["extra_args"] == extra[1:]
    assert status["command"][status["command"].index("--seed_everything") + 1] == "5"
    resolved = yaml.safe_load((out / "base,seed=5/logs/version_0/config.yaml").read_text())
    assert resolved["trainer"]["max_steps"] == 2 and resolved["seed_everything"] == 5
    assert resolved["model"]["init_args"]["gradient_clip_val"] == 0.5
    recorded = json.loads((out / "overrides.json").read_text())
    assert recorded["seeds"] == [5] and recorded["extra_args"] == extra[1:]
    assert recorded["command"].startswith("tiered sweep run ")
    assert "Command-line overrides: seeds [5]; extra arguments" in (out / "report.md").read_text()
    capsys.readouterr()
    assert sweep_main(argv) == 0  # the same overrides again: resumed, nothing to run
    assert "1 already finished, 0 to run" in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    ("extra", "made", "gives"),
    [
        ([], "`-- --trainer.max_steps 2`", "none"),
        (["--", "--trainer.max_steps", "3"], "`-- --trainer.max_steps 2`",
         "`-- --trainer.max_steps 3`"),
    ],
)  # fmt: skip
def test_a_folder_made_with_other_extra_args_is_not_resumed(
    tmp_path, capsys, dry_run, extra, made, gives
):
    # Its finished runs would be reported beside runs trained with other arguments.
    path = write_sweep(tmp_path, base=[str(STACKS / "register.yaml")], grid={}, seeds=[0, 1],
                       metric={"name": "val/task_loss", "mode": "min"})  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.yaml").write_text(path.read_text())
    (out / "overrides.json").write_text(json.dumps({"extra_args": ["--trainer.max_steps", "2"]}))
    # another seed than the folder's runs: the folder, not only the run, is checked
    assert sweep_main(["run", str(path), "--out", str(out), "--seeds", "7", *dry_run, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"error: extra arguments after --: {out} was made with {made}")
    assert f"this command gives {gives}; give the same to resume it" in captured.err
    assert not (out / "base,seed=7").exists()


def test_a_folder_made_by_the_file_with_other_args_is_not_reused_even_for_new_seeds(
    tmp_path, capsys
):
    path = write_sweep(tmp_path, base=[str(STACKS / "register.yaml")], grid={}, seeds=[0, 1],
                       metric={"name": "val/task_loss", "mode": "min"},
                       args=["--trainer.max_steps", "4"])  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.yaml").write_text(path.read_text())
    (tmp_path / "edited").mkdir()
    changed = write_sweep(tmp_path / "edited", base=[str(STACKS / "register.yaml")], grid={},
                          seeds=[0, 1], metric={"name": "val/loss", "mode": "min"},
                          args=["--trainer.max_steps", "400"])  # fmt: skip
    for dry_run in ([], ["--dry-run"]):
        code = sweep_main(["run", str(changed), "--out", str(out), "--seeds", "7", *dry_run])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == "" and len(captured.err.splitlines()) == 1
        assert f"error: {out} was made by a sweep file with other args than {changed}" in (
            captured.err
        )  # the metric differs too, but decides nothing about training
    assert sorted(p.name for p in out.iterdir()) == ["sweep.yaml"]
    (out / "overrides.json").write_text('{"extra_args": null}')  # unreadable: one line
    assert sweep_main(["run", str(path), "--out", str(out), "--dry-run"]) == 2
    assert "overrides.json: cannot be read" in capsys.readouterr().err


def test_runs_of_other_seeds_are_kept_in_runs_json_and_the_report_lists_every_seed(tmp_path):
    from tiered.sweeps.report import write_report

    path = write_sweep(tmp_path, base=[str(STACKS / "register.yaml")], grid={}, seeds=[0],
                       metric={"name": "val/task_loss", "mode": "min"}, args=TINY)  # fmt: skip
    out = tmp_path / "out"
    for seeds in (["0", "1"], ["5"]):
        assert sweep_main(["run", str(path), "--out", str(out), "--seeds", *seeds]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert [r["name"] for r in runs] == ["base,seed=0", "base,seed=1", "base,seed=5"]
    report = write_report(out).read_text()
    assert "seeds run [0, 1, 5] (the file's: [0])" in report
    assert "| base | " in report and "| 3 | 0 |" in report  # 3 finished, 0 failed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "x"], "error: --seeds: 'x' is not an integer; give distinct integers from "
         "0 to 4294967295"),
        (["--seeds", "-1"], "error: --seeds: -1 is out of range"),
        (["--seeds", "4294967296"], "error: --seeds: 4294967296 is out of range"),
        (["--", "--trainer.max_steps", "3", "--", "--x"], "a second -- is given"),
        (["--", "--trainer.enable_checkpointing", "false"], "the sweep keeps each run's "
         "last.ckpt to resume it"),
        (["--seeds", "2", "2"], "error: --seeds: 2 is given twice"),
        (["--seeds"], "error: tiered sweep run: argument --seeds: expected at least one argument"),
        (["--workers", "two"], "argument --workers: invalid int value: 'two'"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--", "100"], "error: extra argument '100' after --: give options of tiered fit"),
        (["--", "--seed_everything", "3"], "'--seed_everything' after --: the sweep sets it per "
         "run from the seeds; use --seeds"),
        (["--", "--ckpt_path=a.ckpt"], "'--ckpt_path=a.ckpt' after --: the sweep sets it"),
    ],
)  # fmt: skip
def test_bad_overrides_get_one_line_naming_the_argument_and_value(tmp_path, capsys, argv, message):
    path = write_sweep(tmp_path, grid={}, metric={"name": "val/task_loss"})
    for dry_run in ([], ["--dry-run"]):
        code = sweep_main(["run", str(path), "--out", str(tmp_path / "out"), *dry_run, *argv])
        captured = capsys.readouterr()
        assert code == 2 and len(captured.err.splitlines()) == 1, captured.err
        assert message in captured.err
    assert not (tmp_path / "out").exists()


def test_bad_overrides_through_the_tiered_command_are_one_line_without_traceback(tmp_path):
    path = write_sweep(tmp_path, grid={}, metric={"name": "val/task_loss"})
    result = subprocess.run(
        [sys.executable, "-m", "tiered.cli", "sweep", "run", str(path), "--dry-run",
         "--seeds", "0", "-1", "--", "--trainer.max_steps", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --seeds: -1 is out of range; give distinct integers from 0 to 4294967295, "
        "e.g. --seeds 0 1 2"
    ]


def test_the_sweep_dry_run_imports_no_torch_lightning_matplotlib_or_ray(tmp_path):
    heavy = ("torch", "lightning", "matplotlib", "ray", "zarr")
    code = (
        "import sys\n"
        "from tiered.sweeps.cli import main\n"
        f"code = main(['run', {str(EXPERIMENTS / 'sweeps' / 'tier_ablation_copy.yaml')!r}, "
        f"'--dry-run', '--out', {str(tmp_path / 'out')!r}, '--seeds', '0', '--', '--a', '1'])\n"
        f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)  # fmt: skip
    assert result.stdout.splitlines()[-1] == "0 []"


def _records(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"variant": v, "seed": str(i), "state": "finished", "metric": x, "wall_s": None}
        for v, xs in values.items()
        for i, x in enumerate(xs)
    ]


def test_report_judges_no_spread_with_one_seed_per_variant():
    from tiered.sweeps.report import differences, summarize

    rows = summarize(_records({"a": [1.0], "b": [1.0]}), "min")
    assert [r["std"] for r in rows] == [None, None]
    lines = differences(rows, "val/bit_errors", "min")
    assert lines[0] == "Best by mean val/bit_errors (min): a (1, 1 seed: no spread)."
    assert lines[1] == (
        "b against a: no spread can be judged with fewer than 2 seeds per variant "
        "(1 and 1 seeds; difference of the means 0)."
    )
    assert not any("within the spread" in line for line in lines)
    # one side with 2 seeds is not enough either
    rows = summarize(_records({"a": [1.0, 1.0], "b": [3.0]}), "min")
    assert "no spread can be judged" in differences(rows, "m", "min")[1]


def test_report_judges_the_spread_with_two_seeds_or_more():
    from tiered.sweeps.report import differences, summarize

    rows = summarize(_records({"a": [1.0, 1.2], "b": [1.1, 1.3], "c": [5.0, 5.0, 5.0]}), "min")
    lines = differences(rows, "m", "min")
    assert lines[0].startswith("Best by mean m (min): a (1.1 +- 0.14 over 2 seeds).")
    assert lines[1].startswith("b is within the spread of a (difference 0.1, ")
    assert lines[2].startswith("c is worse than a beyond their spread (difference 3.9 > ")


@pytest.mark.parametrize(("mode", "direction"), [("min", "lower"), ("max", "higher")])
def test_final_plot_has_a_title_the_direction_and_points_where_the_spread_is_zero(mode, direction):
    from tiered.sweeps.report import final_figure, summarize

    records = _records({"zero": [0.0, 0.0, 0.0], "one_seed": [2.0], "spread": [1.0, 3.0]})
    rows = summarize(records, mode)
    fig = final_figure(records, rows, "val/bit_errors", mode)
    (ax,) = fig.axes
    title = f"final val/bit_errors per variant ({direction} is better; best on top)"
    assert ax.get_title() == title
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["variant"] for r in rows]
    points = {tuple(p) for c in ax.collections for p in c.get_offsets().tolist()}
    zero_y = [r["variant"] for r in rows].index("zero")
    assert (0.0, zero_y) in points  # a mean of 0 with a spread of 0 still shows as a point
    assert (2.0, [r["variant"] for r in rows].index("one_seed")) in points


def test_threads_per_run_default_to_the_cores_shared_out_and_can_be_given(tmp_path, monkeypatch):
    import os

    from tiered.sweeps import runner

    seen = []
    monkeypatch.setattr(runner, "run_one", lambda run, out, metric, threads: seen.append(threads)
                        or {"state": "finished", "metric": 0.0})  # fmt: skip
    path = write_sweep(tmp_path, grid={}, metric={"name": "val/task_loss"}, seeds=[0, 1])
    spec = load_sweep(path)
    runner.run_local(spec, spec.runs(), tmp_path / "out", workers=2)
    runner.run_local(spec, spec.runs(), tmp_path / "out", workers=2, threads=1)
    assert seen == [max(1, (os.cpu_count() or 1) // 2)] * 2 + [1, 1]
