"""Issue 13, item 3: key-value recall models tested far beyond their training lengths.

Reads the runs of ``experiments/sweeps/large_memory.yaml`` (trained with a curriculum up to
2048 items), then, for each run, forward only, in float32 on the CPU:

- tests it on sequences of ``--items`` items (2048 and 16384 by default; 16384 is 8x or more
  the most trained), in chunks of ``--chunk`` steps whose wall time is recorded as the memory fills;
- samples the sparse RAM's index recall on the model's own queries (``recall_every``);
- reports bits wrong, the share of queries answered exactly, and the chunk times.

It also measures what a dense RAM (the full DNC, same width and controller) costs per step
and holds in state at growing slot counts, forward only: a dense RAM needs a slot per item,
so the long tests need N >= 16384 slots.

    .venv/bin/python experiments/benchmarks/large_memory.py [--items 2048 16384]

Writes experiments/results/large_memory/{large_memory.md, test.csv, chunks.csv, dense.csv,
curves.png, step_time.png}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown, reset_peak_rss, status_mib, write_csv

from tiered.controllers import LSTMController
from tiered.tasks import KeyValueRecall
from tiered.tiers import RAM, Register

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "experiments" / "results" / "sweeps" / "large_memory"
RESULTS = ROOT / "experiments" / "results" / "large_memory"


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor reachable in ``value`` (tuples, lists, NamedTuples, dicts)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(tensor_bytes(v) for v in vars(value).values())
    return 0


def sparse_rams(controller: LSTMController) -> list[RAM]:
    return [tier for tier in controller.tiers if isinstance(tier, RAM) and tier.sparse]


def test_model(
    controller: LSTMController,
    task: KeyValueRecall,
    items: int,
    batch_size: int,
    chunk: int,
    recall_every: int,
    seed: int = 1234,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Run ``controller`` over one test batch of ``items`` items, forward only.

    Returns the summary (bits wrong per sequence, bit error rate, queries exact, index
    recall, ms per step, peak resident MiB) and one record per chunk (steps done, rows
    written, ms per step in that chunk).
    """
    test = KeyValueRecall(
        items=(items, items), eval_items=(items, items), key_bits=task.key_bits,
        value_bits=task.value_bits, queries=task.queries, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    batch = test.make_batch("test", 0)
    reset_peak_rss()
    for ram in sparse_rams(controller):
        ram.recall_every, ram.samples_recall = recall_every, recall_every > 0
    controller.eval()
    state, outputs, chunks = None, [], []
    checked = hits = 0.0
    T = batch.inputs.shape[1]
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, T, chunk):
            tick = time.perf_counter()
            out = controller(batch.inputs[:, start : start + chunk], state)
            seconds = time.perf_counter() - tick
            state = out.state
            outputs.append(out.output)
            steps = out.output.shape[1]
            rows = 0.0
            for ram in sparse_rams(controller):
                aux = out.aux[ram.name]
                checked += float(aux.recall_checked.sum())
                hits += float(aux.recall_hits.sum())
                rows = float(aux.slots_used[:, -1].mean())
            chunks.append({"items": items, "steps_done": start + steps, "rows_written": rows,
                           "ms_per_step": 1000 * seconds / steps})  # fmt: skip
    total = time.perf_counter() - started
    logits = torch.cat(outputs, dim=1)
    wrong = ((logits > 0) != (batch.targets > 0.5)) & batch.mask.unsqueeze(-1)  # (B, T, V)
    queries = batch.mask.sum()
    summary = {
        "items": items,
        "sequences": batch_size,
        "bits_wrong_per_sequence": float(wrong.sum()) / batch_size,
        "bit_error_rate": float(wrong.sum()) / float(queries * task.value_bits),
        "queries_exact": float((~wrong.any(dim=-1))[batch.mask].float().mean()),
        "index_recall": hits / checked if checked else float("nan"),
        "recall_checked": checked,
        "ms_per_step": 1000 * total / T,
        "peak_rss_mib": status_mib("VmHWM"),
    }
    return summary, chunks


