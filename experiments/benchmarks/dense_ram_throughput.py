"""Forward+backward time per batch of the dense RAM as the slot count grows.

Settings from the training issue: width 32, 4 read heads, 1 write head, register hidden 64,
batch 8, sequence length 20. Writes a Markdown table, a CSV and a PNG plot under
experiments/results/.

    python experiments/benchmarks/dense_ram_throughput.py [--slots 16 64 256 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.controllers import LSTMController
from tiered.malloc import tune_malloc
from tiered.tiers import RAM, Register

RESULTS = Path(__file__).resolve().parents[1] / "results"


def time_batch(slots: int, repeats: int, batch: int = 8, length: int = 20) -> list[float]:
    """Seconds per forward+backward over one batch, ``repeats`` times after one warm-up."""
    torch.manual_seed(0)
    controller = LSTMController(9, 8, Register(64), [RAM(slots, 32, read_heads=4, sparse=False)])
    x = torch.randn(batch, length, 9)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = controller(x)
        loss = out.output.pow(2).mean() + sum(a.penalty.mean() for a in out.aux.values())
        loss.backward()
        elapsed = time.perf_counter() - start
        controller.zero_grad(set_to_none=True)
        if i > 0:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-tune-malloc", action="store_true", help="keep glibc's default mmap threshold"
    )
    args = parser.parse_args()
    tuned = False if args.no_tune_malloc else tune_malloc()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for slots in args.slots:
        times = time_batch(slots, args.repeats)
        rows.append(
            {
                "slots": slots,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
            }
        )
        print(f"slots={slots:5d}  median {rows[-1]['median_s']:.4f} s", flush=True)
    with open(args.out / "dense_ram_throughput.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Dense RAM: forward+backward time per batch",
        "",
        "Width 32, 4 read heads, 1 write head, register hidden 64, batch 8, length 20, float32,",
        f"CPU; median, min and max of {args.repeats} timed batches after one warm-up;",
        f"tiered.malloc.tune_malloc() applied: {tuned}.",
        "",
        "| slots | median s/batch | min | max |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['slots']} | {r['median_s']:.4f} | {r['min_s']:.4f} | {r['max_s']:.4f} |"
        for r in rows
    ]
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (args.out / "dense_ram_throughput.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog([r["slots"] for r in rows], [r["median_s"] for r in rows], "o-", label="tiered RAM")
    ax.set_xlabel("slots N")
    ax.set_ylabel("seconds per batch (fwd+bwd)")
    ax.set_title("Dense RAM throughput (B=8, T=20, W=32, R=4)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "dense_ram_throughput.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
