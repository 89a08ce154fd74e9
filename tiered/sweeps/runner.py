"""Run a sweep: every run in its own process, locally or on a Ray cluster, resumable.

Each run gets a folder ``OUT/<run name>/`` with ``status.json`` (state, metric, error),
``log.txt`` (the run's output), ``logs/version_*/`` (CSV metrics and the resolved
config, one version per attempt) and ``checkpoints/last.ckpt``. Running the same sweep
again skips finished runs and resumes unfinished ones from ``last.ckpt``. A failing run
has its error recorded and the others go on. Ctrl-C stops the runs in flight (their last
checkpoints stay) and marks them interrupted.

Nothing heavy is imported at module level (``tiered sweep run --dry-run`` imports this
module): the store lock (numpy, zarr) and Ray are imported where a run needs them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered.sweeps.spec import Run, SweepSpec

if TYPE_CHECKING:
    from tiered.storage import WriterLock

_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()  # set by stop_children: runs ending now were interrupted


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status.json, or ``{"state": "pending"}`` when there is none."""
    path = run_dir / "status.json"
    if not path.is_file():
        return {"state": "pending"}
    return json.loads(path.read_text())


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Write status.json atomically (a reader never sees half a file)."""
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=2))
    os.replace(tmp, run_dir / "status.json")


def metric_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of ``metric`` over all attempts' metrics.csv, later attempts winning."""
    points: dict[int, float] = {}
    versions = sorted(
        (run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[-1])
    )
    for version in versions:
        path = version / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                value = row.get(metric)
                if value not in (None, ""):
                    points[int(row["step"])] = float(value)
    return sorted(points.items())


def fit_command(run: Run, run_dir: Path) -> list[str]:
    """The ``tiered fit`` command line of ``run``, resuming from last.ckpt if there is one."""
    command = [sys.executable, "-m", "tiered.cli", "fit", *run.args]
    command += [
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run_dir),
        "--trainer.logger.name", "logs",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(run_dir / "checkpoints"),
        # Lightning (2.6) writes last.ckpt at a validation only when a top-k checkpoint was
        # saved there, so keep one (the newest, no metric monitored): with save_top_k 0 a run
        # wrote last.ckpt only when it finished, and an interrupted run restarted from step 0.
        "--trainer.callbacks.save_last", "true",
        "--trainer.callbacks.save_top_k", "1",
    ]  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        command += ["--ckpt_path", str(last)]
    return command


def run_one(run: Run, out_dir: str, metric: str, threads: int = 1) -> dict[str, Any]:
    """Run or resume ``run`` in a child process; returns its final status.

    Safe to call from a thread or a Ray worker: all it shares is the run's folder.
    """
    from tiered.storage import StoreLockedError, WriterLock

    run_dir = Path(out_dir) / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    status = read_status(run_dir)
    if status.get("state") == "finished":
        return status
    if _stopping.is_set():  # Ctrl-C arrived before this run started
        return {"state": "interrupted", "error": "not started: the sweep was stopped"}
    # One training per run folder: the lock is shared with the child, so it holds while
    # a training outlives a killed sweep process (the child has a session of its own).
    try:
        lock = WriterLock.acquire(str(run_dir / "run"))
    except StoreLockedError as error:
        busy = f"run {run.name!r} is still being trained: {error}"
        return {"state": "interrupted", "error": f"not started: {busy}; wait for it or stop it"}
    try:
        status = read_status(run_dir)  # again: another sweep may have finished it meanwhile
        if status.get("state") == "finished":
            return status
        return _run_locked(run, run_dir, status, metric, threads, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(
    run: Run, run_dir: Path, status: dict, metric: str, threads: int, lock: WriterLock | None
) -> dict[str, Any]:
    """``run_one`` once the run folder's lock is held: train, then write the status."""
    attempts = int(status.get("attempts", 0)) + 1
    command = fit_command(run, run_dir)
    resumed = "--ckpt_path" in command
    started = time.time()
    write_status(run_dir, {"state": "running", "attempts": attempts, "resumed": resumed,
                           "args": list(run.args), "extra_args": list(run.extra_args),
                           "command": command, "started": started})  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(run_dir / "log.txt", "a") as log:
        log.write(f"\n=== attempt {attempts}: {' '.join(command)}\n")
        log.flush()
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            pass_fds=() if lock is None or lock.file is None else (lock.file.fileno(),),
        )  # fmt: skip
        with _children_lock:
            _children.add(child)
        if _stopping.is_set():  # stopped between the check above and the start
            os.killpg(child.pid, signal.SIGTERM)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # a Ray task cancelled: stop the training process too
            os.killpg(child.pid, signal.SIGTERM)
            code = child.wait()
            _stopping.set()
        finally:
            with _children_lock:
                _children.discard(child)
    curve = metric_curve(run_dir, metric)
    status = {"attempts": attempts, "resumed": resumed, "args": list(run.args),
              "extra_args": list(run.extra_args), "command": command, "returncode": code,
              "started": started, "finished": time.time()}  # fmt: skip
    # Stopped runs first: Lightning turns SIGTERM into a clean exit with code 0.
    if _stopping.is_set() or code in (-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL):
        status.update(state="interrupted", error=f"stopped (exit code {code})")
    elif code == 0:
        status.update(state="finished", metric=curve[-1][1] if curve else None)
    else:
        tail = (run_dir / "log.txt").read_text()[-4000:]
        status.update(state="failed", error=_last_error(tail))
    write_status(run_dir, status)
    return status


