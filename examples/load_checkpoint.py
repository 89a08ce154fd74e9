"""Load the checkpoint train_in_python.py wrote, test it, and look at one prediction.

    python examples/load_checkpoint.py --out runs/examples
    python examples/load_checkpoint.py path/to/last.ckpt

The model was built in Python, so its controller is an object, not a hyperparameter: the
checkpoint holds its weights but not how to build it, and ``load_from_checkpoint`` gets the
same controller built again (``stack.build_controller``). A checkpoint written by ``tiered
fit`` holds its whole config instead and loads with ``TieredModule.load_from_checkpoint(path)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from stack import build_controller, build_task, tier_metrics

from tiered import TieredModule
from tiered.metrics import bit_errors


def newest_checkpoint(out: Path) -> Path:
    """The most recently written checkpoint under ``out``."""
    found = sorted(out.rglob("*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise SystemExit(f"no checkpoint under {out}: run examples/train_in_python.py first")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", help="a .ckpt (default: newest)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="run folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = args.checkpoint or newest_checkpoint(args.out)
    task = build_task(steps=1, seed=args.seed)
    model = TieredModule.load_from_checkpoint(path, controller=build_controller(task))
    print(f"loaded {path} (trained {torch.load(path, weights_only=False)['global_step']} steps)")

    # The test split: longer sequences than training saw (lengths 7..10 against 1..6).
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (results,) = trainer.test(model, task, verbose=False)
    print("test:", ", ".join(f"{name} {value:.4g}" for name, value in sorted(results.items())
                             if name.count("/") == 1))  # fmt: skip
    for tier, logged in tier_metrics(results, model.controller.tier_names).items():
        print(f"  {tier}: " + ", ".join(f"{n.split('/')[1]} {v:.4g}" for n, v in logged.items()))

    # One batch by hand: the model's forward is the controller's.
    task.setup("test")
    batch = next(iter(task.test_dataloader()))
    model.eval()
    with torch.no_grad():
        out = model(batch.inputs)
    wrong = bit_errors(out.output, batch.targets, batch.mask)  # (B,) wrong bits per sequence
    first = batch.mask[0]  # the steps of the first sequence that are scored
    predicted = (out.output[0, first] > 0).int()  # (steps, bits)
    print(f"\nbatch of {batch.inputs.shape[0]}: {wrong.mean():.2f} wrong bits per sequence")
    print("first sequence, target rows then predicted rows:")
    for target_row, predicted_row in zip(batch.targets[0, first].int(), predicted, strict=True):
        print(f"  {target_row.tolist()}  {predicted_row.tolist()}")
    print("per tier, mean over the batch's real steps:")
    real = batch.steps.float()  # (B, T), 1 on each sequence's own steps
    for name, record in out.aux.items():  # record: (B, T) per field
        means = [f"{field} {(value * real).sum() / real.sum():.4g}"
                 for field, value in record._asdict().items()]  # fmt: skip
        print(f"  {name}: " + ", ".join(means))


if __name__ == "__main__":
    main()
