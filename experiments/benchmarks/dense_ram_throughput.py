"""Forward+backward time per batch of the dense RAM beside the PyPI `dnc` package.

Settings from issue 15: Register (LSTM, hidden 64) + dense RAM of N slots, width 32, 4 read
heads, 1 write head; batch 8, length 20, 9 inputs; 2 torch threads. Every configuration runs
in a fresh process, as plain library use: no allocator tuning, no environment variable. The
configurations alternate within each round, so they share the machine's state side by side:

- ``dnc``: the PyPI `dnc` 1.1.0 package (ixaxaar/pytorch-dnc), installed without its
  dependencies into its own folder (``--dnc-dir``) and imported from there; the same
  interpreter supplies torch and numpy. Skipped, with a note, when pip cannot fetch it.
- ``tiered``: this library as a user gets it (``link_kernels`` "auto": the C kernels).
- ``tiered-torch``: the fused link step as torch operations (the CUDA path).
- ``tiered-reference``: the link update and reads as plain autograd (the code before the
  fused step).
- ``tiered-links``: the link step alone (C kernels), beside the traffic bound below.

At the largest slot count it also measures the machine's copy bandwidth (one 256 MiB copy,
bytes read plus bytes written per second, 2 threads) and the link-matrix traffic a step
must move: forward reads L_{t-1} and writes L_t; backward reads L_{t-1} and the gradient
of L_t and writes the gradient of L_{t-1}: 5 B H N^2 numbers per step. Writes
dense_ram_throughput.{md,csv,png} under experiments/results/.

    python experiments/benchmarks/dense_ram_throughput.py [--slots 16 64 256 1024]
        [--repeats 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
DNC_VERSION = "1.1.0"
BATCH, LENGTH, INPUTS, HIDDEN, WIDTH, READS = 8, 20, 9, 64, 32, 4
SIDES = ("dnc", "tiered", "tiered-torch", "tiered-reference")
LINKS = "tiered-links"  # the link step alone, C kernels: what the traffic bound bounds


def worker(side: str, slots: int, repeats: int, threads: int, device: str) -> list[float]:
    """Seconds per forward+backward batch, ``repeats`` times after one warm-up batch."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, LENGTH, INPUTS, device=device)
    if side == LINKS:
        return links_alone(slots, repeats)
    if side == "dnc":
        from dnc import DNC

        model = DNC(input_size=INPUTS, hidden_size=HIDDEN, rnn_type="lstm", num_layers=1,
                    nr_cells=slots, cell_size=WIDTH, read_heads=READS, batch_first=True,
                    gpu_id=0 if device == "cuda" else -1)  # fmt: skip

        def loss_of() -> torch.Tensor:
            out, _ = model(x, (None, None, None), reset_experience=True)
            return out.pow(2).mean()
    else:
        from tiered.controllers import LSTMController
        from tiered.tiers import RAM, Register, link_kernels

        link_kernels.set_kernel({"tiered": "auto", "tiered-torch": "torch",
                                 "tiered-reference": "reference"}[side])  # fmt: skip
        ram = RAM(slots, WIDTH, read_heads=READS, sparse=False)
        model = LSTMController(INPUTS, INPUTS, Register(HIDDEN), [ram]).to(device)

        def loss_of() -> torch.Tensor:
            out = model(x)
            return out.output.pow(2).mean() + sum(a.penalty.mean() for a in out.aux.values())

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 1):
        sync()
        start = time.perf_counter()
        loss_of().backward()
        sync()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if i > 0:
            times.append(elapsed)
    return times


