"""Time per step and peak memory of the RAM as slots grow: sparse (exact, FAISS) and dense.

Settings from the sparse RAM issue: width 64, 4 read heads, k = 8, batch 8, sequence length
32, forward + backward. Sparse modes: "exact" and "faiss" are the sparse DNC (8 temporal
links per slot each way, the default), "faiss-sam" is SAM (links = 0). A linear layer maps
random inputs to the RAM's interface so that gradients flow through every step. Each
configuration runs in its own process, so its resident memory is its own. Memory is read
from /proc: the resident set after setup (memory matrices, index) and the peak growth above
it while the timed steps run (the peak is reset with /proc/self/clear_refs first): what
training costs beyond the matrices. Writes sparse_ram_scaling.md / .csv / .png under
experiments/results/.

With ``--device cuda`` the same runs happen on the GPU (modes "exact" and "exact-sam" by
default: FAISS searches on the CPU), memory is what PyTorch allocated on the GPU (after
setup, and the peak above it), and the files are named sparse_ram_scaling_cuda.*.

    python experiments/benchmarks/sparse_ram_scaling.py [--max-log2 20] [--dense-slots 1024 2048]
    python experiments/benchmarks/sparse_ram_scaling.py --device cuda
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown, reset_peak_rss, status_mib

from tiered import detach_state
from tiered.malloc import tune_malloc
from tiered.tiers import RAM, SparseRAMState

RESULTS = Path(__file__).resolve().parents[1] / "results"
B, T, W, R, K, LINKS = 8, 32, 64, 4, 8, 8
SPARSE_MODES = {"cpu": ("exact", "faiss", "faiss-sam"), "cuda": ("exact", "exact-sam")}


class MemoryProbe:
    """Resident memory of this process (CPU) or PyTorch's allocations on the GPU (CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return status_mib("VmRSS")

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return status_mib("VmHWM")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def prefilled(ram: RAM, state: SparseRAMState, fraction: float) -> SparseRAMState:
    """The state with its first ``fraction`` of rows written with random contents, as after
    a long run, and its caches (kNN index, usage heap) rebuilt from them."""
    rows = int(fraction * ram.slots)
    with torch.no_grad():
        state.memory[:, :rows].normal_()
        state.tape.written[:, :rows] = True
        state.last_access[:, :rows] = 0
    return ram.rebuild_state(state)


# A dense RAM reads every slot: nothing to miss.
DENSE_QUALITY = {"recall_random": 1.0, "recall_noisy": 1.0, "source_found": 1.0}


def index_quality(state: SparseRAMState, queries: int = 64, noise: float = 0.5) -> dict:
    """Recall@K of the state's kNN index against exact search, over its written rows:
    random queries, and stored rows plus Gaussian noise (``noise`` per coordinate of these
    unit-variance rows), with the share of those whose source row is among the K found.
    Measured after the timed steps, on batch element 0's index as it stands."""
    from tiered.knn import exact_search

    tape = state.tape
    memory, written = tape.memory[:1], tape.written[:1]
    g = torch.Generator(device="cpu").manual_seed(1)
    rows = torch.nonzero(written[0]).flatten().cpu()
    source = rows[torch.randint(0, len(rows), (queries,), generator=g)]
    noisy = memory[0, source.to(memory.device)] + noise * torch.randn(
        queries, memory.shape[-1], generator=g
    ).to(memory.device)
    randoms = torch.randn(1, queries, memory.shape[-1], generator=g).to(memory.device)

    def recall(q: torch.Tensor) -> float:
        found = tape.index.search(tape.memory, tape.written, q.expand(B, -1, -1), K)[:1]
        exact = exact_search(memory, written, q, K)
        hits = (exact.unsqueeze(-1) == found.unsqueeze(-2)).any(-1) & (exact >= 0)
        return float(hits.sum() / (exact >= 0).sum().clamp_min(1))

    found = tape.index.search(tape.memory, tape.written, noisy[None].expand(B, -1, -1), K)[0]
    return {
        "recall_random": recall(randoms),
        "recall_noisy": recall(noisy[None]),
        "source_found": float((found.cpu() == source[:, None]).any(-1).float().mean()),
    }