def _last_error(log_tail: str) -> str:
    """The most telling line of a failed run's log: the last exception or error line."""
    lines = [line.strip(" -") for line in log_tail.splitlines() if line.strip()]
    for marker in (" must ", "Error: ", "error: ", "Error", "Exception"):
        for line in reversed(lines):
            if marker in line:
                return line
    return lines[-1] if lines else "failed without output"


def stop_children() -> None:
    """Terminate every run in flight (Ctrl-C); their last checkpoints stay on disk."""
    _stopping.set()
    with _children_lock:
        children = list(_children)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)


def run_local(
    spec: SweepSpec, runs: list[Run], out_dir: Path, workers: int, threads: int | None = None
) -> list[dict]:
    """Run ``runs`` in ``workers`` parallel child processes, each with ``threads`` torch and
    OpenMP threads (default: the cores shared out among the workers)."""
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    results = []
    _stopping.clear()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {
            pool.submit(run_one, run, str(out_dir), spec.metric, threads): run for run in runs
        }
        for future in as_completed(futures):
            status = future.result()
            results.append(status)
            print(
                f"[{futures[future].name}] {status['state']} {_metric_text(spec, status)}",
                flush=True,
            )
    except KeyboardInterrupt:
        print(
            "sweep: interrupted; stopping the runs in flight (their checkpoints stay)", flush=True
        )
        stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def run_ray(
    spec: SweepSpec, runs: list[Run], out_dir: Path, address: str | None, num_cpus: int | None
) -> list[dict]:
    """Run ``runs`` as Ray tasks (one CPU each) on the cluster at ``address``, or on a local
    Ray instance started here with ``num_cpus`` CPUs. The output folder must be on storage
    every node can reach."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_one)
    pending = {remote.remote(run, str(out_dir), spec.metric, 1): run for run in runs}
    results = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                run = pending.pop(ref)
                try:
                    status = ray.get(ref)
                except Exception as error:  # a worker lost: record it, go on
                    status = {"state": "failed", "error": f"ray: {error}", "args": list(run.args)}
                    (out_dir / run.name).mkdir(parents=True, exist_ok=True)
                    write_status(out_dir / run.name, status)
                results.append(status)
                print(f"[{run.name}] {status['state']} {_metric_text(spec, status)}", flush=True)
    except KeyboardInterrupt:
        # Non-forced cancel raises KeyboardInterrupt in the task, whose run_one then
        # stops its training process; force would kill the worker and orphan it.
        for ref in pending:
            ray.cancel(ref, force=False)
        raise
    finally:
        if started_here:
            ray.shutdown()
    return results


def _metric_text(spec: SweepSpec, status: dict) -> str:
    if status.get("state") == "finished":
        return f"{spec.metric}={status.get('metric')}"
    return status.get("error", "")