def links_alone(slots: int, repeats: int) -> list[float]:
    """Seconds per batch of the link step alone (C kernels): ``LENGTH`` chained steps of
    ``link_step`` forward, then backward from every step's reads and the last link."""
    import torch

    from tiered.tiers import link_kernels

    link_kernels.set_kernel("auto")
    g = torch.Generator().manual_seed(0)
    B, N = BATCH, slots
    write = [torch.softmax(torch.randn(B, 1, N, generator=g), -1).requires_grad_()
             for _ in range(LENGTH)]  # fmt: skip
    reads = [torch.softmax(torch.randn(B, READS, N, generator=g), -1).requires_grad_()
             for _ in range(LENGTH)]  # fmt: skip
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        link = torch.zeros(B, 1, N, N)
        precedence = torch.zeros(B, 1, N)
        loss = 0.0
        for t in range(LENGTH):
            link, forward, backward = link_kernels.link_step(link, precedence, write[t], reads[t])
            precedence = (1 - write[t].sum(-1, keepdim=True)) * precedence + write[t]
            loss = loss + forward.sum() + backward.sum()
        (loss + link.sum()).backward()
        elapsed = time.perf_counter() - start
        if i > 0:
            times.append(elapsed)
    return times


def copy_bandwidth(threads: int, mib: int = 256) -> float:
    """Bytes read plus bytes written per second by a copy of ``mib`` MiB (best of 5)."""
    import torch

    torch.set_num_threads(threads)
    source = torch.ones(mib << 18)  # float32: 4 bytes each
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(_timed(lambda: target.copy_(source)) for _ in range(5))
    return 2 * source.numel() * 4 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def install_dnc(folder: Path, find_links: Path | None = None) -> str | None:
    """Install `dnc` into ``folder`` without dependencies (from ``find_links`` only, when
    given: a machine without network); None when done, else why not."""
    if (folder / "dnc" / "__init__.py").exists():
        return None
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
               str(folder), f"dnc=={DNC_VERSION}"]  # fmt: skip
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"pip could not install dnc=={DNC_VERSION}: {done.stderr.strip()[-300:]}"
    return None


