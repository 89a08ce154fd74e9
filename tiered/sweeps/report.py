"""Sweep reports: a table of the metric per variant (mean and spread over seeds), plots.

``tiered sweep report DIR`` writes ``report.md``, ``report.csv``, ``curves.png`` (the
metric over training steps, one line per run, coloured by variant) and ``final.png`` (the
final metric per variant: its mean, its standard deviation where there are two seeds or
more, and every seed's value). A spread needs two seeds: a variant with one has none
(``std`` is None) and the report says that no difference can be judged against it.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tiered.sweeps.runner import metric_curve, read_status

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DIRECTION = {"min": "lower is better", "max": "higher is better"}


def collect(out_dir: Path, metric: str) -> list[dict[str, Any]]:
    """One record per run folder: name, variant, seed, state, final metric, curve."""
    records = []
    for run_dir in sorted(p for p in out_dir.iterdir() if (p / "status.json").is_file()):
        status = read_status(run_dir)
        variant, _, seed = run_dir.name.rpartition(",seed=")
        records.append(
            {
                "name": run_dir.name,
                "variant": variant or run_dir.name,
                "seed": seed,
                "state": status.get("state"),
                "metric": status.get("metric"),
                "error": status.get("error"),
                "wall_s": (status["finished"] - status["started"])
                if "started" in status and "finished" in status
                else None,
                "curve": metric_curve(run_dir, metric),
            }
        )
    return records


def summarize(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Per variant: mean and standard deviation over finished seeds (None with fewer than
    two), counts; best first."""
    rows = []
    for variant in sorted({r["variant"] for r in records}):
        mine = [r for r in records if r["variant"] == variant]
        values = [
            r["metric"]
            for r in mine
            if r["state"] == "finished" and r["metric"] is not None and math.isfinite(r["metric"])
        ]
        walls = [r["wall_s"] for r in mine if r["state"] == "finished" and r["wall_s"] is not None]
        rows.append(
            {
                "variant": variant,
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "finished": sum(r["state"] == "finished" for r in mine),
                "failed": sum(r["state"] == "failed" for r in mine),
                "not_finite": sum(
                    r["state"] == "finished"
                    and (r["metric"] is None or not math.isfinite(r["metric"]))
                    for r in mine
                ),
                "other": sum(r["state"] not in ("finished", "failed") for r in mine),
                "wall_s": statistics.fmean(walls) if walls else None,
            }
        )
    sign = 1 if mode == "min" else -1
    # best first; variants without a finite mean last
    return sorted(rows, key=lambda r: (r["mean"] is None, sign * (r["mean"] or 0.0)))


def differences(rows: list[dict[str, Any]], metric: str, mode: str) -> list[str]:
    """Sentences naming the variants whose mean differs from the best beyond their spread;
    with fewer than two seeds on either side there is no spread, and they say so."""
    scored = [r for r in rows if r["mean"] is not None]
    if len(scored) < 2:
        return ["Fewer than two variants have finished runs; nothing to compare."]
    best = scored[0]
    lines = [f"Best by mean {metric} ({mode}): {best['variant']} ({_mean_text(best)})."]
    for row in scored[1:]:
        gap = abs(row["mean"] - best["mean"])
        if row["std"] is None or best["std"] is None:
            lines.append(
                f"{row['variant']} against {best['variant']}: no spread can be judged with "
                f"fewer than 2 seeds per variant ({_seeds(row)} and {_seeds(best)} seeds; "
                f"difference of the means {gap:.4g})."
            )
            continue
        spread = row["std"] + best["std"]
        if gap > spread:
            lines.append(
                f"{row['variant']} is worse than {best['variant']} beyond their spread "
                f"(difference {gap:.4g} > sum of standard deviations {spread:.4g})."
            )
        else:
            lines.append(
                f"{row['variant']} is within the spread of {best['variant']} "
                f"(difference {gap:.4g}, sum of standard deviations {spread:.4g}, "
                f"{_seeds(row)} and {_seeds(best)} seeds)."
            )
    return lines


def _seeds(row: dict[str, Any]) -> int:
    """How many seeds of the variant have a finite final metric."""
    return row["finished"] - row["not_finite"]


def _mean_text(row: dict[str, Any]) -> str:
    if row["std"] is None:
        return f"{row['mean']:.4g}, {_seeds(row)} seed: no spread"
    return f"{row['mean']:.4g} +- {row['std']:.2g} over {_seeds(row)} seeds"


def _seeds_run(records: list[dict[str, Any]]) -> list[int | str]:
    """The seeds of the run folders, in order (every ``--seeds`` the folder was run with)."""
    seeds = {int(s) if str(s).isdigit() else str(s) for s in (r["seed"] for r in records)}
    return sorted(seeds, key=lambda s: (isinstance(s, str), str(s).zfill(20)))


def _overrides_line(out_dir: Path) -> list[str]:
    """The command line's overrides recorded by ``tiered sweep run``, if any."""
    path = out_dir / "overrides.json"
    if not path.is_file():
        return []
    try:
        overrides = json.loads(path.read_text())
        overrides.get("seeds")
    except (OSError, ValueError, AttributeError):
        return ["", f"Command-line overrides: {path} cannot be read."]
    parts = []
    if overrides.get("seeds") is not None:
        parts.append(f"seeds {overrides['seeds']}")
    if overrides.get("extra_args"):
        parts.append(f"extra arguments {overrides['extra_args']} (after the file's args)")
    if not parts:
        return []
    return ["", f"Command-line overrides: {'; '.join(parts)}; `{overrides.get('command')}`."]


