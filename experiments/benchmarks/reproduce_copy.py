"""Issue 16, reproduction 1: copy at lengths never trained on, from a sweep's checkpoints.

For every finished run of a sweep folder (``tiered sweep run experiments/sweeps/
repro_copy.yaml``), load its ``last.ckpt`` and count wrong bits per sequence on fresh copy
sequences of each length in ``--lengths`` (trained on 1..20); median and range over the
seeds of each variant. Writes ``copy.md`` and ``copy.csv`` under
``experiments/results/reproductions/``, the NTM paper's result beside ours.

    python experiments/benchmarks/reproduce_copy.py experiments/results/sweeps/repro_copy
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.metrics import bit_errors
from tiered.sweeps.runner import read_status
from tiered.tasks import Copy

RESULTS = Path(__file__).resolve().parents[1] / "results" / "reproductions"
LENGTHS = (10, 20, 30, 50, 80, 120)
PAPER = (
    "NTM (Graves et al. 2014, section 4.1): trained on lengths 1..20, its copies of lengths "
    "30 and 50 were near perfect and those of 120 had a few errors, shown as example "
    "outputs; the paper gives no error counts per test length"
)


def errors_at_lengths(
    checkpoint: Path, lengths: list[int], sequences: int, seed: int = 1234
) -> dict[int, float]:
    """Mean wrong bits per sequence of ``checkpoint``'s model at each length (8-bit copy)."""
    from tiered.module import TieredModule

    model = TieredModule.load_from_checkpoint(checkpoint, map_location="cpu")
    model.eval()
    out = {}
    for length in lengths:
        task = Copy(bits=8, lengths=[length, length], eval_lengths=[length, length],
                    batch_size=sequences, seed=seed)  # fmt: skip
        batch = task.make_batch("test", 0)
        with torch.no_grad():
            logits = model.controller(batch.inputs).output
        out[length] = float(bit_errors(logits, batch.targets, batch.mask).mean())
    return out


def finished_runs(folder: Path) -> list[tuple[str, int, Path]]:
    """(variant, seed, last.ckpt) of every finished run in a sweep folder."""
    runs = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "status.json").is_file()):
        if read_status(run_dir).get("state") != "finished":
            continue
        checkpoints = sorted(run_dir.rglob("last.ckpt"))
        if not checkpoints:
            continue
        variant, _, seed = run_dir.name.rpartition(",seed=")
        runs.append((variant.removeprefix("config="), int(seed), checkpoints[-1]))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder of repro_copy.yaml")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--sequences", type=int, default=64, help="test sequences per length")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = finished_runs(args.sweep)
    if not runs:
        print(f"no finished run with a last.ckpt in {args.sweep}", file=sys.stderr)
        return 2
    rows = []
    for variant, seed, checkpoint in runs:
        errors = errors_at_lengths(checkpoint, args.lengths, args.sequences)
        rows.append({"variant": variant, "seed": seed, **{f"L{k}": v for k, v in errors.items()}})
        print(variant, seed, errors, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "copy.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Copy: wrong bits per sequence at lengths never trained on",
        "",
        f"Trained on lengths 1..20 (sweep folder `{args.sweep}`); {args.sequences} fresh "
        "8-bit sequences per length; median (min-max) over seeds of each run's mean.",
        "",
        f"Paper: {PAPER}.",
        "",
        "| variant | seeds | " + " | ".join(f"L = {n}" for n in args.lengths) + " |",
        "|---|---:|" + "---:|" * len(args.lengths),
    ]
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        cells = []
        for n in args.lengths:
            values = [r[f"L{n}"] for r in mine]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append(f"| {variant} | {len(mine)} | " + " | ".join(cells) + " |")
    lines += ["", "Chance: 4 L wrong bits per sequence of length L (half of its 8 L bits).", ""]
    lines += ["Machine:", "", machine_markdown(), ""]
    (args.out / "copy.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
