"""``tiered sweep run FILE`` and ``tiered sweep report DIR``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from tiered.sweeps.report import write_report
from tiered.sweeps.runner import read_status, run_local, run_ray
from tiered.sweeps.spec import SweepError, load_sweep


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiered sweep", description="Ablation sweeps.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) every run of a sweep file")
    run.add_argument("file", type=Path, help="the sweep YAML file")
    run.add_argument("--out", type=Path, help="output folder (default: runs/sweeps/<file stem>)")
    run.add_argument("--backend", choices=("local", "ray"), default="local")
    run.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel local runs (one per core)",
    )
    run.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--num-cpus", type=int, help="CPUs of a Ray instance started here")
    run.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    report = commands.add_parser("report", help="tables and plots of a sweep folder")
    report.add_argument("dir", type=Path)
    return parser


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM to the sweep is handled like Ctrl-C: the runs in flight are stopped."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """Entry point of ``tiered sweep``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            print(write_report(args.dir).read_text())
            return 0
        spec = load_sweep(args.file)
    except (SweepError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / "sweeps" / args.file.stem
    runs = spec.runs()
    statuses = {run.name: read_status(out / run.name) for run in runs}  # read once
    if args.dry_run:
        for run in runs:
            state = statuses[run.name].get("state", "pending")
            print(f"{run.name}\t{state}\ttiered fit {' '.join(run.args)}")
        print(f"{len(runs)} runs in {out}")
        return 0
    for run in runs:  # a folder made by another sweep must not be reused silently
        previous = statuses[run.name].get("args")
        if previous is not None and previous != list(run.args):
            print(
                f"error: {out / run.name} was made with other arguments than this sweep gives "
                f"it ({' '.join(previous)}); use another --out or remove the folder",
                file=sys.stderr,
            )
            return 2
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.path, out / "sweep.yaml")
    (out / "runs.json").write_text(
        json.dumps([run.__dict__ for run in runs], indent=2, default=str)
    )
    todo = [run for run in runs if statuses[run.name].get("state") != "finished"]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.backend == "ray":
            results = run_ray(spec, todo, out, args.address, args.num_cpus)
        else:
            results = run_local(spec, todo, out, args.workers)
    except KeyboardInterrupt:
        print(f"sweep: stopped; run the same command again to resume ({out})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    failed = sum(status.get("state") != "finished" for status in results)
    print(
        f"sweep: done; {failed} of {len(todo)} runs did not finish. "
        f"Report: tiered sweep report {out}"
    )
    write_report(out)
    return 1 if failed else 0
