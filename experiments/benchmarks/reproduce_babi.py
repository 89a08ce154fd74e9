"""Issue 16, reproduction 6: bAbI error per task, from a sweep's checkpoints.

For every finished run of a sweep folder (``tiered sweep run experiments/babi/sweep.yaml``),
load its ``last.ckpt`` and count, per task, the test questions with any answer word wrong
(``BAbI.task_errors``). Writes ``babi.md`` and ``babi.csv`` under
``experiments/results/reproductions/``: our error per task for each stack beside the
published LSTM baseline on the 1k split (Weston et al. 2015, Table 3) and, for scale, the
DNC paper's means on the 10k split (Graves et al. 2016, Extended Data Table 1).

    python experiments/benchmarks/reproduce_babi.py experiments/results/sweeps/repro_babi
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown
from reproduce import finished_runs

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results" / "reproductions"
TASK_FILE = ROOT / "experiments" / "babi" / "babi.yaml"
FAILED = 0.05  # a task is failed above 5% error (the bAbI and DNC papers' bar)

# Weston et al. 2015, Table 3: test accuracy (%) of the LSTM baseline, 1000 training
# examples per task, trained per task; error = 100 - accuracy. Read in a copy of the
# paper's text and in keras-team/keras examples/babi_rnn.py ("FB LSTM Baseline").
WESTON_LSTM_ACCURACY = (50, 20, 20, 61, 70, 48, 49, 45, 64, 44,
                        72, 74, 94, 27, 21, 23, 51, 52, 8, 91)  # fmt: skip
DNC_PAPER = (
    "DNC paper (Graves et al. 2016, Extended Data Table 1; 10k split, joint, 20 runs): mean "
    "error DNC 16.7 +- 7.6% (11.2 +- 5.4 tasks failed), LSTM 27.3 +- 0.8% (17.1 +- 1.0 "
    "failed); best DNC run 3.8% (2 failed)"
)


def babi_task(data: Path | None):
    """The bAbI data module of the shipped task file (its data path, or ``data``)."""
    from tiered.tasks import BAbI

    args = dict(yaml.safe_load(TASK_FILE.read_text())["data"]["init_args"])
    path = Path(data) if data is not None else ROOT / args["path"]
    args["path"] = str(path)
    return BAbI(**args)


def summary(errors: dict[int, float]) -> tuple[float, int]:
    """Mean error over tasks and the number of failed tasks (error above 5%)."""
    return statistics.fmean(errors.values()), sum(e > FAILED for e in errors.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder of experiments/babi/sweep.yaml")
    parser.add_argument("--data", type=Path, default=None,
                        help="the bAbI folder or archive (default: the task file's)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from tiered.module import TieredModule

    runs = finished_runs(args.sweep) if args.sweep.is_dir() else []
    if not runs:
        print(f"no finished run with a last.ckpt in {args.sweep}", file=sys.stderr)
        return 2
    task = babi_task(args.data)
    rows, per_run = [], {}
    for variant, seed, checkpoint in runs:
        model = TieredModule.load_from_checkpoint(checkpoint, map_location="cpu")
        model.eval()
        errors = task.task_errors(lambda x, m=model: m.controller(x).output)
        per_run[(variant, seed)] = errors
        rows += [{"variant": variant, "seed": seed, "task": t, "error": e}
                 for t, e in errors.items()]  # fmt: skip
        print(variant, seed, summary(errors), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "babi.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    names = [f"{v} (seed {s})" for v, s in per_run]
    lines = [
        "# bAbI: test error per task (%)",
        "",
        f"Sweep folder `{args.sweep}`; trained jointly on tasks {task.tasks} of the 1k split "
        "(`experiments/babi/babi.yaml`); a question is wrong when any answer word is. Failed: "
        "error above 5%.",
        "",
        "Published: LSTM of Weston et al. 2015 (Table 3; 1k split, one model per task). "
        f"{DNC_PAPER}.",
        "",
        "| task | LSTM, Weston et al. 2015 (1k) | " + " | ".join(names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for t in task.tasks:
        paper = f"{100 - WESTON_LSTM_ACCURACY[t - 1]}" if 1 <= t <= 20 else "-"
        cells = [f"{100 * errors[t]:.1f}" for errors in per_run.values()]
        lines.append(f"| {t} | {paper} | " + " | ".join(cells) + " |")
    weston = {t: (100 - WESTON_LSTM_ACCURACY[t - 1]) / 100 for t in task.tasks if 1 <= t <= 20}
    mean, failed = summary(weston)
    cells = [f"{100 * m:.1f}" for m, _ in map(summary, per_run.values())]
    lines.append(f"| mean | {100 * mean:.1f} | " + " | ".join(cells) + " |")
    cells = [str(f) for _, f in map(summary, per_run.values())]
    lines.append(f"| failed | {failed} | " + " | ".join(cells) + " |")
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (args.out / "babi.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
