"""Read a run's metrics.csv and show each tier's statistics over training.

    python examples/inspect_metrics.py --out runs/examples
    python examples/inspect_metrics.py runs/lightning_logs/version_3/metrics.csv

Works on any CSV a ``tiered`` run writes (``tiered fit`` writes one too): for every tier, the
metrics whose name holds the tier's name (``train/rewrite/ram``, ``val/penalty/cache``, ...),
with their first and last logged values and their mean; and a plot of the training curves,
one panel per tier, saved beside the CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: a file, no window

STAGES = ("train", "val", "test")


def newest_csv(out: Path) -> Path:
    """The most recently written metrics.csv under ``out``."""
    found = sorted(out.rglob("metrics.csv"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise SystemExit(f"no metrics.csv under {out}: run examples/train_in_python.py first")
    return found[-1]


def read_columns(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> (step, value) for every row where it was logged."""
    columns: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            step = int(row.get("step") or 0)
            for name, text in row.items():
                if name in ("step", "epoch") or not text:
                    continue
                columns.setdefault(name, []).append((step, float(text)))
    return columns


def tier_names(columns: dict[str, list[tuple[int, float]]]) -> list[str]:
    """Tier names as they appear in the metric names: ``<stage>/<statistic>/<tier>``."""
    names = {
        name.split("/")[2]
        for name in columns
        if name.count("/") == 2 and name.split("/")[0] in STAGES
    }
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, nargs="?", help="a metrics.csv (default: newest)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="run folder")
    args = parser.parse_args()

    path = args.csv or newest_csv(args.out)
    columns = read_columns(path)
    tiers = tier_names(columns)
    print(f"{path}: {len(columns)} metrics, tiers {', '.join(tiers)}")
    for tier in tiers:
        print(f"\n{tier}:")
        print(f"  {'metric':<36} {'first':>10} {'last':>10} {'mean':>10}")
        for name in sorted(n for n in columns if tier in n.split("/")):
            values = [value for _, value in columns[name]]
            mean = math.fsum(values) / len(values)
            print(f"  {name:<36} {values[0]:>10.4g} {values[-1]:>10.4g} {mean:>10.4g}")

    figure = Figure(figsize=(4 * len(tiers), 3), layout="tight")
    axes = figure.subplots(1, len(tiers), squeeze=False)
    for axis, tier in zip(axes[0], tiers, strict=True):
        for name in sorted(n for n in columns if n.startswith("train/") and tier in n.split("/")):
            steps, values = zip(*columns[name], strict=True)
            axis.plot(steps, values, label=name.split("/")[1])
        axis.set_title(tier)
        axis.set_xlabel("step")
        axis.legend(fontsize="small")
    plot = path.with_name("tiers.png")
    figure.savefig(plot)
    print(f"\nplot: {plot}")


if __name__ == "__main__":
    main()
