"""Issue 13, item 4: a long run of writes into a sparse DNC of 2^20 slots.

One sequence (batch ``--batch``) of ``--steps`` steps through ``tiered.tiers.RAM`` in sparse
mode with temporal links (the sparse DNC), trained as truncated BPTT would: forward and
backward over windows of ``--window`` steps, the state detached between windows. Every
``--every`` steps it records the time per step of the last window, the resident set, the
rows written, the link tables' and the LRU heap's sizes, and the index's recall on noisy
stored rows. The memory fills from empty: the FAISS index retrains its quantiser at each
doubling of the rows written, the LRU heap compacts itself, the link tables keep K_L links
per slot each way, so none of them should grow the step time or the memory without bound.

    .venv/bin/python experiments/benchmarks/long_run.py [--steps 100000] [--slots 1048576]

Writes experiments/results/long_run.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown, status_mib, write_csv

from tiered.malloc import tune_malloc
from tiered.state import detach_state
from tiered.tiers import RAM

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"


def source_found(state, queries: int = 64, noise: float = 0.5, k: int = 8) -> float:
    """Share of stored rows plus noise (sigma ``noise`` per coordinate) whose own row is
    among the k the index returns, batch element 0."""
    tape = state.tape
    rows = torch.nonzero(tape.written[0]).flatten()
    if len(rows) == 0:
        return float("nan")
    g = torch.Generator().manual_seed(len(rows))
    source = rows[torch.randint(0, len(rows), (queries,), generator=g)]
    scale = tape.memory[0, source].std(dim=-1, keepdim=True)
    noisy = tape.memory[0, source] + noise * scale * torch.randn(
        queries, tape.memory.shape[-1], generator=g
    )
    B = tape.memory.shape[0]
    found = tape.index.search(tape.memory, tape.written, noisy[None].expand(B, -1, -1), k)[0]
    return float((found == source[:, None]).any(-1).float().mean())


def run(args: argparse.Namespace) -> list[dict]:
    tune_malloc()
    torch.manual_seed(0)
    ram = RAM(args.slots, args.width, read_heads=args.read_heads, k=8, links=8, sparse=True,
              index="faiss", nprobe=args.nprobe)  # fmt: skip
    layer = torch.nn.Linear(16, ram.interface_size)
    started = time.perf_counter()
    state = ram.initial_state(args.batch)
    setup = time.perf_counter() - started
    records = [{"steps": 0, "ms_per_step": float("nan"), "resident_mib": status_mib("VmRSS"),
                "rows_written": 0.0, "heap_entries": 0, "source_found": float("nan"),
                "elapsed_s": setup}]  # fmt: skip
    print(records[-1], flush=True)
    done = 0
    while done < args.steps:
        tick = time.perf_counter()
        window = min(args.window, args.steps - done)
        x = torch.randn(args.batch, window, 16)
        reads = []
        for t in range(window):
            read, state, _ = ram(layer(x[:, t]), state)
            reads.append(read)
        torch.stack(reads, 1).pow(2).mean().backward()
        layer.zero_grad(set_to_none=True)
        state = detach_state(state)
        done += window
        window_ms = 1000 * (time.perf_counter() - tick) / window
        if done // args.every > (done - window) // args.every or done >= args.steps:
            tape = state.tape
            records.append({
                "steps": done,
                "ms_per_step": window_ms,
                "resident_mib": status_mib("VmRSS"),
                "rows_written": float(tape.written.float().sum(-1).mean()),
                "heap_entries": sum(len(h) for h in tape.usage.heaps) // args.batch,
                "source_found": source_found(state),
                "elapsed_s": time.perf_counter() - started,
            })  # fmt: skip
            print(records[-1], flush=True)
    return records


def write(records: list[dict], args: argparse.Namespace, out: Path) -> None:
    write_csv(out / "long_run.csv", records)
    timed = records[1:]
    first, last = timed[: max(1, len(timed) // 10)], timed[-max(1, len(timed) // 10) :]

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    lines = [
        "# A long run of writes into a sparse DNC",
        "",
        f"{args.steps} steps of one sequence (batch {args.batch}) through a sparse RAM with "
        f"temporal links (the sparse DNC, 8 links per slot each way) of {args.slots} slots, "
        f"width {args.width}, {args.read_heads} read heads, k = 8, FAISS (nprobe "
        f"{args.nprobe}); forward and backward over windows of {args.window} steps, the state "
        "detached between them (truncated BPTT). Interfaces: a random linear map of Gaussian "
        "inputs. The memory starts empty; 'rows written' counts the rows ever written "
        "(batch mean). 'heap entries': the LRU heap of a batch element (stale entries "
        "included; it compacts itself beyond 4x the rows accessed). 'source found': share "
        "of 64 stored rows plus noise (sigma 0.5 of the row's spread) whose row the index "
        "returns among k = 8.",
        "",
        f"- setup (empty state, index): {records[0]['elapsed_s']:.1f} s; resident after it "
        f"{records[0]['resident_mib']:.0f} MiB",
        f"- first tenth of the run: {mean(first, 'ms_per_step'):.2f} ms per step, resident "
        f"{mean(first, 'resident_mib'):.0f} MiB",
        f"- last tenth: {mean(last, 'ms_per_step'):.2f} ms per step, resident "
        f"{mean(last, 'resident_mib'):.0f} MiB",
        f"- at the end: {timed[-1]['rows_written']:.0f} rows written, "
        f"{timed[-1]['heap_entries']} heap entries, source found {timed[-1]['source_found']:.3f}; "
        f"wall time {timed[-1]['elapsed_s'] / 60:.1f} min",
        "",
        "| steps | ms / step (last window) | resident MiB | rows written | heap entries "
        "| source found |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    stride = max(1, len(timed) // 20)
    for r in timed[::stride] + ([timed[-1]] if (len(timed) - 1) % stride else []):
        lines.append(
            f"| {r['steps']} | {r['ms_per_step']:.2f} | {r['resident_mib']:.0f} | "
            f"{r['rows_written']:.0f} | {r['heap_entries']} | {r['source_found']:.3f} |"
        )
    lines += ["", "![long run](long_run.png)", "", "Machine:", "", machine_markdown(), ""]
    (out / "long_run.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["steps"] for r in timed]
    axes[0].plot(steps, [r["ms_per_step"] for r in timed])
    axes[0].set_ylabel("ms per step")
    axes[1].plot(steps, [r["resident_mib"] for r in timed])
    axes[1].set_ylabel("resident MiB")
    for ax in axes:
        ax.set_xlabel("steps")
    fig.tight_layout()
    fig.savefig(out / "long_run.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=1 << 20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--read-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--every", type=int, default=2000)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write(run(args), args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
