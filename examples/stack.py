"""The task and the tier stack the examples share.

A model built in Python keeps its controller out of the checkpoint's hyperparameters (it is
an object, not a config), so ``TieredModule.load_from_checkpoint`` needs the same controller
built again: both scripts build it here.
"""

from __future__ import annotations

from tiered.controllers import LSTMController
from tiered.tasks import Copy
from tiered.tiers import RAM, Cache, Register


def build_task(steps: int, seed: int = 0) -> Copy:
    """Copy of 4-bit vectors, lengths 1..6 in training and validation, 7..10 in test.

    ``steps`` training batches make one epoch, so validation runs once, at the end.
    """
    return Copy(
        bits=4,
        lengths=(1, 6),
        eval_lengths=(7, 10),
        batch_size=16,
        train_batches=steps,
        val_batches=2,
        test_batches=2,
        seed=seed,
    )


def build_controller(task: Copy) -> LSTMController:
    """A Register, a small Cache and a dense RAM: a stack that trains in seconds on a CPU."""
    return LSTMController(
        input_size=task.input_size,
        output_size=task.output_size,
        register=Register(hidden_size=32),
        tiers=[
            Cache(slots=8, width=8, rewrite_penalty=1e-3),
            RAM(slots=32, width=8, read_heads=2, period=2),
        ],
    )


def tier_metrics(metrics: dict[str, float], tier_names: list[str]) -> dict[str, dict[str, float]]:
    """Group logged metrics by tier: ``train/rewrite/ram`` goes under ``ram``.

    A metric belongs to a tier when the tier's name is one of the ``/``-separated parts of
    its name, so this keeps working whatever statistics the tiers log.
    """
    return {
        tier: {name: value for name, value in sorted(metrics.items()) if tier in name.split("/")}
        for tier in tier_names
    }