@contextlib.contextmanager
def index_variant(controller: LSTMController, variant: str) -> Iterator[None]:
    """Test with the sparse RAMs searching as trained ("trained"), with FAISS probing N
    lists ("nprobe=N"), or exactly ("exact"); restored after. This separates what the
    index loses from what the model does with what it finds."""
    rams = sparse_rams(controller)
    saved = [(ram.index, ram.nprobe) for ram in rams]
    for ram in rams:
        if variant == "exact":
            ram.index = "exact"
        elif variant.startswith("nprobe="):
            ram.nprobe = int(variant.split("=", 1)[1])
        elif variant != "trained":
            raise ValueError(f"--index: {variant!r} is not trained, nprobe=N or exact")
    try:
        yield
    finally:
        for ram, (index, nprobe) in zip(rams, saved, strict=True):
            ram.index, ram.nprobe = index, nprobe


def load_run(run_dir: Path) -> tuple[LSTMController, KeyValueRecall, dict[str, Any]]:
    """The trained controller and task of a sweep run folder (its config and last.ckpt)."""
    import tempfile

    import yaml

    from tiered.cli import make_cli

    # the model and task sections of the config the run saved (the rest is fit's)
    configs = run_dir.glob("logs/version_*/config.yaml")
    newest = max(configs, key=lambda path: int(path.parent.name.split("_")[1]))
    saved = yaml.safe_load(newest.read_text())
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(yaml.safe_dump({k: saved[k] for k in ("model", "data")}))
        cli = make_cli(["--config", str(config), "--trainer.logger", "false",
                        "--trainer.default_root_dir", folder], run=False)  # fmt: skip
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    cli.model.load_state_dict(checkpoint["state_dict"])
    info = {"step": checkpoint["global_step"]}
    for name, value in checkpoint.get("callbacks", {}).items():
        if name.startswith("ThresholdCurriculum"):
            info["trained_items"] = value["level"]
    return cli.model.controller, cli.datamodule, info


def dense_probe(
    slots: Iterable[int], width: int, hidden: int, input_size: int, output_size: int, steps: int
) -> list[dict[str, float]]:
    """A dense RAM's forward step time and state size at each slot count (batch 1)."""
    rows = []
    for n in slots:
        ram = RAM(slots=n, width=width, read_heads=1, sparse=False)
        controller = LSTMController(input_size, output_size, Register(hidden_size=hidden), [ram])
        x = torch.randn(1, steps, input_size)
        with torch.no_grad():
            state = controller.initial_state(1)
            state_bytes = tensor_bytes(state)
            controller(x[:, :2], state)  # warm-up
            tick = time.perf_counter()
            controller(x, state)
            ms = 1000 * (time.perf_counter() - tick) / steps
        rows.append({"slots": n, "ms_per_step": ms, "state_mib": state_bytes / 2**20})
    return rows


