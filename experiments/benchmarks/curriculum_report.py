"""Issue 18's evidence: how many training steps each curriculum needs before the model is
right at the longest level, from a sweep of experiments/sweeps/curriculum_*.yaml.

Every run carries a ``LevelProbe`` at the task's longest level (64 fixed sequences, scored
after each validation) that stops the run at the first probe under its bar; the step of that
probe is ``probe/reached``. A run that never reached it counts as not reached (its steps are
shown as more than the run's last step). Also read: the probe's wrong bits per sequence at
the end, the wall time, and for the bandit the share of batches drawn at each level. Writes
``<name>.md``, ``.csv`` and ``.png`` under experiments/results/ (name: the sweep folder's).

    python experiments/benchmarks/curriculum_report.py experiments/results/sweeps/curriculum_copy
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.sweeps.runner import metric_curve, read_status

RESULTS = Path(__file__).resolve().parents[1] / "results"
KINDS = ("uniform", "threshold", "bandit, prediction gain", "bandit, gradient gain")
SUFFIXES = {"uniform": "uniform", "threshold": "threshold", "bandit": "bandit, prediction gain",
            "bandit_gradient": "bandit, gradient gain"}  # fmt: skip
PAPER = (
    'Graves et al. 2017 ("Automated Curriculum Learning for Neural Networks") compare their '
    "bandit's rewards against uniform sampling on n-gram modelling, repeat copy and bAbI by "
    "learning curves (figures); no table of theirs could be read here, so no figure is quoted"
)


def curriculum_of(variant: str) -> str:
    """The curriculum (one of ``KINDS``) from a variant name such as ``copy_bandit``."""
    name = variant.removeprefix("config=")
    for suffix in sorted(SUFFIXES, key=len, reverse=True):  # bandit_gradient before bandit
        if name.endswith(f"_{suffix}") or name == suffix:
            return SUFFIXES[suffix]
    return name


def bandit_levels(run_dir: Path) -> list[list[int]]:
    """The levels of the run's BanditCurriculum, from the config Lightning saved ([] if
    none)."""
    import yaml

    configs = sorted((run_dir / "logs").glob("version_*/config.yaml"))
    if not configs:
        return []
    callbacks = yaml.safe_load(configs[-1].read_text()).get("trainer", {}).get("callbacks")
    for callback in callbacks or []:
        if str(callback.get("class_path", "")).endswith("BanditCurriculum"):
            return [list(level) for level in callback["init_args"]["levels"]]
    return []


def arm_shares(run_dir: Path, field: str) -> str:
    """The share of the logged batches the bandit drew at each of its levels, as
    ``low..high share`` for every level, easiest first ("" without a bandit)."""
    levels = bandit_levels(run_dir)
    arms = [int(v) for _, v in metric_curve(run_dir, f"curriculum/{field}_arm")]
    if not levels or not arms:
        return ""
    return " ".join(f"{low}..{high} {arms.count(arm) / len(arms):.2f}"
                    for arm, (low, high) in enumerate(levels))  # fmt: skip


def read_runs(folder: Path, field: str = "lengths") -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "status.json").is_file()):
        status = read_status(run_dir)
        if status.get("state") != "finished":
            continue
        variant, _, seed = run_dir.name.rpartition(",seed=")
        probe = metric_curve(run_dir, "probe/bit_errors")
        reached = metric_curve(run_dir, "probe/reached")
        steps = [step for step, _ in metric_curve(run_dir, "train/loss")] or [0]
        last = max([steps[-1], *(step for step, _ in probe)])
        rows.append({
            "variant": variant.removeprefix("config="), "curriculum": curriculum_of(variant),
            "seed": int(seed), "reached": int(reached[0][1]) if reached else None,
            "last_step": last, "final_bit_errors": probe[-1][1] if probe else None,
            "probes": len(probe), "wall_s": round(status["finished"] - status["started"], 1),
            "arm_shares": arm_shares(run_dir, field),
        })  # fmt: skip
    return rows


def _steps_cell(rows: list[dict]) -> str:
    """Median (min to max) steps to the bar; runs that did not reach it count as infinite."""
    values = [math.inf if r["reached"] is None else r["reached"] for r in rows]
    limit = max(r["last_step"] for r in rows)

    def show(value: float) -> str:
        return f"> {limit}" if math.isinf(value) else f"{value:.0f}"

    median = statistics.median(values)
    missed = sum(math.isinf(v) for v in values)
    note = f"; {missed} of {len(values)} not reached" if missed else ""
    return f"{show(median)} ({show(min(values))} to {show(max(values))}){note}"


def _cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def write(rows: list[dict], folder: Path, out: Path, name: str, describe: str, bar: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    kinds = [k for k in KINDS if any(r["curriculum"] == k for r in rows)]
    kinds += sorted({r["curriculum"] for r in rows} - set(kinds))
    lines = [
        f"# Curricula: steps to learn {describe}",
        "",
        f"Sweep folder `{folder}`. Steps to the bar: the global step of the first probe "
        f"({bar}) that passed it; a probe follows each validation (every 50 steps); the run "
        "stops there. Median (min to max) of the steps, (min-max) of the rest, over seeds; a "
        "run that did not reach the bar counts as infinite. Each step is one batch of 32 "
        "sequences. Wall time includes the "
        "validations and probes, and for the bandit the two extra forward passes per batch of "
        "its prediction-gain reward; the runs shared a 2-core machine two at a time, so wall "
        "times are noisy. Bandit: the share of the logged batches (one in `log_every_n_steps`, "
        "25) drawn at each of its levels, easiest first, one group per seed.",
        "",
        f"Paper: {PAPER}.",
        "",
        "| curriculum | steps to the bar | probe wrong bits per sequence at the end | wall s | "
        "bandit's levels drawn | seeds |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for kind in kinds:
        mine = [r for r in rows if r["curriculum"] == kind]
        finals = [r["final_bit_errors"] for r in mine if r["final_bit_errors"] is not None]
        shares = "; ".join(r["arm_shares"] for r in mine if r["arm_shares"]) or "-"
        lines.append(
            f"| {kind} | {_steps_cell(mine)} | {_cell(finals, 2)} | "
            f"{_cell([r['wall_s'] for r in mine], 0)} | {shares} | {len(mine)} |"
        )
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    _plot(folder, rows, kinds, out / f"{name}.png", describe)
    return "\n".join(lines)


def _plot(folder: Path, rows: list[dict], kinds: list[str], path: Path, describe: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    colours = dict(zip(kinds, ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=False))
    for kind in kinds:
        for index, row in enumerate(r for r in rows if r["curriculum"] == kind):
            run = folder / f"config={row['variant']},seed={row['seed']}"
            curve = metric_curve(run, "probe/bit_errors")
            axis.plot([s for s, _ in curve], [max(v, 1e-2) for _, v in curve],
                      color=colours.get(kind), alpha=0.8,
                      label=kind if index == 0 else None)  # fmt: skip
    axis.set_yscale("log")
    axis.set_xlabel("training step (batches of 32)")
    axis.set_ylabel("probe: wrong bits per sequence")
    axis.set_title(describe, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


DESCRIPTIONS = {
    "curriculum_copy": (
        "copy to length 20 (Cache + RAM stack)",
        "64 fixed sequences of length 20, fewer than 1 wrong bit per sequence",
    ),
    "curriculum_repeat_copy": (
        "repeat copy to length 5, 1..3 repeats (Cache + RAM stack)",
        "64 fixed sequences of length 5, fewer than 1 wrong bit per sequence",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder of a curriculum_*.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="the files' name (the folder's)")
    args = parser.parse_args(argv)
    rows = read_runs(args.sweep) if args.sweep.is_dir() else []
    if not rows:
        print(f"no finished run in {args.sweep}", file=sys.stderr)
        return 2
    name = args.name or args.sweep.name
    describe, bar = DESCRIPTIONS.get(name, (name, "the probe's bar"))
    print(write(rows, args.sweep, args.out, name, describe, bar))
    return 0


if __name__ == "__main__":
    sys.exit(main())
