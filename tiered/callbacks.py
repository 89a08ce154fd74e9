"""Callbacks the ``tiered`` command adds to every Trainer it builds (a config may replace each).

- ``FinalCheckpoint``: saves ``last.ckpt`` at the end of every fit, so a run shorter than
  ``val_check_interval`` still leaves its weights, and ``--evaluate_after_fit`` has them.
- ``StepProgressBar``: counts optimizer steps out of ``max_steps`` (not "Epoch 0/-2") and
  shows the loss, without Lightning's ``v_num``.
- ``TieredModelSummary``: the layer table without a FLOPs column and total that are always
  0 (Lightning counts FLOPs only for a model with an ``example_input_array``).

and one a config may add: ``StepTimer``, which logs the wall time of each training step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info


class FinalCheckpoint(Callback):
    """Save ``last.ckpt`` beside the checkpoint callback's other checkpoints when fit ends.

    Lightning's ``ModelCheckpoint`` saves at validations and epoch ends only, so a run of
    fewer steps than ``val_check_interval`` (in an epoch longer than the run) saved nothing.
    This saves the final weights of every fit that was not interrupted, in the first
    ``ModelCheckpoint``'s folder, and points that callback's ``last_model_path`` at it (so
    ``ckpt_path="last"`` finds it). Without a ``ModelCheckpoint`` it does nothing.

    A fit that reaches ``max_steps`` is saved right after its last batch, where the loops'
    state says "mid-epoch" as it is: resuming it with a larger ``max_steps`` continues exactly
    as an uninterrupted run would. (Saved at the end of fit, Lightning's loops would already
    count that epoch as finished.) A fit that ends otherwise (``max_epochs``, ``max_time``,
    early stopping) is saved at the end of fit.
    """

    def __init__(self) -> None:
        self._saved_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            return
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        path = os.path.join(callback.dirpath, name)
        trainer.save_checkpoint(path, weights_only=callback.save_weights_only)
        callback.last_model_path = path
        self._saved_step = trainer.global_step
        rank_zero_info(f"Saved the final weights (step {trainer.global_step}) to {path}")


class StepProgressBar(TQDMProgressBar):
    """A progress bar over optimizer steps out of ``max_steps``, with the logged losses.

    With ``max_steps`` unset (-1) it counts batches per epoch, as Lightning's bar does.

    Args:
        refresh_rate: update the bar every this many optimizer steps (0 disables it).
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._shown = 0  # the step the bar shows

    @staticmethod
    def _by_steps(trainer: L.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._by_steps(trainer):
            super().on_train_epoch_start(trainer, *args)
            return
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.set_description("train steps")
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = self._shown = trainer.global_step  # a resumed run's start
            bar.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if not self._by_steps(trainer):
            super().on_train_batch_end(trainer, pl_module, *args)
            return
        bar = self.train_progress_bar
        step = trainer.global_step
        due = step - self._shown >= self.refresh_rate or step >= bar.total
        if due and not bar.disable and not self.is_disabled:
            self._show(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._by_steps(trainer):
            super().on_train_epoch_end(trainer, pl_module)
            return
        if not self.train_progress_bar.disable and not self.is_disabled:
            self._show(trainer, pl_module)

    def _show(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        bar.n = self._shown = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The metrics logged with ``prog_bar=True``, without Lightning's ``v_num``."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class TieredModelSummary(ModelSummary):
    """Lightning's layer table, without the FLOPs column and total when they are all 0.

    Args:
        max_depth: how deep into nested modules the table goes (0 prints nothing).
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        rank_zero_info(
            "\n"
            + summary_table(
                summary_data, total_parameters, trainable_parameters, model_size, total_flops
            )
        )


def summary_table(
    columns: Sequence[tuple[str, Sequence[str]]],
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_flops: int = 0,
) -> str:
    """A plain-text table of ``columns`` (name, one string per layer) and the totals;
    a FLOPs column and total appear only when some FLOPs were counted."""
    if not total_flops:
        columns = [(name, cells) for name, cells in columns if name != "FLOPs"]
    widths = [max([len(name), *map(len, map(str, cells))]) for name, cells in columns]
    rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths, strict=True))]
    rows.append("-" * len(rows[0]))
    count = len(columns[0][1]) if columns else 0
    for i in range(count):
        cells = (str(cells[i]).ljust(w) for (_, cells), w in zip(columns, widths, strict=True))
        rows.append(" | ".join(cells))
    rows.append("-" * len(rows[0]))
    totals = [
        (f"{trainable_parameters:,}", "trainable params"),
        (f"{total_parameters - trainable_parameters:,}", "non-trainable params"),
        (f"{model_size:,.3f}", "MB of parameters (estimated)"),
    ]
    if total_flops:
        totals.append((f"{total_flops:,}", "FLOPs"))
    rows += [f"{value:<12}{what}" for value, what in totals]
    return "\n".join(rows)


class StepTimer(Callback):
    """Log the wall time of each training batch (forward, backward and optimizer step) as
    ``train/step_seconds``, so that the cost of a step can be followed as a run's sequences
    grow (e.g. under a curriculum) or its memory fills."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self._start is not None:
            seconds = time.perf_counter() - self._start
            pl_module.log("train/step_seconds", seconds, on_step=True, on_epoch=False)
            self._start = None
