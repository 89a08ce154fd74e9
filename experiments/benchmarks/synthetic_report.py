"""Issue 17's evidence: the longest copy length solved with full BPTT, truncated BPTT and
synthetic gradients, from a sweep of experiments/sweeps/synthetic_copy.yaml.

Each run trains with a length curriculum (experiments/tasks/copy_curriculum.yaml): the top
of the range of lengths goes up by one after each validation with fewer than ``BAR`` wrong
bits per sequence. The longest length solved is the top of the last range passed: the final
top less one when the curriculum moved at all (the final level is the one not yet passed),
else 0. Also read: the mean cosine between the synthetic gradients and the true gradients
of full BPTT over the run's second half (``train/sg/cosine``). Writes
``synthetic_copy.md``, ``.csv`` and ``.png`` under experiments/results/.

    python experiments/benchmarks/synthetic_report.py experiments/results/sweeps/synthetic_copy
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.sweeps.runner import metric_curve, read_status

RESULTS = Path(__file__).resolve().parents[1] / "results"
BAR = 0.25  # wrong bits per sequence (copy_curriculum.yaml's ``below``)
START = 2  # the curriculum's first top (copy_curriculum.yaml's ``lengths``)
MAXIMUM = 60  # the curriculum's cap (copy_curriculum.yaml's ``maximum``)
PAPER = (
    "Jaderberg et al. 2017 (section 3 and its table of recurrent results) compare the longest "
    "copy and repeat-copy lengths that truncated BPTT learns with and without synthetic "
    "gradients for several window lengths; we could read that table in no retrievable text "
    "here, so its figures are not quoted"
)


def solved_length(highs: list[float], last_errors: float | None = None) -> int:
    """The top of the last range passed, from the logged tops of the range (in order); at
    the cap, the cap itself when the last validation (``last_errors``) passed the bar."""
    if highs and max(highs) >= MAXIMUM and last_errors is not None and last_errors < BAR:
        return MAXIMUM
    if not highs or max(highs) <= START:
        return 0
    return int(max(highs)) - 1


def variant_parts(variant: str) -> tuple[str, int | None]:
    """("full" | "truncated" | "synthetic", window) from a run's variant name (a suffix
    after the window, e.g. ``synthetic_2_lr1e-3``, names a setting of the gradient model)."""
    match = re.fullmatch(r"(?:config=)?(truncated|synthetic)_(\d+)(?:_.+)?", variant)
    if match:
        return match.group(1), int(match.group(2))
    return variant.removeprefix("config="), None


TASKS = {"copy_curriculum": "copy", "repeat_copy_curriculum": "repeat copy (1..3 repeats)"}


def run_settings(run_dir: Path, args: list[str]) -> dict:
    """The task file's name and the gradient model's settings of a run, from the config
    that Lightning saved beside its metrics (None where synthetic gradients are off)."""
    import yaml

    task = next((Path(a).stem for a in args if "/tasks/" in a and a.endswith(".yaml")), "")
    configs = sorted((run_dir / "logs").glob("version_*/config.yaml"))
    config = yaml.safe_load(configs[-1].read_text()) if configs else {}
    model = config.get("model", {}).get("init_args", {})
    data = config.get("data", {}).get("init_args", {})
    on = bool(model.get("synthetic_gradients"))
    return {
        "task": task,
        "batches": data.get("train_batches"),  # as trained, from the task file or the args
        "sg_lr": model.get("synthetic_lr") if on else None,
        "sg_scale": model.get("synthetic_scale") if on else None,
        "sg_hidden": model.get("synthetic_hidden") if on else None,
    }


def read_runs(folder: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "status.json").is_file()):
        status = read_status(run_dir)
        if status.get("state") != "finished":
            continue
        variant, _, seed = run_dir.name.rpartition(",seed=")
        kind, window = variant_parts(variant)
        highs = [v for _, v in metric_curve(run_dir, "curriculum/lengths_high")]
        errors = [v for _, v in metric_curve(run_dir, "val/bit_errors")]
        cosines = [v for _, v in metric_curve(run_dir, "train/sg/cosine")]
        late = cosines[len(cosines) // 2 :]
        args = list(status.get("args", []))
        rows.append({
            "variant": variant.removeprefix("config="), **run_settings(run_dir, args),
            "kind": kind, "window": window, "seed": int(seed),
            "solved": solved_length(highs, errors[-1] if errors else None),
            "cosine": statistics.fmean(late) if late else None,
            "wall_s": round(status["finished"] - status["started"], 1),
        })  # fmt: skip
    return rows


def _cell(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _model(row: dict) -> str:
    if row["kind"] != "synthetic":
        return ""
    hidden = f"hidden {row['sg_hidden']}" if row["sg_hidden"] else "linear"
    lr = "the module's lr" if row["sg_lr"] is None else f"lr {row['sg_lr']:g}"
    return f"{hidden}, {lr}, scale {row['sg_scale']:g}"


def write(rows: list[dict], folder: Path, out: Path, name: str = "synthetic_copy") -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    windows = sorted({r["window"] for r in rows if r["window"] is not None})
    tasks = sorted({r["task"] for r in rows})
    task = ", ".join(TASKS.get(t, t) for t in tasks)
    order = {"full": 0, "truncated": 1, "synthetic": 2}
    variants = sorted({r["variant"] for r in rows}, key=lambda v: (
        variant_parts(v)[1] or 0, order.get(variant_parts(v)[0], 3), v))  # fmt: skip
    lines = [
        f"# Synthetic gradients: the longest {task} length solved",
        "",
        f"Sweep folder `{folder}`: a plain LSTM of 100 units (experiments/stacks/register.yaml) "
        f"on 8-bit {task} with a length curriculum "
        f"({', '.join(f'experiments/tasks/{t}.yaml' for t in tasks)}: one epoch of "
        f"{', '.join(str(b) for b in sorted({r['batches'] for r in rows}))} batches of "
        "32; the top length rises by one after each validation with "
        f"fewer than {BAR} wrong bits per sequence). Solved: the top of the last range passed. "
        "Median (min-max) over seeds. Cosine: mean over the second half of the run of the "
        "cosine between the synthetic gradients and the true gradients of full BPTT at the "
        "window ends. The gradient model's settings are those of TieredModule "
        "(synthetic_hidden, synthetic_lr, synthetic_scale).",
        "",
        f"Paper: {PAPER}.",
        "",
        "| window (steps) | training | gradient model | longest length solved | cosine | seeds |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        kind, window = variant_parts(variant)
        cosines = [r["cosine"] for r in mine if r["cosine"] is not None]
        training = {"full": "full BPTT", "truncated": "truncated BPTT"}.get(
            kind, "synthetic gradients")  # fmt: skip
        lines.append(
            f"| {window if window is not None else '-'} | {training} | {_model(mine[0])} | "
            f"{_cell([r['solved'] for r in mine])} | {_cell(cosines, 3)} | {len(mine)} |"
        )
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    _plot(rows, windows, out / f"{name}.png", task)
    return "\n".join(lines)


def _plot(rows: list[dict], windows: list[int], path: Path, task: str = "copy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    plain = sorted({r["variant"] for r in rows if r["kind"] == "truncated"})
    bridged = sorted({r["variant"] for r in rows if r["kind"] == "synthetic"})
    markers = iter("sDv^<>p*")
    for variant in plain[:1] + bridged:  # truncated BPTT (one line), each bridged setting
        kind = variant_parts(variant)[0]
        mine = [r for r in rows if r["kind"] == kind and (kind == "truncated"
                                                         or r["variant"] == variant)]  # fmt: skip
        present = [w for w in windows if any(r["window"] == w for r in mine)]
        medians = [statistics.median([r["solved"] for r in mine if r["window"] == w])
                   for w in present]  # fmt: skip
        label = "truncated BPTT" if kind == "truncated" else f"synthetic ({_model(mine[0])})"
        axis.plot(present, medians, marker="o" if kind == "truncated" else next(markers),
                  label=label)  # fmt: skip
    full = [r["solved"] for r in rows if r["kind"] == "full"]
    if full:
        axis.axhline(statistics.median(full), color="grey", linestyle="--", label="full BPTT")
    axis.set_xlabel("window (steps)")
    axis.set_ylabel(f"longest {task.split(' (')[0]} length solved (median)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder of synthetic_copy.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="synthetic_copy", help="the files' name")
    args = parser.parse_args(argv)
    rows = read_runs(args.sweep) if args.sweep.is_dir() else []
    if not rows:
        print(f"no finished run in {args.sweep}", file=sys.stderr)
        return 2
    print(write(rows, args.sweep, args.out, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
