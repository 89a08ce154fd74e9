"""Sweep reports: a table of the metric per variant (mean and spread over seeds), plots.

``tiered sweep report DIR`` writes ``report.md``, ``report.csv``, ``curves.png`` (the
metric over training steps, one line per run, coloured by variant) and ``final.png`` (the
final metric per variant with its standard deviation).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from tiered.sweeps.runner import metric_curve, read_status


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
    """Per variant: mean and standard deviation over finished seeds, counts; best first."""
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
                "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
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
    """Sentences naming the variants whose mean differs from the best beyond their spread."""
    scored = [r for r in rows if r["mean"] is not None]
    if len(scored) < 2:
        return ["Fewer than two variants have finished runs; nothing to compare."]
    best = scored[0]
    lines = [
        f"Best by mean {metric} ({mode}): {best['variant']} "
        f"({best['mean']:.4g} +- {best['std']:.2g})."
    ]
    for row in scored[1:]:
        gap = abs(row["mean"] - best["mean"])
        spread = row["std"] + best["std"]
        if row["finished"] > 1 and best["finished"] > 1 and gap > spread:
            lines.append(
                f"{row['variant']} is worse than {best['variant']} beyond their spread "
                f"(difference {gap:.4g} > sum of standard deviations {spread:.4g})."
            )
        else:
            lines.append(
                f"{row['variant']} is within the spread of {best['variant']} "
                f"(difference {gap:.4g}, sum of standard deviations {spread:.4g}, "
                f"{row['finished']} and {best['finished']} seeds)."
            )
    return lines


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
        f"seeds {spec.get('seeds')}, args {spec.get('args') or []}.",
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
    _plot(out_dir, records, rows, metric)
    return out_dir / "report.md"


def _plot(out_dir: Path, records: list[dict], rows: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [r["variant"] for r in rows]
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    fig, ax = plt.subplots(figsize=(7, 4))
    labelled = set()
    for record in records:
        if record["curve"]:
            steps, values = zip(*record["curve"], strict=True)
            label = None if record["variant"] in labelled else record["variant"]
            labelled.add(record["variant"])
            ax.plot(steps, values, color=colours[record["variant"]], alpha=0.8, label=label)
    ax.set(xlabel="training step", ylabel=metric, title="learning curves (one line per run)")
    ax.grid(True, alpha=0.3)
    if labelled:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)
    scored = [r for r in rows if r["mean"] is not None]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, len(scored))))
    ax.barh(
        [r["variant"] for r in scored],
        [r["mean"] for r in scored],
        xerr=[r["std"] for r in scored],
        color=[colours[r["variant"]] for r in scored],
        capsize=3,
    )
    ax.invert_yaxis()
    ax.set(xlabel=f"final {metric} (mean +- std over seeds)")
    fig.tight_layout()
    fig.savefig(out_dir / "final.png", dpi=110)
    plt.close(fig)