def worker(
    mode: str,
    slots: int,
    repeats: int,
    device: torch.device,
    prefill: float,
    nprobe: int | None = None,
    search_threads: int = 1,
) -> dict:
    """Run one configuration in this process and report its timings and peak memory."""
    tune_malloc()
    torch.manual_seed(0)
    if mode == "dense":
        ram = RAM(slots, W, read_heads=R, sparse=False)
    else:
        index, _, variant = mode.partition("-")
        links = 0 if variant == "sam" else LINKS
        probes = {} if nprobe is None else {"nprobe": nprobe}  # None: the RAM's default
        probes["search_threads"] = search_threads
        ram = RAM(slots, W, read_heads=R, k=K, links=links, sparse=True, index=index, **probes)
    ram = ram.to(device)
    layer = torch.nn.Linear(16, ram.interface_size).to(device)
    x = torch.randn(B, T, 16, device=device)
    probe = MemoryProbe(device)
    start = time.perf_counter()
    state = ram.initial_state(B, device=device)
    if prefill > 0 and mode != "dense":
        state = prefilled(ram, state, prefill)
    probe.sync()
    setup = time.perf_counter() - start
    times = []
    after_setup = probe.current_mib()
    probe.reset_peak()
    for i in range(repeats + 1):
        start = time.perf_counter()
        reads = []
        for t in range(T):
            read, state, _ = ram(layer(x[:, t]), state)
            reads.append(read)
        torch.stack(reads, 1).pow(2).mean().backward()
        probe.sync()
        elapsed = time.perf_counter() - start
        layer.zero_grad(set_to_none=True)
        # Dense states are values: start a new sequence. Sparse ones continue the sequence,
        # detached, as truncated BPTT would.
        state = ram.initial_state(B, device=device) if mode == "dense" else detach_state(state)
        if i > 0:
            times.append(elapsed / T)
    return {
        "mode": mode,
        "slots": slots,
        "ms_per_step": 1000 * sorted(times)[len(times) // 2],
        "setup_s": setup,
        "resident_after_setup_mib": after_setup,
        "peak_growth_mib": probe.peak_mib() - after_setup,
        # rows ever written, mean over the batch (FAISS indexes only these)
        "rows_written": float(state.tape.in_use.float().mean()) if mode != "dense" else slots,
        **(index_quality(state) if mode != "dense" else DENSE_QUALITY),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-log2", type=int, default=10)
    parser.add_argument("--max-log2", type=int, default=20)
    parser.add_argument("--dense-slots", type=int, nargs="*", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", choices=sorted(SPARSE_MODES), default="cpu")
    parser.add_argument("--modes", nargs="*", help="sparse modes (default: by device)")
    parser.add_argument(
        "--prefill", type=float, default=0.0, help="fraction of rows written before timing"
    )
    parser.add_argument("--nprobe", type=int, help="FAISS lists probed (the RAM's default)")
    parser.add_argument("--search-threads", type=int, default=1, help="RAM search_threads")
    parser.add_argument("--log2", type=int, nargs="*", help="sizes (default: every other)")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "SLOTS"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.worker:
        mode, slots = args.worker[0], int(args.worker[1])
        result = worker(mode, slots, args.repeats, device, args.prefill, args.nprobe,
                        args.search_threads)  # fmt: skip
        print(json.dumps(result))
        return
    modes = tuple(args.modes) if args.modes else SPARSE_MODES[args.device]
    stem = "sparse_ram_scaling" + ("" if args.device == "cpu" else f"_{args.device}")
    stem += f"_prefill{args.prefill:g}" if args.prefill > 0 else ""
    stem += f"_nprobe{args.nprobe}" if args.nprobe is not None else ""
    stem += ("_log2-" + "-".join(map(str, args.log2))) if args.log2 else ""
    stem += f"_threads{args.search_threads}" if args.search_threads > 1 else ""
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    runs = [("dense", n) for n in args.dense_slots]
    for log2 in args.log2 or range(args.min_log2, args.max_log2 + 1, 2):
        runs += [(mode, 2**log2) for mode in modes]
    csv_path = args.out / f"{stem}.csv"
    csv_path.unlink(missing_ok=True)
    for mode, slots in runs:
        command = [sys.executable, __file__, "--worker", mode, str(slots)]
        command += ["--repeats", str(args.repeats), "--device", args.device]
        command += ["--prefill", str(args.prefill)]
        command += [] if args.nprobe is None else ["--nprobe", str(args.nprobe)]
        command += ["--search-threads", str(args.search_threads)]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, timeout=args.run_timeout
            )
        except subprocess.TimeoutExpired:
            print(f"{mode} at {slots} slots: over {args.run_timeout} s, skipped", file=sys.stderr)
            continue
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
        # each row as it comes, so that a run cut short keeps what it measured
        with open(csv_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            if len(rows) == 1:
                writer.writeheader()
            writer.writerow(rows[-1])
    if not rows:
        sys.exit("sparse_ram_scaling: every run failed (their errors are above)")
    memory = "GPU memory allocated" if args.device == "cuda" else "resident"
    lines = [
        f"# RAM scaling on {args.device}: time per step and peak memory",
        "",
        *(
            [
                f"Sparse memories prefilled: the first {args.prefill:g} of their rows written",
                "with random contents (as after a long run) before timing; their setup",
                "includes that and building the index over them.",
                "",
            ]
            if args.prefill > 0
            else []
        ),
        f"FAISS probes {args.nprobe} inverted lists per query."
        if args.nprobe is not None
        else "FAISS probes the RAM's default number of inverted lists (nprobe).",
        f"The batch's FAISS indexes are searched {args.search_threads} at a time "
        "(RAM search_threads).",
        "Without --prefill a FAISS index holds at most 4224 rows, mostly searched exactly",
        "(EXHAUSTIVE_ROWS), so nprobe matters on filled memories.",
        "",
        f"Width {W}, {R} read heads, k = {K}, batch {B}, sequence length {T}, float32, forward",
        f"+ backward; median of {args.repeats} sequences after one warm-up, per step. 'exact'",
        f"and 'faiss' are the sparse DNC ({LINKS} links per slot each way), 'faiss-sam' is SAM",
        "(no links). Sparse",
        "runs continue one sequence across repeats (detaching between them, as truncated",
        "BPTT does), so the index is updated incrementally, never rebuilt. 'resident after",
        "setup' is the process's resident set once the state exists (untouched pages of the",
        "zero-filled memory are not resident); 'peak growth' is the most the resident set",
        "rose above that while the timed sequences ran: activations saved for backward,",
        "temporaries, the gradient accumulator's touched rows. On CUDA both columns are",
        "PyTorch's GPU allocations instead of the resident set, and the peak includes the",
        "gradient accumulator whole: a dense (B, N, W) buffer there (on the CPU it is",
        "zero-filled lazily, and only the rows backward touches become resident). 'rows",
        "written': the rows each batch element had written by the end (4 sequences of 32",
        "steps, at most R K + 1 = 33 new rows a step); FAISS indexes only those rows.",
        f"The quality of the index after the timed steps, batch element 0, 64 queries, k = {K}",
        "(dense reads every slot: 1): 'recall random', recall@k of random queries against",
        "exact search over the written rows; 'recall noisy', the same for stored rows plus",
        "Gaussian noise of 0.5 per coordinate; 'source found', the share of those whose",
        "source row is among the k found.",
        "",
        f"| mode | slots | ms / step | {memory} after setup MiB | peak growth MiB | setup s "
        "| rows written | recall random | recall noisy | source found |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['mode']} | {r['slots']} | {r['ms_per_step']:.1f} | "
        f"{r['resident_after_setup_mib']:.0f} | {r['peak_growth_mib']:.0f} | {r['setup_s']:.2f} "
        f"| {r['rows_written']:.0f} | {r.get('recall_random', float('nan')):.3f} "
        f"| {r.get('recall_noisy', float('nan')):.3f} | {r.get('source_found', float('nan')):.3f} |"
        for r in rows
    ]
    for mode in modes:
        series = [r for r in rows if r["mode"] == mode]
        if len(series) > 1:
            ratio = series[-1]["ms_per_step"] / series[0]["ms_per_step"]
            lines.append(
                f"\n{mode}: time per step at N = {series[-1]['slots']} is {ratio:.2f} x "
                f"that at N = {series[0]['slots']}."
            )
    lines += ["", "Machine:", "", machine_markdown(), ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode in (*modes, "dense"):
        series = [r for r in rows if r["mode"] == mode]
        if series:
            slots = [r["slots"] for r in series]
            left.loglog(slots, [r["ms_per_step"] for r in series], "o-", label=mode)
            right.semilogx(slots, [r["peak_growth_mib"] for r in series], "o-", label=mode)
    left.set(xlabel="slots N", ylabel="ms per step (fwd+bwd)", title="time per step")
    right.set(xlabel="slots N", ylabel="MiB", title="peak memory growth during training")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / f"{stem}.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
