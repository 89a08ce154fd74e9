"""LevelProbe: the model scored at one fixed difficulty after each validation of a fit,
whatever level a curriculum trains on (``tiered.curriculum``), so that curricula can be
compared on one measure."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from tiered.validation import check_positive_int


class LevelProbe(Callback):
    """Score the model at one fixed difficulty after each validation of a fit, whatever level
    a curriculum trains and validates on: the common measure that makes curricula comparable.

    After each validation within fit (not the sanity check, not ``trainer.validate``),
    ``batches`` batches of the "val" split are drawn with the task's ``field`` set to
    ``level`` (then set back) and scored without gradients: ``probe/bit_errors`` (wrong bits
    per sequence) and ``probe/exact_match`` for bit tasks, ``probe/token_accuracy`` and
    ``probe/exact_match`` for token tasks, logged at the global step. The batches are the
    same at every probe and in every run of the task's seed. With ``bar``, the first probe
    whose ``metric`` passes it is kept as ``reached`` (its global step, logged as
    ``probe/reached`` and saved in checkpoints), and with ``stop`` the fit ends there.

    Args:
        field: the task's range attribute, e.g. "lengths".
        level: the [low, high] range drawn at the probe, e.g. [20, 20] for the longest.
        batches: how many batches of the task's batch size are scored at each probe.
        metric: the probed metric the bar applies to: "bit_errors" (passes below the bar),
            "exact_match" or "token_accuracy" (pass above it).
        bar: the level of ``metric`` to reach; None: only log.
        stop: end the fit at the first probe that reaches ``bar``.
    """

    METRICS: ClassVar[dict[str, str]] = {
        "bit_errors": "min",
        "exact_match": "max",
        "token_accuracy": "max",
    }

    def __init__(
        self,
        field: str,
        level: tuple[int, int],
        batches: int = 4,
        metric: str = "bit_errors",
        bar: float | None = None,
        stop: bool = False,
    ) -> None:
        owner = "LevelProbe"
        if (
            not isinstance(level, (list, tuple))
            or len(level) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in level)
        ):
            raise ValueError(f"{owner}: level must be a [low, high] pair of ints, got {level!r}")
        if metric not in self.METRICS:
            raise ValueError(f"{owner}: metric must be one of {list(self.METRICS)}, got "
                             f"{metric!r}")  # fmt: skip
        if bar is not None and (isinstance(bar, bool) or not isinstance(bar, (int, float))):
            raise ValueError(f"{owner}: bar must be a number or null, got {bar!r}")
        if stop and bar is None:
            raise ValueError(f"{owner}: stop=True needs a bar (the level of {metric!r} to reach)")
        self.field, self.level = field, (int(level[0]), int(level[1]))
        self.batches = check_positive_int(owner, "batches", batches)
        self.metric, self.bar, self.stop = metric, None if bar is None else float(bar), stop
        self.reached: int | None = None  # the global step of the first probe past the bar

    @property
    def state_key(self) -> str:
        return self._generate_state_key(field=self.field, level=self.level, metric=self.metric)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        task = trainer.datamodule
        if task is None or not hasattr(task, "make_batch"):
            raise ValueError("LevelProbe: the Trainer has no task datamodule")
        self.check(task)

    def check(self, task: Any) -> None:
        """Refuse a level the task cannot draw, or a metric it does not score."""
        try:
            task.check_difficulty(self.field, self.level)
        except (TypeError, ValueError) as error:
            raise ValueError(f"LevelProbe: field={self.field!r}: {error}") from None
        name = type(task).__name__
        if self.metric == "token_accuracy" and task.loss != "tokens":
            raise ValueError(f"LevelProbe: metric='token_accuracy' needs a token task; {name} "
                             "scores bits: use 'bit_errors'")  # fmt: skip
        if self.metric == "bit_errors" and task.loss != "bits":
            raise ValueError(f"LevelProbe: metric='bit_errors' needs a bit task; {name} scores "
                             "tokens: use 'token_accuracy'")  # fmt: skip

    def score(self, task: Any, pl_module: Any, precision: Any = None) -> dict[str, float]:
        """The probe's metrics for the model now (the task's range is set back after);
        ``precision``: the Trainer's precision plugin, so the model runs as in validation."""
        from tiered.metrics import bit_errors, sequence_correct, token_hits
        from tiered.tier import Tier

        self.check(task)
        own = getattr(task, self.field)
        tiers = [m for m in pl_module.controller.modules() if isinstance(m, Tier)]
        stages = [tier.stage for tier in tiers]
        was_training = pl_module.training
        setattr(task, self.field, self.level)
        for tier in tiers:
            tier.stage = "probe"  # not a stage a Disk appends in
        pl_module.eval()
        errors, correct, hits, scored, sequences = 0.0, 0, 0, 0, 0
        try:
            context = contextlib.nullcontext() if precision is None else precision.forward_context()
            with torch.no_grad(), context:
                for index in range(self.batches):
                    batch = task.make_batch("val", index)
                    batch = type(batch)(*(t.to(pl_module.device) for t in batch))
                    inputs = batch.inputs if precision is None else precision.convert_input(
                        batch.inputs)  # fmt: skip
                    logits = pl_module.controller(inputs).output.float()
                    if task.loss == "bits":
                        errors += float(bit_errors(logits, batch.targets, batch.mask).sum())
                    else:
                        right, count = token_hits(logits, batch.targets, batch.mask)
                        hits, scored = hits + int(right.sum()), scored + int(count.sum())
                    correct += int(sequence_correct(logits, batch.targets, batch.mask).sum())
                    sequences += len(batch.inputs)
        finally:
            setattr(task, self.field, own)
            for tier, stage in zip(tiers, stages, strict=True):
                tier.stage = stage
            pl_module.train(was_training)
        values = {"exact_match": correct / sequences}
        if task.loss == "bits":
            values["bit_errors"] = errors / sequences
        else:
            values["token_accuracy"] = hits / max(scored, 1)
        return values

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        values = self.score(trainer.datamodule, pl_module, trainer.precision_plugin)
        logged = {f"probe/{name}": value for name, value in values.items()}
        value = values[self.metric]
        if self.bar is not None and self.reached is None:
            low = self.METRICS[self.metric] == "min"
            if (value < self.bar) if low else (value > self.bar):
                self.reached = trainer.global_step
                logged["probe/reached"] = float(self.reached)
                if self.stop:
                    trainer.should_stop = True
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"reached": self.reached}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached = state_dict.get("reached")
