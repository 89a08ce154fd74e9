"""IVF recall with the coarse quantiser trained on random vectors or on the memory's rows.

Two memories of unit rows (width 64), all written: random rows, and rows in 32 clusters of a
16-dimensional subspace (spread unevenly over the sphere, as a trained model's rows are).
Queries: random vectors, and stored rows plus noise. For each, ``tiered.knn_faiss.FaissKNN`` with
``train_on="random"`` and ``"memory"`` at nprobe 8 and 32, side by side in one run: recall@8
against exact search, the share of noisy queries whose source row is among the 8 found, the
largest inverted list, and the search time for 256 queries.

    .venv/bin/python experiments/benchmarks/ivf_quantiser.py [--slots 16384 65536]

Writes experiments/results/ivf_quantiser.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.knn import exact_search, load_faiss, normalize_rows, set_faiss_threads
from tiered.knn_faiss import FaissKNN

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"
WIDTH, QUERIES, K = 64, 256, 8


def memory(kind: str, slots: int, g: torch.Generator) -> torch.Tensor:
    """(1, slots, WIDTH) unit rows: "random", or "clustered" (32 centres in 16 dimensions)."""
    if kind == "random":
        return normalize_rows(torch.randn(1, slots, WIDTH, generator=g))
    basis = torch.randn(16, WIDTH, generator=g)
    centres = torch.randn(32, 16, generator=g)
    label = torch.randint(0, 32, (slots,), generator=g)
    rows = (centres[label] + 0.3 * torch.randn(slots, 16, generator=g)) @ basis
    return normalize_rows(rows + 0.05 * torch.randn(slots, WIDTH, generator=g)).unsqueeze(0)


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean share of the exact top-k (1, h, k) that ``found`` holds too."""
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found[0], exact[0], strict=True)]
    return sum(hits) / exact[0].numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1 << 14, 1 << 16])
    args = parser.parse_args()
    set_faiss_threads(1)
    faiss = load_faiss()
    assert faiss is not None, "needs faiss-cpu (make install)"
    rows = []
    for slots in args.slots:
        for kind in ("random", "clustered"):
            g = torch.Generator().manual_seed(0)
            mem = memory(kind, slots, g)
            written = torch.ones(1, slots, dtype=torch.bool)
            source = torch.randint(0, slots, (QUERIES,), generator=g)
            noise = torch.randn(1, QUERIES, WIDTH, generator=g)
            noisy = mem[:, source] + (0.5 / WIDTH**0.5) * noise
            randoms = torch.randn(1, QUERIES, WIDTH, generator=g)
            for train_on in ("random", "memory"):
                for nprobe in (8, 32):
                    index = FaissKNN(faiss, 1, slots, WIDTH, nprobe, train_on=train_on)
                    start = time.perf_counter()
                    index.rebuild(mem, written)
                    build = time.perf_counter() - start
                    start = time.perf_counter()
                    found_random = index.search(mem, written, randoms, K)
                    search_ms = 1000 * (time.perf_counter() - start)
                    found_noisy = index.search(mem, written, noisy, K)[0]
                    lists = [index.indexes[0].get_list_size(i) for i in range(index.nlist)]
                    rows.append({
                        "slots": slots, "rows": kind, "quantiser": train_on, "nprobe": nprobe,
                        "recall@8_random_queries": round(
                            recall(found_random, exact_search(mem, written, randoms, K)), 3),
                        "recall@8_noisy_rows": round(
                            recall(found_noisy[None], exact_search(mem, written, noisy, K)), 3),
                        "source_row_found": round(sum(
                            int(s) in set(r.tolist()) for s, r in zip(source, found_noisy,
                                                                        strict=True)) / QUERIES, 3),
                        "largest_list": max(lists), "lists": index.nlist,
                        "build_s": round(build, 2), "search_ms_256_queries": round(search_ms, 1),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "ivf_quantiser.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = list(rows[0])
    lines = [
        "# IVF recall: quantiser trained on random vectors or on the memory",
        "",
        f"Width {WIDTH}, k = {K}, {QUERIES} queries, every row written, one index (batch 1),",
        "1 FAISS thread. Noisy rows: a stored row plus Gaussian noise of total norm ~0.5",
        "(0.5 / sqrt(width) per coordinate) on unit rows. Made by",
        "`experiments/benchmarks/ivf_quantiser.py`; the quantiser trained on the memory is",
        "`tiered.knn_faiss.FaissKNN`'s default since issue 13.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        *("| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows),
        "",
        "Machine:",
        "",
        machine_markdown(),
        "",
    ]
    (RESULTS / "ivf_quantiser.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