def run_side(side: str, slots: int, args: argparse.Namespace) -> list[float]:
    """Run one configuration in a fresh process and return its times."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if side == "dnc":
        env["PYTHONPATH"] = os.pathsep.join(
            [str(args.dnc_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
    command = [sys.executable, __file__, "--worker", side, "--slots", str(slots),
               "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--device", args.device]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} at {slots} slots failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per configuration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    cache = Path.home() / ".cache" / "tiered-bench" / f"dnc-{DNC_VERSION}"
    parser.add_argument("--dnc-dir", type=Path, default=cache)
    parser.add_argument("--find-links", type=Path, help="a folder with the dnc wheel (offline)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: writes dense_ram_throughput_cuda.md only")  # fmt: skip
    parser.add_argument("--worker", choices=(*SIDES, LINKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        times = worker(args.worker, args.slots[0], args.repeats, args.threads, args.device)
        print(json.dumps(times))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import machine_markdown

    sides = list(args.sides)
    note = install_dnc(args.dnc_dir, args.find_links) if "dnc" in sides else None
    links = [LINKS] if args.device == "cpu" else []  # the C kernels are for CPUs
    if note:
        sides.remove("dnc")
        print(note, flush=True)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for slots in args.slots:
            for side in [*sides, *links]:
                times.setdefault((side, slots), []).extend(run_side(side, slots, args))
                median = statistics.median(times[(side, slots)])
                print(f"{side:17s} slots={slots:5d} median {median:.4f} s", flush=True)
    bandwidth = copy_bandwidth(args.threads) if args.device == "cpu" else float("nan")
    rows = []
    for slots in args.slots:
        row: dict[str, float | int | str] = {"slots": slots}
        for side in sides:
            values = times[(side, slots)]
            row[f"{side}_median_s"] = statistics.median(values)
            row[f"{side}_min_s"] = min(values)
            row[f"{side}_max_s"] = max(values)
        if "dnc" in sides:
            row["speedup_vs_dnc"] = row["dnc_median_s"] / row["tiered_median_s"]
        traffic = 5 * BATCH * 1 * slots * slots * 4 * LENGTH  # bytes per batch
        row["link_traffic_bytes"] = traffic
        row["traffic_bound_s"] = traffic / bandwidth
        row["links_alone_median_s"] = statistics.median(times.get((LINKS, slots), [math.nan]))
        row["links_alone_over_bound"] = row["links_alone_median_s"] / row["traffic_bound_s"]
        row["tiered_over_bound"] = row["tiered_median_s"] / row["traffic_bound_s"]
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        write_markdown(args, sides, rows, bandwidth, note, machine_markdown())
        return
    with open(args.out / "dense_ram_throughput.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_markdown(args, sides, rows, bandwidth, note, machine_markdown())
    plot(args.out / "dense_ram_throughput.png", sides, rows)


def write_markdown(args, sides, rows, bandwidth, note, machine) -> None:
    n = args.rounds * args.repeats
    head = "| slots | " + " | ".join(f"{s} s/batch" for s in sides)
    head += " | dnc / tiered | link traffic bound s | link step alone s | alone / bound"
    head += " | tiered / bound |"
    lines = [
        "# Dense RAM: forward+backward time per batch, beside the `dnc` package",
        "",
        f"Register (LSTM {HIDDEN}) + dense RAM, width {WIDTH}, {READS} read heads, 1 write "
        f"head; batch {BATCH}, length {LENGTH}, float32, {args.threads} torch threads, "
        f"{args.device.upper()}. "
        f"Median (min-max) of {n} batches: {args.repeats} timed after a warm-up batch in "
        f"each of {args.rounds} fresh processes per configuration, configurations alternating. "
        "Plain library use: no allocator tuning, no environment variable.",
        "",
        "- dnc: the PyPI `dnc` 1.1.0 package, installed with `--no-deps` into its own folder."
        + (f" Not run: {note}" if note else ""),
        "- tiered: this library as installed (fused link step in C kernels compiled for this "
        "machine at first use; hand-written backward for the memory write and content "
        "addressing).",
        "- tiered-torch: the fused link step as torch operations (the path CUDA takes).",
        "- tiered-reference: the link update and reads as plain autograd (the code the fused "
        "step replaced; the rest of the step as in tiered).",
        f"- link traffic bound: 5 B H N^2 float32 per step (forward: read L_t-1, write L_t; "
        f"backward: read L_t-1 and dL_t, write dL_t-1) times {LENGTH} steps, divided by the "
        f"measured copy bandwidth {bandwidth / 1e9:.1f} GB/s (bytes read + written, "
        f"{args.threads} threads). It ignores everything but the link matrices.",
        f"- link step alone: {LENGTH} chained `link_step` calls (C kernels) forward and "
        "backward, nothing else of the model: the part of a batch the bound describes.",
        "",
        head,
        "|" + "---:|" * (len(sides) + 6),
    ]
    for r in rows:
        cells = [str(r["slots"])]
        for side in sides:
            cells.append(
                f"{r[f'{side}_median_s']:.4f} ({r[f'{side}_min_s']:.4f}-{r[f'{side}_max_s']:.4f})"
            )
        cells.append(f"{r['speedup_vs_dnc']:.1f}x" if "speedup_vs_dnc" in r else "-")
        cells.append(f"{r['traffic_bound_s']:.4f}")
        cells.append(f"{r['links_alone_median_s']:.4f}")
        cells.append(f"{r['links_alone_over_bound']:.1f}x")
        cells.append(f"{r['tiered_over_bound']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Machine:", "", machine, ""]
    name = "dense_ram_throughput" + ("_cuda" if args.device == "cuda" else "")
    (args.out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def plot(path: Path, sides: list[str], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    slots = [r["slots"] for r in rows]
    for side in sides:
        ax.loglog(slots, [r[f"{side}_median_s"] for r in rows], "o-", label=side)
    ax.loglog(slots, [r["links_alone_median_s"] for r in rows], "k:", label="link step alone")
    ax.loglog(slots, [r["traffic_bound_s"] for r in rows], "k--", label="link traffic bound")
    ax.set_xlabel("slots N")
    ax.set_ylabel("seconds per batch (fwd+bwd)")
    ax.set_title(f"Dense RAM (B={BATCH}, T={LENGTH}, W={WIDTH}, R={READS})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
