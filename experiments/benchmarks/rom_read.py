"""ROM read time per step, value-cache hit rates, store size and build time, by store rows.

Stores of random keys (width 32) and values (width 16) are built with ``tiered rom build``
(FAISS index included) under a scratch folder; then a ROM with batch 32, 4 read heads and
k = 8 reads them for a number of steps (forward only, queries near stored keys so that reads
revisit some rows), once per value-chunk size. Writes rom_read.md / .csv / .png under
experiments/results/.

    python experiments/benchmarks/rom_read.py [--log2 16 18 20] [--chunks 256 1024 4096]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.rom_cli import main as rom_main
from tiered.tiers import ROM

RESULTS = Path(__file__).resolve().parents[1] / "results"
B, R, K, DK, DV = 32, 4, 8, 32, 16


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measure(store: Path, steps: int) -> tuple[float, float]:
    """Median ms per read step and the value cache's hit rate."""
    rom = ROM(str(store), k=K, read_heads=R, index="faiss", cache_rows=1 << 16)
    keys = torch.from_numpy(rom.kv.read_keys(0, 4096))
    generator = torch.Generator().manual_seed(0)
    state = rom.initial_state(B)
    times = []
    with torch.no_grad():
        for _ in range(steps):
            rows = torch.randint(0, keys.shape[0], (B, R), generator=generator)
            queries = keys[rows] + 0.1 * torch.randn(B, R, DK, generator=generator)
            interface = torch.cat([queries.reshape(B, -1), torch.full((B, R), 10.0)], dim=1)
            start = time.perf_counter()
            _, state, _ = rom(interface, state)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), rom.cache.hit_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2", type=int, nargs="+", default=[16, 18, 20])
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_out = []
    scratch = Path(tempfile.mkdtemp(prefix="rom_read_"))
    try:
        rng = np.random.default_rng(0)
        for log2 in args.log2:
            n = 1 << log2
            np.save(scratch / "k.npy", rng.standard_normal((n, DK)).astype(np.float32))
            np.save(scratch / "v.npy", rng.standard_normal((n, DV)).astype(np.float32))
            for chunk in args.chunks:
                store = scratch / f"store_{log2}_{chunk}"
                start = time.perf_counter()
                keys, values = str(scratch / "k.npy"), str(scratch / "v.npy")
                rom_main(["build", "--keys", keys, "--values", values, "--out", str(store),
                          "--chunk-rows", str(chunk)])  # fmt: skip
                build = time.perf_counter() - start
                ms, hit = measure(store, args.steps)
                rows_out.append({"rows": n, "chunk_rows": chunk, "ms_per_step": ms, "hit_rate": hit,
                                 "size_mib": size_mib(store), "build_s": build})  # fmt: skip
                print(rows_out[-1], flush=True)
                shutil.rmtree(store)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open(args.out / "rom_read.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows_out[0]))
        writer.writeheader()
        writer.writerows(rows_out)
    lines = [
        "# ROM: read time per step by store size and chunk size",
        "",
        f"Batch {B}, {R} read heads, k = {K}, key width {DK}, value width {DV}, float32 store",
        "with a saved FAISS IVF index (nprobe 16); values read through a 65,536-row LRU cache.",
        f"Forward only, median of {args.steps} steps; queries are stored keys plus noise, drawn",
        "from the first 4,096 rows, so the cache gets some hits. Build time includes the FAISS",
        "index (training and adding every key).",
        "",
        "| rows | chunk rows | ms / step | cache hit rate | size MiB | build s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['rows']} | {r['chunk_rows']} | {r['ms_per_step']:.1f} | {r['hit_rate']:.2f} | "
        f"{r['size_mib']:.0f} | {r['build_s']:.1f} |"
        for r in rows_out
    ]
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (args.out / "rom_read.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for chunk in args.chunks:
        series = [r for r in rows_out if r["chunk_rows"] == chunk]
        ax.semilogx([r["rows"] for r in series], [r["ms_per_step"] for r in series], "o-",
                    label=f"{chunk} rows per chunk")  # fmt: skip
    ax.set(xlabel="store rows", ylabel="ms per read step", title="ROM read time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "rom_read.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