def write_report(out_dir: Path) -> Path:
    """Write report.md / report.csv / curves.png / final.png for the sweep in ``out_dir``."""
    spec_path = out_dir / "sweep.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(f"sweep report: {out_dir} has no sweep.yaml; is it a sweep folder?")
    spec = yaml.safe_load(spec_path.read_text())
    metric, mode = spec["metric"]["name"], spec["metric"].get("mode", "min")
    records = collect(out_dir, metric)
    rows = summarize(records, mode)
    with open(out_dir / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [
        f"# Sweep report: {out_dir.name}",
        "",
        f"Metric: `{metric}` ({mode}), the last value each run logged; mean and standard "
        "deviation over seeds. Runs: "
        f"{sum(r['state'] == 'finished' for r in records)} finished, "
        f"{sum(r['state'] == 'failed' for r in records)} failed, "
        f"{sum(r['state'] not in ('finished', 'failed') for r in records)} other.",
        "",
        f"Sweep: base {spec.get('base')}, grid keys {sorted(spec.get('grid') or {})}, "
        f"seeds run {_seeds_run(records)} (the file's: {spec.get('seeds')}), "
        f"args {spec.get('args') or []}.",
        *_overrides_line(out_dir),
        "",
        f"| variant | mean {metric} | std | finished | failed | mean wall s per run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['variant']} | {fmt(r['mean'])} | {fmt(r['std'])} | {r['finished']} | "
        f"{r['failed']} | {fmt(r['wall_s'])} |"
        for r in rows
    ]
    lines += ["", *differences(rows, metric, mode)]
    failed = [r for r in records if r["state"] == "failed"]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['name']}: {r['error']}" for r in failed]
    lines += ["", "![learning curves](curves.png)", "", "![final metric](final.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    _plot(out_dir, records, rows, metric, mode)
    return out_dir / "report.md"


def _colours(rows: list[dict]) -> dict[str, Any]:
    import matplotlib

    return {r["variant"]: matplotlib.colormaps["tab10"](i % 10) for i, r in enumerate(rows)}


def final_figure(records: list[dict], rows: list[dict], metric: str, mode: str) -> Figure:
    """The figure of ``final.png``: per variant (best first) a bar and a diamond at the mean,
    whiskers of one standard deviation where there are two seeds or more, and a circle per
    seed, so a variant whose spread (or mean) is zero still shows."""
    from matplotlib.figure import Figure

    scored = [r for r in rows if r["mean"] is not None]
    colours = _colours(rows)
    fig = Figure(figsize=(7, 1.1 + 0.45 * max(1, len(scored))))
    ax = fig.subplots()
    ys = {r["variant"]: y for y, r in enumerate(scored)}
    ax.barh(list(ys.values()), [r["mean"] for r in scored], height=0.6, alpha=0.6,
            color=[colours[r["variant"]] for r in scored])  # fmt: skip
    spread = [r for r in scored if r["std"] is not None]
    ax.errorbar([r["mean"] for r in spread], [ys[r["variant"]] for r in spread],
                xerr=[r["std"] for r in spread], fmt="none", ecolor="black", capsize=4)  # fmt: skip
    ax.scatter([r["mean"] for r in scored], list(ys.values()), marker="D", color="black",
               zorder=3, label="mean")  # fmt: skip
    seeds = [(r["metric"], ys[r["variant"]]) for r in records if r["variant"] in ys
             and r["state"] == "finished" and r["metric"] is not None
             and math.isfinite(r["metric"])]  # fmt: skip
    if seeds:
        ax.scatter(*zip(*seeds, strict=True), marker="o", facecolors="none",
                   edgecolors="dimgray", zorder=4, label="each seed")  # fmt: skip
    ax.set_yticks(list(ys.values()), list(ys))
    ax.set_title(f"final {metric} per variant ({DIRECTION[mode]}; best on top)")
    ax.set_xlabel(f"final {metric}: mean over seeds, +- std where 2+ seeds")
    ax.use_sticky_edges = False  # a margin beside 0, so that points there show whole
    ax.margins(x=0.04)
    if scored:
        ax.set_ylim(len(scored) - 0.5, -0.5)  # best on top
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot(out_dir: Path, records: list[dict], rows: list[dict], metric: str, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    labelled = set()
    for record in records:
        if record["curve"]:
            steps, values = zip(*record["curve"], strict=True)
            label = None if record["variant"] in labelled else record["variant"]
            labelled.add(record["variant"])
            ax.plot(steps, values, color=colours[record["variant"]], alpha=0.8, label=label)
    ax.set(xlabel="training step", ylabel=metric,
           title=f"learning curves, one line per run ({DIRECTION[mode]})")  # fmt: skip
    ax.grid(True, alpha=0.3)
    if labelled:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)
    final_figure(records, rows, metric, mode).savefig(out_dir / "final.png", dpi=110)
