"""kNN retrieval quality and speed on a filled memory: exact, IVF and HNSW side by side.

Issue 13, item 1. N random unit rows of width W, all written, searched by every candidate
with the same queries: "exact" (``tiered.knn.ExactKNN``); "faiss-random" / "faiss-memory"
(``tiered.knn_faiss.FaissKNN``, nprobe 8, quantiser trained once on random unit vectors /
on the memory's rows); "ivf-memory" (IVF-Flat built here, trained on
up to 39 nlist of the memory's rows, nprobe in --nprobe and nlist / 8); "hnswlib" (if
installed; a row is replaced in place by ``add_items`` with its label); "faiss-hnsw"
(IndexHNSWFlat, for reference: it cannot remove rows). Each is measured for recall@k,
stored rows found from noisy queries, attention mass captured, build, search and update
time, and size (``markdown`` defines each).

    .venv/bin/python experiments/benchmarks/knn_recall.py [--slots 16384 65536] [--quick]

Writes experiments/results/knn_recall.{md,csv,png} (--append keeps the other sizes' rows).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.knn import ExactKNN, load_faiss
from tiered.knn_faiss import FaissKNN

RESULTS = Path(__file__).resolve().parents[1] / "results"
STRENGTHS = (1.0, 10.0)
UPDATE_ROWS = 64
FAMILIES = ("faiss-random", "faiss-memory", "ivf-memory", "hnswlib", "faiss-hnsw")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*(e[-+]?\d+)?|nan|inf)")


def unit_rows(n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(n, W) float32 random gaussian rows, L2-normalised."""
    rows = rng.standard_normal((n, width)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def noisy_queries(rows: np.ndarray, sources: np.ndarray, sigma: float, rng) -> np.ndarray:
    """(Q, W) unit queries: the unit rows ``sources`` (Q,) plus N(0, (sigma / sqrt W)^2)
    noise per coordinate, normalised. The same as noise sigma on a row of unit-variance
    coordinates (norm sqrt W): the cosine to the source is about 1 / sqrt(1 + sigma^2)."""
    noise = rng.standard_normal((len(sources), rows.shape[1])).astype(np.float32)
    queries = rows[sources] + sigma / math.sqrt(rows.shape[1]) * noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k (Q, k) that ``found`` (Q, k) also holds (-1: none)."""
    pairs = zip(found, exact, strict=True)
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) for f, e in pairs]
    return sum(hits) / exact.size


def source_found(found: np.ndarray, sources: np.ndarray) -> float:
    """Share of queries whose source row (Q,) is among the k found (Q, k)."""
    return float((found == sources[:, None]).any(axis=1).mean())


def log_partition(rows: np.ndarray, queries: np.ndarray, strength: float, block: int = 1 << 16):
    """(Q,) float64 log sum_n exp(strength cos(q, row_n)) over all N rows, block by block
    over the rows (a (Q, N) float64 matrix is 2 GiB at N = 2^20, Q = 256)."""
    q = queries.astype(np.float64)
    total = np.full(len(q), -np.inf)
    for start in range(0, len(rows), block):
        scores = strength * (q @ rows[start : start + block].astype(np.float64).T)  # (Q, n)
        total = np.logaddexp(total, np.logaddexp.reduce(scores, axis=1))
    return total


def mass_share(rows, queries, found: np.ndarray, strength: float, log_z: np.ndarray) -> float:
    """Mean over queries of the share of softmax(strength cos(q, rows)) (over all N rows)
    held by the rows ``found`` (Q, k); -1 entries hold none. In [0, 1]."""
    q = queries.astype(np.float64)
    picked = rows[found.clip(min=0)].astype(np.float64)  # (Q, k, W)
    weights = np.exp(strength * np.einsum("qw,qkw->qk", q, picked) - log_z[:, None])
    return float(np.where(found >= 0, weights, 0.0).sum(axis=1).mean())


def ivf_nlist(n: int) -> int:
    """Inverted lists for N rows, as ``FaissKNN`` chooses: min(N / 8, sqrt N)."""
    return max(1, min(n // 8, int(math.sqrt(n))))


def nprobe_values(nlist: int, requested: list[int]) -> list[int]:
    """The requested nprobes and nlist / 8, at most nlist, distinct, ascending."""
    return sorted({min(p, nlist) for p in [*requested, max(1, nlist // 8)]})


@dataclass
class Built:
    """One built index: ``search(queries (Q, W), k, setting) -> ids (Q, k)`` for each of
    ``settings``; ``replace(ids (S,) int64, unit rows (S, W))``, or None when rows cannot
    be removed; ``nbytes`` its size: FAISS's serialised index, hnswlib's index_file_size,
    or for exact its cache (the norms), the memory being the RAM's own."""

    name: str
    build_s: float
    nbytes: int
    search: Callable[[np.ndarray, int, int], np.ndarray]
    settings: list[int] = field(default_factory=lambda: [0])
    setting_name: str = ""
    replace: Callable[[np.ndarray, np.ndarray], None] | None = None
    note: str = ""


def seconds(fn: Callable[[], object]) -> float:
    """The wall time of fn() in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_tiered(knn, rows: np.ndarray, name: str, settings: list[int], size=None) -> Built:
    """A ``tiered.knn`` index ``knn`` (batch 1) over its own copy of the memory (1, N, W):
    ``rebuild``, ``search``, and ``update`` after rows of the memory are overwritten."""
    memory = torch.from_numpy(rows.copy()).unsqueeze(0)
    written = torch.ones(memory.shape[:2], dtype=torch.bool)
    build_s = seconds(lambda: knn.rebuild(memory, written))

    def search(queries: np.ndarray, k: int, _: int) -> np.ndarray:
        return knn.search(memory, written, torch.from_numpy(queries)[None], k)[0].numpy()

    def replace(ids: np.ndarray, vectors: np.ndarray) -> None:
        memory[0, ids] = torch.from_numpy(vectors)
        knn.update(memory, torch.from_numpy(ids)[None], torch.ones(1, len(ids), dtype=torch.bool))

    nbytes = size(knn) if size else 4 * len(rows)
    return Built(name, build_s, nbytes, search, settings, "nprobe" if size else "", replace)


def build_exact(rows: np.ndarray) -> Built:
    """ExactKNN; its only cache is the rows' norms (N,)."""
    return build_tiered(ExactKNN(), rows, "exact", [0])


def build_tiered_faiss(faiss, rows: np.ndarray, train_on: str, nprobe: int = 8) -> Built:
    """tiered's FaissKNN as the RAM builds it, its quantiser trained on ``train_on``."""
    knn = FaissKNN(faiss, 1, len(rows), rows.shape[1], nprobe, train_on=train_on)
    size = lambda knn: len(faiss.serialize_index(knn.indexes[0]))  # noqa: E731
    return build_tiered(knn, rows, f"faiss-{train_on} (tiered)", [nprobe], size)


def build_ivf_memory(faiss, rows: np.ndarray, nprobes: list[int], seed: int = 0) -> Built:
    """IVF-Flat (inner product on unit rows, hash-table direct map) whose coarse quantiser
    is trained on a sample of up to 39 nlist of the memory's rows."""
    nlist = ivf_nlist(len(rows))
    rng = np.random.default_rng(seed)
    sample = rows[rng.choice(len(rows), min(len(rows), 39 * nlist), replace=False)]
    index = faiss.IndexIVFFlat(
        faiss.IndexFlatIP(rows.shape[1]), rows.shape[1], nlist, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.min_points_per_centroid = 1  # silence FAISS's small-training warning
    index.cp.seed = seed
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    ids = np.arange(len(rows), dtype=np.int64)
    build_s = seconds(lambda: index.train(sample)) + seconds(lambda: index.add_with_ids(rows, ids))

    def search(queries: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        index.nprobe = nprobe
        return index.search(queries, k)[1]

    def replace(ids: np.ndarray, vectors: np.ndarray) -> None:
        index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
        index.add_with_ids(vectors, ids)

    size, note = len(faiss.serialize_index(index)), f"nlist {nlist}, {len(sample)} to train"
    return Built("ivf-memory", build_s, size, search, nprobes, "nprobe", replace, note)


def build_hnswlib(hnswlib, rows: np.ndarray, m: int, efs: list[int], threads: int) -> Built:
    """hnswlib HNSW, space "cosine", ef_construction 200; built on every core."""
    index = hnswlib.Index(space="cosine", dim=rows.shape[1])
    index.init_index(max_elements=len(rows), ef_construction=200, M=m, random_seed=0)
    build_s = seconds(lambda: index.add_items(rows, np.arange(len(rows)), num_threads=-1))

    def search(queries: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.set_ef(ef)
        return index.knn_query(queries, k, num_threads=threads)[0].astype(np.int64)

    def replace(ids: np.ndarray, vectors: np.ndarray) -> None:
        index.add_items(vectors, ids, num_threads=threads)  # existing labels: in place

    size = index.index_file_size()
    return Built(f"hnswlib M{m}", build_s, size, search, efs, "ef", replace, "in place")


def build_faiss_hnsw(faiss, rows: np.ndarray, m: int, efs: list[int]) -> Built:
    """FAISS IndexHNSWFlat (inner product), efConstruction 200: cannot remove rows."""
    index = faiss.IndexHNSWFlat(rows.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    build_s = seconds(lambda: index.add(rows))

    def search(queries: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.hnsw.efSearch = ef
        return index.search(queries, k)[1]

    size, note = len(faiss.serialize_index(index)), "cannot remove rows"
    return Built(f"faiss-hnsw M{m}", build_s, size, search, efs, "ef", None, note)


@dataclass
class Probe:
    """The queries of one size and their ground truth: random (Q, W) with exact top-k
    ``exact`` (Q, k) and log partitions ``log_z`` per strength (Q,); noisy (Q, W) made from
    the rows ``sources`` (Q,)."""

    random: np.ndarray
    noisy: np.ndarray
    sources: np.ndarray
    exact: np.ndarray
    log_z: dict[float, np.ndarray]


def exact_top_k(rows: np.ndarray, queries: np.ndarray, k: int, block: int = 1 << 16):
    """(Q, k) indices of the k rows (N, W) of highest cosine to each unit query (Q, W),
    most similar first, in float64, block by block over the rows: the ground truth."""
    q = queries.astype(np.float64)
    best_scores = np.empty((len(q), 0))
    best_index = np.empty((len(q), 0), dtype=np.int64)
    for start in range(0, len(rows), block):
        scores = q @ rows[start : start + block].astype(np.float64).T  # (Q, n)
        m = min(k, scores.shape[1])
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m]  # (Q, m), unordered
        scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        index = np.concatenate([best_index, top + start], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, order, 1)
        best_index = np.take_along_axis(index, order, 1)
    return best_index


def make_probe(rows: np.ndarray, queries: int, k: int, sigma: float, rng) -> Probe:
    """Random and noisy queries for ``rows`` (N, W), with float64 exact ground truth."""
    random = unit_rows(queries, rows.shape[1], rng)
    sources = rng.choice(len(rows), min(queries, len(rows)), replace=False)
    noisy = noisy_queries(rows, sources, sigma, rng)
    exact = exact_top_k(rows, random, k)
    log_z = {s: log_partition(rows, random, s) for s in STRENGTHS}
    return Probe(random, noisy, sources, exact, log_z)


def measure(built: Built, rows: np.ndarray, probe: Probe, k: int, repeats: int, rng) -> list:
    """One result row per setting of ``built``; then (when it can) the median time to
    replace UPDATE_ROWS random rows with new ones (this changes ``built``, not ``rows``)."""
    results = []
    for setting in built.settings:
        found = built.search(probe.random, k, setting)
        search = lambda s=setting: built.search(probe.random, k, s)  # noqa: E731
        times = [seconds(search) for _ in range(repeats)]
        noisy = built.search(probe.noisy, k, setting)
        label = f"{built.setting_name} {setting}" if built.setting_name else "-"
        results.append({
            "slots": len(rows), "candidate": built.name, "setting": label,
            "recall": recall_at_k(found, probe.exact),
            "found": source_found(noisy, probe.sources),
            **{f"mass_s{s:g}": mass_share(rows, probe.random, found, s, probe.log_z[s])
               for s in STRENGTHS},
            "build_s": built.build_s, "search_ms": 1000 * statistics.median(times),
            "update_ms": float("nan"), "index_mib": built.nbytes / 2**20, "note": built.note,
        })  # fmt: skip
    if built.replace is not None:
        times = []
        for _ in range(repeats):
            ids = rng.choice(len(rows), min(UPDATE_ROWS, len(rows)), replace=False).astype(np.int64)
            new = unit_rows(len(ids), rows.shape[1], rng)
            times.append(seconds(lambda i=ids, v=new: built.replace(i, v)))
        for result in results:
            result["update_ms"] = 1000 * statistics.median(times)
    return results


def set_threads(faiss, threads: int) -> None:
    """torch's and FAISS's threads (process-wide)."""
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)


def builders(args, faiss, hnswlib, n: int) -> list[Callable[[np.ndarray], Built]]:
    """Exact, then the candidates asked for (--candidates) that are installed, at N = n."""
    chosen = set(args.candidates)
    out: list[Callable[[np.ndarray], Built]] = [build_exact]
    if faiss is not None and "faiss-random" in chosen:
        out.append(lambda r: build_tiered_faiss(faiss, r, "random"))
    if faiss is not None and "faiss-memory" in chosen:
        out.append(lambda r: build_tiered_faiss(faiss, r, "memory"))
    if faiss is not None and "ivf-memory" in chosen:
        nprobes = nprobe_values(ivf_nlist(n), args.nprobe)
        out.append(lambda r: build_ivf_memory(faiss, r, nprobes))
    if hnswlib is not None and "hnswlib" in chosen:
        for m in args.hnsw_m:
            out.append(lambda r, m=m: build_hnswlib(hnswlib, r, m, args.ef, args.threads))
    if faiss is not None and "faiss-hnsw" in chosen:
        for m in args.faiss_hnsw_m:
            out.append(lambda r, m=m: build_faiss_hnsw(faiss, r, m, args.ef))
    return out


def run_size(args, faiss, hnswlib, n: int) -> list[dict]:
    """Every candidate at N = n; each result row carries the size's wall time."""
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows = unit_rows(n, args.width, rng)
    set_threads(faiss, os.cpu_count() or 1)
    probe = make_probe(rows, args.queries, args.k, args.sigma, rng)
    results = []
    for build in builders(args, faiss, hnswlib, n):
        set_threads(faiss, os.cpu_count() or 1)
        built = build(rows)
        set_threads(faiss, args.threads)
        results += measure(built, rows, probe, args.k, args.repeats, rng)
        for r in results[-len(built.settings) :]:
            print(f"{n} {r['candidate']} {r['setting']}: recall {r['recall']:.3f}, found "
                  f"{r['found']:.3f}, {r['search_ms']:.2f} ms", flush=True)  # fmt: skip
        del built
    for result in results:
        result["size_wall_s"] = time.perf_counter() - start
    return results


def read_rows(path: Path) -> list[dict]:
    """Result rows from a CSV this script wrote; numbers as numbers."""
    with open(path, newline="") as handle:
        return [{key: number(v) for key, v in row.items()} for row in csv.DictReader(handle)]


def number(text: str) -> int | float | str:
    """``text`` as a number where it is one: an int where it is whole."""
    if not NUMBER.fullmatch(text):
        return text
    return int(float(text)) if float(text).is_integer() else float(text)


def markdown(rows: list[dict], args, machine: str) -> str:
    """The results table, the settings, each size's wall time and the machine."""
    lines = [
        "# kNN retrieval on a filled memory: quality and speed",
        "",
        f"Settings: width {args.width}, k = {args.k}, {args.queries} queries per batch, all N",
        "rows written, random gaussian rows normalised. 'recall': recall@k on random unit",
        "queries against float64 exact search. 'found': share of noisy queries whose source",
        f"row is among the k returned; noise sigma {args.sigma} per coordinate of a row of",
        "unit-variance coordinates (sigma / sqrt(W) on the unit row), then normalised: cosine",
        f"~{1 / math.sqrt(1 + args.sigma**2):.2f} to the source. 'mass s': share of the",
        "softmax(s cos) mass over all N rows (float64) held by the k returned, random queries",
        "(exact's is the top-k share, not 1). 'search ms': the whole batch, median of",
        f"{args.repeats}, on {args.threads} thread(s) (torch and FAISS). 'update ms': replace",
        f"{UPDATE_ROWS} rows by new ones (FAISS: remove_ids + add_with_ids; hnswlib: add_items",
        "with the existing labels, in place; exact: its norms cache), median. Builds use every",
        "core. 'index MiB': FAISS serialised, hnswlib index_file_size (both hold the vectors);",
        "exact: its norms only (it searches the memory itself). HNSW: ef_construction 200.",
        "",
        "| N | candidate | setting | recall | found | mass s1 | mass s10 | build s | search ms "
        "| update ms | index MiB | note |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        update = "n/a" if math.isnan(r["update_ms"]) else f"{r['update_ms']:.2f}"
        lines.append(
            f"| {int(r['slots'])} | {r['candidate']} | {r['setting']} | {r['recall']:.3f} "
            f"| {r['found']:.3f} | {r['mass_s1']:.2e} | {r['mass_s10']:.2e} | {r['build_s']:.2f} "
            f"| {r['search_ms']:.2f} | {update} | {r['index_mib']:.2f} | {r['note']} |"
        )
    lines += ["", "Wall time of each size (its candidates and the ground truth):", ""]
    for n in sorted({int(r["slots"]) for r in rows}):
        of_n = [r for r in rows if int(r["slots"]) == n]
        names = ", ".join(dict.fromkeys(r["candidate"] for r in of_n))
        lines.append(f"- N = {n}: {of_n[0]['size_wall_s']:.0f} s; {names}")
    lines += ["", "A size that lists fewer candidates ran a reduced set (--candidates): all of",
              "them would not fit a 10-minute run there (see the build times).", ""]  # fmt: skip
    return "\n".join([*lines, "Machine:", "", machine, ""])


def plot(rows: list[dict], path: Path) -> None:
    """Recall vs search time per candidate, one panel per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({int(r["slots"]) for r in rows})
    names = list(dict.fromkeys(r["candidate"] for r in rows))  # one colour each, every panel
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for name in dict.fromkeys(r["candidate"] for r in rows if int(r["slots"]) == n):
            series = [r for r in rows if int(r["slots"]) == n and r["candidate"] == name]
            ax.semilogx([r["search_ms"] for r in series], [r["recall"] for r in series],
                        "o-", label=name, color=f"C{names.index(name) % 10}")  # fmt: skip
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel="ms per search of the batch", ylabel="recall@k", title=f"N = {n}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1 << 14, 1 << 16, 1 << 18])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.5, help="noise of the noisy queries")
    parser.add_argument("--threads", type=int, default=1, help="threads of searches/updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--hnsw-m", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--faiss-hnsw-m", type=int, nargs="+", default=[32])
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI size)")
    parser.add_argument("--append", action="store_true", help="keep other sizes' rows")
    parser.add_argument("--report-only", action="store_true", help="rewrite md/png from csv")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.slots, args.queries, args.repeats, args.hnsw_m = [8192], 32, 1, [16]
    machine = machine_markdown()  # before the threads are set
    faiss = load_faiss()
    try:
        import hnswlib
    except ImportError:
        hnswlib = None
        print("hnswlib is not installed: its candidates are skipped", file=sys.stderr)
    csv_path = args.out / "knn_recall.csv"
    rows = read_rows(csv_path) if args.report_only else []
    for n in [] if args.report_only else args.slots:
        rows += run_size(args, faiss, hnswlib, n)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.append and csv_path.exists():
        rows = [r for r in read_rows(csv_path) if int(r["slots"]) not in args.slots] + rows
        rows.sort(key=lambda r: int(r["slots"]))  # stable: candidates keep their order
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, args, machine)
    (args.out / "knn_recall.md").write_text(text)
    plot(rows, args.out / "knn_recall.png")
    print(text)


if __name__ == "__main__":
    main()
