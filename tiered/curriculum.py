"""Curricula: Callbacks that raise a task's difficulty while it trains.

The difficulty is a ``[low, high]`` range attribute of the task (``items`` of
``KeyValueRecall`` and ``AssociativeRecall``, ``lengths`` of ``Copy``), changed in place:
the datamodule is not rebuilt, and batches drawn after a change use the new range. The
level is logged (``curriculum/<field>``) and saved in checkpoints, so a resumed run
continues its curriculum where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from tiered.validation import check_positive_int


class ThresholdCurriculum(Callback):
    """Raise the top of a task's difficulty range each time a validation metric passes a bar.

    After each validation (not the sanity check), if ``metric`` is below ``below`` (or above
    it, with ``mode="max"``), the range's top becomes ``ceil(high * factor)``, at most
    ``maximum``, and its bottom ``max(low, floor(new_high * low_fraction))``, so that the
    easiest levels can be left behind.

    Args:
        field: the task's range attribute, e.g. "items" or "lengths".
        metric: the logged metric compared with the bar, e.g. "val/bit_errors".
        below: the bar the metric must pass.
        mode: "min" (pass when the metric is below the bar) or "max" (above it).
        factor: how much the top of the range grows at each raise (> 1).
        maximum: the top of the range is never raised past this.
        low_fraction: after a raise the bottom of the range is at least this fraction of
            its top (0 keeps the task's own bottom).
    """

    def __init__(
        self,
        field: str,
        metric: str,
        below: float,
        mode: str = "min",
        factor: float = 2.0,
        maximum: int = 1 << 30,
        low_fraction: float = 0.0,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ThresholdCurriculum: mode must be 'min' or 'max', got {mode!r}")
        if not factor > 1.0:
            raise ValueError(f"ThresholdCurriculum: factor must be > 1, got {factor!r}")
        if not 0.0 <= low_fraction <= 1.0:
            raise ValueError(
                f"ThresholdCurriculum: low_fraction must be in [0, 1], got {low_fraction!r}"
            )
        if isinstance(below, bool) or not isinstance(below, (int, float)):
            raise ValueError(f"ThresholdCurriculum: below must be a number, got {below!r}")
        self.field, self.metric, self.below, self.mode = field, metric, float(below), mode
        self.factor, self.low_fraction = float(factor), float(low_fraction)
        self.maximum = check_positive_int("ThresholdCurriculum", "maximum", maximum)
        self.level: tuple[int, int] | None = None  # the range now; None: the task's own
        self.raises: list[tuple[int, int]] = []  # (global step, new top) of each raise

    @property
    def state_key(self) -> str:
        # one curriculum per (field, metric) in a Trainer, each with its own checkpoint entry
        return self._generate_state_key(field=self.field, metric=self.metric)

    # ------------------------------------------------------------------ the task's range
    def _task(self, trainer: L.Trainer) -> Any:
        task = trainer.datamodule
        if task is None:
            raise ValueError("ThresholdCurriculum: the Trainer has no datamodule (the task)")
        if getattr(task, "num_workers", 0):
            raise ValueError(
                f"ThresholdCurriculum: the task has num_workers={task.num_workers}; DataLoader "
                "workers draw batches from their own copy of the task and would not see the "
                "difficulty change: use num_workers=0"
            )
        return task

    def _checked(self, task: Any, level: Any) -> tuple[int, int]:
        """``level`` checked by the task (``SequenceTask.check_difficulty``), else its shape."""
        if hasattr(task, "check_difficulty"):
            try:
                return task.check_difficulty(self.field, level)
            except (TypeError, ValueError) as error:
                raise ValueError(f"ThresholdCurriculum: field={self.field!r}: {error}") from None
        current = getattr(task, self.field, None)
        if not (isinstance(current, (tuple, list)) and len(current) == 2):
            raise ValueError(
                f"ThresholdCurriculum: field={self.field!r} is not a [low, high] range of the "
                f"task {type(task).__name__} (its value: {current!r})"
            )
        return int(level[0]), int(level[1])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores a checkpoint's callback states before this hook (after it, and
        # after the sanity check, only under DeepSpeed, FSDP and ModelParallel: hence
        # on_train_start below too).
        task = self._task(trainer)
        if self.level is None:
            self.level = self._checked(task, getattr(task, self.field, None))
        try:  # the whole curriculum must be one the task can draw
            self._checked(task, (self.level[0], max(self.maximum, self.level[1])))
        except ValueError as error:
            raise ValueError(f"{error} (at maximum={self.maximum}; lower it)") from None
        setattr(task, self.field, self.level)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.level is not None:
            setattr(self._task(trainer), self.field, self.level)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # only validations within fit: not the sanity check, not trainer.validate() after it
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.level is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise ValueError(
                f"ThresholdCurriculum: metric={self.metric!r} was not logged; logged: "
                f"{sorted(trainer.callback_metrics)}"
            )
        value = float(value)
        passed = value < self.below if self.mode == "min" else value > self.below
        low, high = self.level
        if passed and high < self.maximum:
            high = min(self.maximum, math.ceil(high * self.factor))
            low = max(low, min(high, math.floor(high * self.low_fraction)))
            task = self._task(trainer)
            self.level = self._checked(task, (low, high))
            self.raises.append((trainer.global_step, high))
            setattr(task, self.field, self.level)
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"curriculum/{self.field}_low": low, f"curriculum/{self.field}_high": high},
                step=trainer.global_step,
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"level": None if self.level is None else list(self.level),
                "raises": [list(r) for r in self.raises]}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        level = state_dict.get("level")
        self.level = None if level is None else (int(level[0]), int(level[1]))
        self.raises = [(int(s), int(h)) for s, h in state_dict.get("raises", [])]
