"""Train a Register + Cache + RAM stack on the copy task from Python, then show what each
tier logged.

    python examples/train_in_python.py --steps 200 --out runs/examples

Writes a CSV log and a checkpoint under ``--out``: ``load_checkpoint.py`` loads that
checkpoint, ``inspect_metrics.py`` reads the log. The default budget is tiny (it is what CI
runs); a few hundred steps show the loss falling.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from stack import build_controller, build_task, tier_metrics

from tiered import TieredModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (default: 8)")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    L.seed_everything(args.seed, verbose=False)
    task = build_task(args.steps, args.seed)
    model = TieredModule(
        build_controller(task),
        loss=task.loss,  # the CLI links this from the task; in Python, pass it
        optimizer=partial(torch.optim.Adam, lr=3e-3),
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(args.out, name="train_in_python"),
        callbacks=[ModelCheckpoint(filename="last")],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, task)

    # callback_metrics: the last value of every metric logged in training and validation.
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    print(f"after {trainer.global_step} steps: train/loss {metrics['train/loss']:.4f}, "
          f"val/loss {metrics['val/loss']:.4f}")  # fmt: skip
    for tier, logged in tier_metrics(metrics, model.controller.tier_names).items():
        print(f"\n{tier}:")
        for name, value in logged.items():
            print(f"  {name:<36} {value:.4g}")

    checkpoint = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    print(f"\nmetrics.csv: {Path(trainer.logger.log_dir) / 'metrics.csv'}")  # type: ignore[union-attr]
    print(f"checkpoint: {checkpoint}")


if __name__ == "__main__":
    main()
