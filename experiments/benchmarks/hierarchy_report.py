"""Issue 14's evidence: one table and two plots from the hierarchy sweeps' run folders.

    python experiments/benchmarks/hierarchy_report.py [--sweeps experiments/results/sweeps]
        [--out experiments/results/hierarchy]

Reads each run's metrics.csv in the sweeps hierarchy_structure, hierarchy_penalty,
hierarchy_clock and hierarchy_delay (run them first: the commands are in each sweep file),
and writes, per variant (mean and standard deviation over its seeds):
- hierarchy.md / hierarchy.csv: wrong bits per sequence and exact matches on validation
  (the training range of items) and test (longer sequences), write mass per step of each
  tier, the Cache's spilled content per step, and the RAM's own writes (its write mass less
  the spills it took);
- penalty.png: the Cache's and the RAM's own write mass per step against the Cache's
  rewrite_penalty, with the validation wrong bits beside them;
- clock.png: wrong bits of the slow RAM per period and clock rule.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown, write_csv

SWEEPS = ("hierarchy_structure", "hierarchy_penalty", "hierarchy_clock", "hierarchy_delay")
TIERS = ("cache", "ram")


def last_values(path: Path) -> dict[str, float]:
    """The last logged value of every column of a metrics.csv."""
    values: dict[str, float] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value not in ("", None):
                    values[key] = float(value)
    return values


def run_records(sweeps: Path) -> list[dict[str, object]]:
    """One record per finished run: its sweep, variant, seed and final metrics."""
    records = []
    for sweep in SWEEPS:
        folder = sweeps / sweep
        if not folder.is_dir():
            continue
        for run in sorted(folder.iterdir()):
            metrics = sorted(run.glob("logs/version_*/metrics.csv"))
            if not metrics or "," not in run.name:
                continue
            values = last_values(metrics[-1])
            if "test/bit_errors" not in values:
                continue  # unfinished
            variant, seed = run.name.rsplit(",seed=", 1)
            record: dict[str, object] = {
                "sweep": sweep, "variant": variant.removeprefix("config="), "seed": int(seed),
            }  # fmt: skip
            for split in ("val", "test"):
                record[f"{split}_bit_errors"] = values[f"{split}/bit_errors"]
                record[f"{split}_exact"] = values.get(f"{split}/exact_match", math.nan)
            for tier in TIERS:
                record[f"{tier}_write_mass"] = values.get(f"val/write_mass/{tier}", math.nan)
            record["cache_spilled"] = values.get("val/spilled/cache", 0.0)
            record["ram_own_write_mass"] = record["ram_write_mass"] - record["cache_spilled"]  # type: ignore[operator]
            records.append(record)
    return records


FIELDS = ("val_bit_errors", "val_exact", "test_bit_errors", "test_exact", "cache_write_mass",
          "cache_spilled", "ram_write_mass", "ram_own_write_mass")  # fmt: skip


def summarise(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean and standard deviation over seeds per (sweep, variant)."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for record in records:
        groups.setdefault((record["sweep"], record["variant"]), []).append(record)  # type: ignore[arg-type]
    rows = []
    for (sweep, variant), group in groups.items():
        row: dict[str, object] = {"sweep": sweep, "variant": variant, "seeds": len(group)}
        for name in FIELDS:
            values = [float(r[name]) for r in group if not math.isnan(float(r[name]))]  # type: ignore[arg-type]
            row[name] = statistics.fmean(values) if values else math.nan
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        rows.append(row)
    return rows


def cell(row: dict[str, object], name: str, digits: int = 2) -> str:
    mean, std = float(row[name]), float(row[f"{name}_std"])  # type: ignore[arg-type]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def table(rows: list[dict[str, object]]) -> list[str]:
    lines = [
        "| sweep | variant | seeds | val wrong bits | val exact | test wrong bits | test exact "
        "| cache write mass | cache spilled | RAM write mass | RAM own writes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        sweep = str(row["sweep"]).removeprefix("hierarchy_")
        cells = " | ".join(cell(row, name) for name in FIELDS)
        lines.append(f"| {sweep} | {row['variant']} | {row['seeds']} | {cells} |")
    return lines


def penalty_plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {"cache_spill_ram": 0.0}
    points.update({f"cache_penalty_{p}": float(p) for p in ("0.001", "0.01", "0.1")})
    chosen = []
    for variant, penalty in points.items():
        sweep = "hierarchy_structure" if penalty == 0 else "hierarchy_penalty"
        match = [r for r in rows if r["sweep"] == sweep and r["variant"] == variant]
        if match:
            chosen.append((penalty, match[0]))
    if not chosen:
        return
    x = [max(p, 1e-4) for p, _ in chosen]  # 0 drawn at 1e-4 on the log axis
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, label in (("cache_write_mass", "Cache"), ("ram_own_write_mass", "RAM (own writes)"),
                        ("cache_spilled", "spilled Cache -> RAM")):  # fmt: skip
        y = [float(r[name]) for _, r in chosen]  # type: ignore[arg-type]
        e = [float(r[f"{name}_std"]) for _, r in chosen]  # type: ignore[arg-type]
        left.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
    left.set_xscale("log")
    left.set_xlabel("Cache rewrite_penalty (0 drawn at 1e-4)")
    left.set_ylabel("write mass per step (validation)")
    left.legend(fontsize=8)
    left.set_title("where writes go as the Cache's penalty rises", fontsize=9)
    for split in ("val", "test"):
        y = [float(r[f"{split}_bit_errors"]) for _, r in chosen]  # type: ignore[arg-type]
        e = [float(r[f"{split}_bit_errors_std"]) for _, r in chosen]  # type: ignore[arg-type]
        right.errorbar(x, y, yerr=e, marker="o", capsize=3, label=split)
    right.axhline(3.0, color="grey", linestyle=":", label="chance (3 of 6)")
    right.set_xscale("log")
    right.set_xlabel("Cache rewrite_penalty (0 drawn at 1e-4)")
    right.set_ylabel("wrong bits per sequence (lower is better)")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.set_title("accuracy beside it", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def clock_plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clock = [r for r in rows if r["sweep"] == "hierarchy_clock"]
    base = [r for r in rows if r["sweep"] == "hierarchy_structure" and r["variant"] == "ram_only"]
    if not clock:
        return
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    rules = ("last", "mean", "gate")
    for offset, period in enumerate((2, 4)):
        for position, rule in enumerate(rules):
            match = [r for r in clock if r["variant"] == f"slow_ram_p{period}_{rule}"]
            if not match:
                continue
            x = position + 0.15 * (2 * offset - 1)
            ax.errorbar([x], [match[0]["val_bit_errors"]], yerr=[match[0]["val_bit_errors_std"]],
                        marker="os"[offset], capsize=3, color=f"C{offset}",
                        label=f"period {period}" if position == 0 else None)  # fmt: skip
    if base:
        ax.axhline(float(base[0]["val_bit_errors"]), color="black", linestyle="--",  # type: ignore[arg-type]
                   label="RAM every step")  # fmt: skip
    ax.axhline(3.0, color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(rules)), rules)
    ax.set_xlabel("clock rule of the slow RAM")
    ax.set_ylabel("validation wrong bits per sequence")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=Path, default=Path("experiments/results/sweeps"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/hierarchy"))
    args = parser.parse_args()
    records = run_records(args.sweeps)
    if not records:
        raise SystemExit(f"no finished hierarchy runs under {args.sweeps}")
    rows = summarise(records)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "hierarchy.csv", rows)
    penalty_plot(rows, args.out / "penalty.png")
    clock_plot(rows, args.out / "clock.png")
    lines = [
        "# The hierarchy at work (issue 14)",
        "",
        "Machine (runs and this report):",
        "",
        machine_markdown(),
        "",
        "Task: associative recall of single six-bit vectors (experiments/tasks/"
        "hierarchy_recall.yaml): 4..8 items in training and validation, 9..16 in test, more "
        "than the Cache's 4 slots; 6 bits scored per sequence, chance 3. Stack: a 64-unit "
        "register, a Cache of 4 slots and a dense RAM of 32, width 16, one read head each "
        "(experiments/stacks/cache_spill_ram.yaml and the variants in experiments/sweeps/"
        "hierarchy/). Each run: 2000 steps of batch 16, Adam 3e-3, one thread, then the "
        "final weights evaluated. Write masses and spills are per step on validation.",
        "",
        "Mean ± standard deviation over seeds. 'RAM own writes' is the RAM's write mass less "
        "the spills it took (the Cache's spilled content).",
        "",
        *table(rows),
        "",
        "![penalty](penalty.png)",
        "",
        "![clock](clock.png)",
        "",
    ]
    (args.out / "hierarchy.md").write_text("\n".join(lines))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
