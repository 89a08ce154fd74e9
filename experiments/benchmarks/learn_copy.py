"""Learning evidence on copy: Cache+RAM versus register only, trained on lengths 1..10.

For each seed and stack (the shipped YAML files experiments/stacks/cache_ram.yaml and
register.yaml with experiments/tasks/copy.yaml), train until the validation bit errors
per sequence (lengths 1..10, 256 sequences) fall below --target or --max-steps is
reached; then measure bit errors per sequence at lengths 1..10, 20 and 40 (NTM-style
generalisation). Writes learn_copy.md / .csv / .png under experiments/results/.

    python experiments/benchmarks/learn_copy.py --seeds 0 1 2 --max-steps 3000
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_markdown

from tiered.cli import make_cli
from tiered.metrics import bit_errors
from tiered.tasks import Copy

EXPERIMENTS = Path(__file__).resolve().parents[1]
RESULTS = EXPERIMENTS / "results"
STACKS = {"cache_ram": "Cache+RAM", "register": "register only"}


class Curve(Callback):
    """Records (step, validation bit errors) after each validation."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/bit_errors")
        if value is not None:
            self.points.append((trainer.global_step, float(value)))


@torch.no_grad()
def evaluate(model: L.LightningModule, length: tuple[int, int], batches: int = 8) -> float:
    """Mean bit errors per sequence over ``batches`` x 32 fresh sequences of ``length``."""
    task = Copy(lengths=length, eval_lengths=length, batch_size=32, seed=1234)
    model.eval()
    errors = []
    for index in range(batches):
        batch = task.make_batch("test", index)
        logits = model.controller(batch.inputs).output
        errors.append(bit_errors(logits, batch.targets, batch.mask))
    return float(torch.cat(errors).mean())


def run(stack: str, seed: int, max_steps: int, target: float) -> dict:
    args = [
        "--config", str(EXPERIMENTS / "tasks" / "copy.yaml"),
        "--config", str(EXPERIMENTS / "stacks" / f"{stack}.yaml"),
        "--seed_everything", str(seed),
        "--data.init_args.seed", str(seed),
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", "100",
    ]  # fmt: skip
    cli = make_cli(args, run=False)
    curve = Curve()
    stop = EarlyStopping("val/bit_errors", mode="min", stopping_threshold=target, patience=10**6)
    trainer = L.Trainer(
        max_steps=max_steps,
        val_check_interval=100,
        check_val_every_n_epoch=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curve, stop],
    )
    start = time.perf_counter()
    trainer.fit(cli.model, cli.datamodule)
    wall = time.perf_counter() - start
    result = {
        "stack": STACKS[stack],
        "seed": seed,
        "steps": trainer.global_step,
        "wall_s": wall,
        "reached_target": bool(curve.points and curve.points[-1][1] < target),
        "train_lengths": evaluate(cli.model, (1, 10)),
        "length_20": evaluate(cli.model, (20, 20)),
        "length_40": evaluate(cli.model, (40, 40)),
        "curve": curve.points,
    }
    print({k: v for k, v in result.items() if k != "curve"}, flush=True)
    return result


def summarize(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run(s, seed, args.max_steps, args.target) for s in STACKS for seed in args.seeds]
    fields = [
        "stack",
        "seed",
        "steps",
        "wall_s",
        "reached_target",
        "train_lengths",
        "length_20",
        "length_40",
    ]
    with open(args.out / "learn_copy.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    lines = [
        "# Copy: learning and length generalisation",
        "",
        "Task experiments/tasks/copy.yaml (8 bits, batch 32, train lengths 1..10); stacks",
        "experiments/stacks/cache_ram.yaml and register.yaml. Training stops when validation",
        f"bit errors per sequence (256 sequences, lengths 1..10) fall below {args.target},",
        f"or at {args.max_steps} steps. Then bit errors per sequence are measured on 256 fresh",
        "sequences per length. Seeds: " + ", ".join(map(str, args.seeds)) + "; values are the",
        "median [min, max] over seeds.",
        "",
        "| stack | seeds below target | steps | wall s | bit errors, lengths 1..10 "
        "| length 20 | length 40 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in STACKS.values():
        rows = [r for r in results if r["stack"] == name]
        lines.append(
            f"| {name} | {sum(r['reached_target'] for r in rows)}/{len(rows)} | "
            f"{summarize([r['steps'] for r in rows])} | {summarize([r['wall_s'] for r in rows])} | "
            f"{summarize([r['train_lengths'] for r in rows])} | "
            f"{summarize([r['length_20'] for r in rows])} | "
            f"{summarize([r['length_40'] for r in rows])} |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| stack | seed | steps | wall s | 1..10 | 20 | 40 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stack']} | {r['seed']} | {r['steps']} | {r['wall_s']:.0f} | "
        f"{r['train_lengths']:.2f} | {r['length_20']:.2f} | {r['length_40']:.2f} |"
        for r in results
    ]
    lines += ["", f"torch threads: {args.threads}", "", "Machine:", "", machine_markdown(), ""]
    (args.out / "learn_copy.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        if r["curve"]:
            steps, values = zip(*r["curve"], strict=True)
            style = "-" if r["stack"] == "Cache+RAM" else "--"
            ax.plot(steps, values, style, label=f"{r['stack']} seed {r['seed']}")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bit errors / sequence")
    ax.set_title("Copy, lengths 1..10")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "learn_copy.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
