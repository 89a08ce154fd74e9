"""``tiered sweep run FILE [--seeds S ...] [-- FIT ARGS ...]`` and ``tiered sweep report DIR``.

The output folder records the command line's overrides in ``overrides.json`` (beside
``sweep.yaml``, the file's copy) and every run's ``status.json`` its ``extra_args``. A folder
made with other extra arguments is not resumed: its runs would be mixed with differently
trained ones. Other ``--seeds`` are fine: each seed is a run of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import NoReturn

import yaml

from tiered.sweeps.report import write_report
from tiered.sweeps.runner import read_status, run_local, run_ray
from tiered.sweeps.spec import Run, SweepError, SweepSpec, load_sweep

OVERRIDES = "overrides.json"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``SweepError``), naming the argument and the value."""

    def error(self, message: str) -> NoReturn:
        raise SweepError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tiered sweep", description="Ablation sweeps.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run (or resume) every run of a sweep file",
        usage="tiered sweep run [options] FILE [-- TIERED FIT ARGUMENTS ...]",
        epilog="Arguments after -- are appended to every run's tiered fit command, after the "
        "file's args, e.g. `tiered sweep run FILE --seeds 0 1 -- --trainer.max_steps 100`.",
    )
    run.add_argument("file", type=Path, help="the sweep YAML file")
    run.add_argument(
        "--seeds",
        nargs="+",
        metavar="SEED",
        help="run these seeds instead of the file's (distinct integers >= 0)",
    )
    run.add_argument("--out", type=Path, help="output folder (default: runs/sweeps/<file stem>)")
    run.add_argument("--backend", choices=("local", "ray"), default="local")
    run.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel local runs (one per core)",
    )
    run.add_argument(
        "--threads",
        type=int,
        help="torch/OpenMP threads per local run (default: cores // workers); give 1 when "
        "another sweep shares the machine, since OpenMP threads that outnumber the cores "
        "spin and slow every run many times over",
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


def _split_extra(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``argv`` before the first ``--``, and the arguments after it (None without ``--``)."""
    if "--" not in argv:
        return argv, None
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


def _as_extra(args: list[str] | tuple[str, ...]) -> str:
    return f"`-- {shlex.join(args)}`" if args else "none"


def _recorded_extra_args(path: Path) -> tuple[str, ...]:
    """The extra arguments an ``overrides.json`` records (``SweepError`` if unreadable)."""
    try:
        extra = json.loads(path.read_text()).get("extra_args", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise TypeError(f"extra_args is {extra!r}, not a list of strings")
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise SweepError(
            f"{path}: cannot be read ({error}); remove it or use another --out"
        ) from error
    return tuple(extra)


# The keys of a sweep file that decide how its runs train (seeds are runs of their own, and
# the metric only what the report reads).
TRAINING_KEYS = ("base", "grid", "args")


def _training_keys_changed(recorded: Path, current: Path) -> list[str]:
    """The ``TRAINING_KEYS`` in which the file ``current`` differs from the copy ``recorded``
    in a sweep folder."""
    try:
        old, new = (yaml.safe_load(p.read_text()) or {} for p in (recorded, current))
    except (OSError, yaml.YAMLError):
        return []  # an unreadable copy: the per-run check below still applies
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    return [key for key in TRAINING_KEYS if old.get(key) != new.get(key)]


def _check_folder(
    out: Path, runs: list[Run], statuses: dict[str, dict], extra: tuple, spec_path: Path
) -> None:
    """Refuse (``SweepError``) to resume a folder made with other extra arguments or by
    another sweep: its finished runs would be reported beside differently trained ones."""
    recorded = None
    if (out / OVERRIDES).is_file():
        recorded = _recorded_extra_args(out / OVERRIDES)
    elif (out / "sweep.yaml").is_file():
        recorded = ()  # made before overrides were recorded, or without any
    if (out / "sweep.yaml").is_file():
        changed = _training_keys_changed(out / "sweep.yaml", spec_path)
        if changed:
            raise SweepError(
                f"{out} was made by a sweep file with other {' and '.join(changed)} than "
                f"{spec_path}; its runs would be reported beside differently trained ones. "
                f"Use another --out, or the file as it was ({out / 'sweep.yaml'})"
            )
    if recorded is not None and recorded != extra:
        raise SweepError(
            f"extra arguments after --: {out} was made with {_as_extra(recorded)}, this "
            f"command gives {_as_extra(extra)}; give the same to resume it, or another --out"
        )
    for run in runs:
        previous = statuses[run.name].get("args")
        if previous is not None and previous != list(run.args):
            raise SweepError(
                f"{out / run.name} was made with other arguments than this sweep gives it "
                f"({' '.join(previous)}); use another --out or remove the folder"
            )


def _record(out: Path, spec: SweepSpec, file_seeds: tuple, runs: list[Run], argv: list) -> None:
    """Write the sweep file's copy, the command line's overrides and the runs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.path, out / "sweep.yaml")
    overrides = {
        "command": f"tiered sweep {shlex.join(argv)}",
        "seeds": list(spec.seeds) if spec.seeds != file_seeds else None,
        "extra_args": list(spec.extra_args),
    }
    (out / OVERRIDES).write_text(json.dumps(overrides, indent=2))
    # Every run the folder holds: those of earlier commands (other --seeds) and these.
    known: dict[str, dict] = {}
    if (out / "runs.json").is_file():
        try:
            known = {r["name"]: r for r in json.loads((out / "runs.json").read_text())}
        except (ValueError, TypeError, KeyError):
            known = {}
    known.update({run.name: json.loads(json.dumps(run.__dict__, default=str)) for run in runs})
    (out / "runs.json").write_text(json.dumps(list(known.values()), indent=2))


def main(argv: list[str]) -> int:
    """Entry point of ``tiered sweep``; returns the exit code."""
    try:
        before, extra = _split_extra(list(argv))
        args = _parser().parse_args(before)
        if extra is not None and args.command != "run":
            raise SweepError(f"tiered sweep {args.command}: takes no arguments after --")
        if args.command == "report":
            print(write_report(args.dir).read_text())
            return 0
        if args.workers < 1:
            raise SweepError(f"--workers must be >= 1, got {args.workers}")
        if args.threads is not None and args.threads < 1:
            raise SweepError(f"--threads must be >= 1, got {args.threads}")
        file_spec = load_sweep(args.file)
        spec = file_spec.with_overrides(args.seeds, extra or ())
        out = args.out or Path("runs") / "sweeps" / args.file.stem
        runs = spec.runs()
        statuses = {run.name: read_status(out / run.name) for run in runs}  # read once
        _check_folder(out, runs, statuses, spec.extra_args, args.file)
    except (SweepError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            state = statuses[run.name].get("state", "pending")
            print(f"{run.name}\t{state}\ttiered fit {shlex.join(run.args)}")
        changed = _overrides_text(spec, file_spec)
        print(f"{len(runs)} runs in {out}" + (f"; {changed}" if changed else ""))
        return 0
    _record(out, spec, file_spec.seeds, runs, list(argv))
    todo = [run for run in runs if statuses[run.name].get("state") != "finished"]
    changed = _overrides_text(spec, file_spec)
    print(
        f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run"
        + (f"; {changed}" if changed else "")
    )
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.backend == "ray":
            results = run_ray(spec, todo, out, args.address, args.num_cpus)
        else:
            results = run_local(spec, todo, out, args.workers, args.threads)
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


def _overrides_text(spec: SweepSpec, file_spec: SweepSpec) -> str:
    """What the command line changed (seeds, extra arguments), or "" where it changed nothing."""
    parts = []
    if spec.seeds != file_spec.seeds:
        parts.append(f"--seeds {' '.join(map(str, spec.seeds))} (the file's: "
                     f"{' '.join(map(str, file_spec.seeds))})")  # fmt: skip
    if spec.extra_args:
        parts.append(f"extra arguments {_as_extra(spec.extra_args)}")
    return "overrides: " + "; ".join(parts) if parts else ""