def learning_curves(run_dirs: list[Path]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per run: val/bit_errors, curriculum top and step seconds against the step."""
    curves = {}
    for run_dir in run_dirs:
        series: dict[str, list[tuple[int, float]]] = {}
        for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
            with open(path) as handle:
                for row in csv.DictReader(handle):
                    for key in ("val/bit_errors", "curriculum/items_high", "train/step_seconds",
                                "val/recall/ram"):  # fmt: skip
                        if row.get(key):
                            series.setdefault(key, []).append((int(row["step"]), float(row[key])))
        curves[run_dir.name] = series
    return curves


def plot(curves: dict, chunks: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, series in curves.items():
        for ax, key in zip(axes, ("val/bit_errors", "curriculum/items_high",
                                  "train/step_seconds"), strict=True):  # fmt: skip
            if key in series:
                steps, values = zip(*series[key], strict=True)
                ax.plot(steps, values, label=name.split(",")[-1])
    for ax, title in zip(axes, ("validation bits wrong per sequence",
                                "items (top of the curriculum range)",
                                "training step seconds"), strict=True):  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    axes[1].set_yscale("log", base=2)
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in sorted({c["run"] for c in chunks}):
        longest = max(c["items"] for c in chunks)
        mine = [c for c in chunks if c["run"] == run and c["items"] == longest]
        ax.plot([c["rows_written"] for c in mine], [c["ms_per_step"] for c in mine],
                label=run.split(",")[-1])  # fmt: skip
    ax.set_xlabel("rows written")
    ax.set_ylabel("ms per step (forward, batch of the test)")
    ax.set_title("test step time as the memory fills")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "step_time.png", dpi=100)
    plt.close(fig)


def markdown(
    tests: list[dict], dense: list[dict], infos: dict, setup: dict, args: argparse.Namespace
) -> str:
    trained = max((i["trained_items"][1] for i in infos.values() if "trained_items" in i),
                  default=0)  # fmt: skip
    longest = max(args.items)
    lines = [
        "# Key-value recall in a large memory (issue 13, item 3)",
        "",
        "Task: `KeyValueRecall`, 24-bit keys, 8-bit values, 8 queries per sequence (64 scored "
        "bits). Model: `experiments/sweeps/large_memory.yaml` (Register of 128 + a sparse RAM, "
        "SAM, 2^16 slots, width 48, 1 read head, k 8, FAISS IVF with its quantiser trained on "
        "the memory, nprobe 32 of 256 lists, exhaustive_rows lowered to 256 so that the "
        "approximate index serves every search once a sequence has written more than 256 "
        "rows). Trained with `ThresholdCurriculum` (top of the item range doubled after each "
        "validation under 1 wrong bit per sequence, up to 2048), batch 8, Adam 3e-3, "
        "on the 2-core CPU, 3 seeds run side by side with 1 thread each (max 1 h each).",
        "",
        f"Test: forward only, {args.batch} sequences per size, chunks of {args.chunk} steps; "
        f"index recall sampled every {args.recall_every} steps on the model's own queries "
        "(recall@8 against exact search over the written rows). 'test index': the RAM "
        "searching as trained, with FAISS probing more lists, or exactly, which separates "
        "what the index loses from what the model does with the rows it is given.",
        "",
        "| run | trained steps | trained items | test index | test items | bits wrong / seq "
        "| bit error rate | queries exact | index recall@8 | ms / step | peak RSS MiB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in tests:
        info = infos[t["run"]]
        lines.append(
            f"| {t['run']} | {info['step']} | {info.get('trained_items')} | {t['index']} | "
            f"{t['items']} | "
            f"{t['bits_wrong_per_sequence']:.2f} | {t['bit_error_rate']:.4f} | "
            f"{t['queries_exact']:.3f} | {t['index_recall']:.3f} | {t['ms_per_step']:.2f} | "
            f"{t['peak_rss_mib']:.0f} |"
        )
    by_items: dict[tuple[str, int], list[float]] = {}
    for t in tests:
        by_items.setdefault((t["index"], t["items"]), []).append(t["bit_error_rate"])
    lines += ["", "Median over seeds (spread: min to max):", "",
              "| test index | test items | bit error rate median | min | max |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for (index, items), rates in by_items.items():
        rates = sorted(rates)
        median = statistics.median(rates)
        lines.append(f"| {index} | {items} | {median:.4f} | {rates[0]:.4f} | {rates[-1]:.4f} |")
    lines += [
        "",
        "Chance is a bit error rate of 0.5. The SAM paper trained on up to 10K items and "
        "generalised to 200K (Rae et al. 2016, Figure 4); here training reached at most "
        f"{trained} items on 2 CPU cores, and the longest test is {longest} items "
        f"({longest / max(trained, 1):.0f}x).",
        "",
        "## A dense RAM on the same test",
        "",
        f"A dense RAM (the DNC) stores one item per slot, so the {longest}-item test needs "
        f"at least {longest} slots. Forward only, batch 1, same controller and width:",
        "",
        "| slots | ms / step | state MiB (batch 1) |",
        "|---:|---:|---:|",
    ]
    for d in dense:
        lines.append(f"| {d['slots']} | {d['ms_per_step']:.1f} | {d['state_mib']:.1f} |")
    if len(dense) >= 2:
        a, b = dense[-2], dense[-1]
        exponent = math.log(b["ms_per_step"] / a["ms_per_step"]) / math.log(b["slots"] / a["slots"])
        target, growth = longest, max(exponent, 1.0)
        ms = b["ms_per_step"] * (target / b["slots"]) ** growth
        state = b["state_mib"] * (target / b["slots"]) ** 2
        steps = target + setup["queries"]
        taken = "" if growth == exponent else " (taken as linear)"
        lines += [
            "",
            f"From the last two sizes the step time grows as N^{exponent:.2f}{taken}; at "
            f"{target} "
            f"slots that is about {ms:.0f} ms per step and {state / 1024:.1f} GiB of state per "
            f"sequence (the B x N x N link matrix), so one test sequence of {steps} steps "
            f"would take about {ms * steps / 1000 / 60:.0f} minutes forward on this machine, "
            f"and training (which keeps every step's link matrix for backward) would need "
            f"about {state * steps / 1024 / 1024:.0f} TiB. The sparse RAM's state is O(N W) "
            f"({setup['sparse_state_mib']:.0f} MiB of memory rows per sequence) and its step "
            "O(k W + index search).",
        ]
    lines += ["", "![learning curves](curves.png)", "", "![test step time](step_time.png)",
              "", "Machine:", "", machine_markdown(), ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--items", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--recall-every", type=int, default=256)
    parser.add_argument(
        "--index",
        nargs="+",
        default=["trained", "nprobe=128", "exact"],
        help="how the RAM searches at test: as trained, nprobe=N, or exact",
    )
    parser.add_argument("--dense-slots", type=int, nargs="*", default=[256, 512, 1024, 2048])
    parser.add_argument("--dense-steps", type=int, default=8)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dirs = sorted(p for p in args.runs.iterdir() if (p / "checkpoints" / "last.ckpt").exists())
    tests, chunks, infos = [], [], {}
    controller = task = None
    for run_dir in run_dirs:
        controller, task, infos[run_dir.name] = load_run(run_dir)
        for variant in args.index:
            with index_variant(controller, variant):
                for items in args.items:
                    summary, run_chunks = test_model(controller, task, items, args.batch,
                                                     args.chunk, args.recall_every)  # fmt: skip
                    tests.append({"run": run_dir.name, "index": variant, **summary})
                    if variant == args.index[0]:
                        chunks += [{"run": run_dir.name, **c} for c in run_chunks]
                    print(tests[-1], flush=True)
    dense = []
    if controller is not None and task is not None:
        ram = sparse_rams(controller)[0]
        dense = dense_probe(args.dense_slots, ram.width, controller.register.hidden_size,
                            task.input_size, task.output_size, args.dense_steps)  # fmt: skip
        print(dense, flush=True)
    write_csv(args.out / "test.csv", tests)
    write_csv(args.out / "chunks.csv", chunks)
    write_csv(args.out / "dense.csv", dense)
    curves = learning_curves(run_dirs)
    if chunks:
        plot(curves, chunks, args.out)
    setup = {"queries": task.queries if task is not None else 0,
             "sparse_state_mib": 0.0 if controller is None else sum(
                 r.slots * r.width * 4 / 2**20 for r in sparse_rams(controller))}  # fmt: skip
    (args.out / "large_memory.md").write_text(markdown(tests, dense, infos, setup, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
