"""Curricula: Callbacks that set a task's difficulty while it trains: a threshold that
raises it, and a bandit that chooses it for every batch (Exp3.S). ``LevelProbe``, which
scores the model at one fixed difficulty meanwhile so that curricula can be compared, lives
in ``tiered.probe`` and is importable from here too.

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
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from tiered.probe import LevelProbe
from tiered.validation import check_positive_int

__all__ = [
    "BanditCurriculum",
    "LevelProbe",
    "ThresholdCurriculum",
    "exp3s_probabilities",
    "exp3s_update",
    "scaled_reward",
]


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


def exp3s_probabilities(weights: np.ndarray, epsilon: float) -> np.ndarray:
    """The Exp3.S policy: (1 - epsilon) softmax(weights) + epsilon / K."""
    shifted = np.exp(weights - weights.max())
    return (1.0 - epsilon) * shifted / shifted.sum() + epsilon / len(weights)


def exp3s_update(
    weights: np.ndarray, arm: int, reward: float, probability: float, eta: float, alpha: float
) -> np.ndarray:
    """One Exp3.S step (Graves et al. 2017, after Auer et al. 2002): the importance-weighted
    reward ``reward / probability`` of the arm played, then a share ``alpha`` of every arm's
    weight spread over the others (which keeps the bandit able to follow a changing best
    arm). In logs: w_i <- log((1 - alpha) e^{w_i + eta r_i} + alpha / (K - 1) sum_{j != i}
    e^{w_j + eta r_j}), computed shifted by the largest weight."""
    K = len(weights)
    gained = weights.astype(np.float64).copy()
    gained[arm] += eta * reward / probability
    top = gained.max()
    scaled = np.exp(gained - top)
    if K == 1:
        return gained
    others = (scaled.sum() - scaled) / (K - 1)
    return top + np.log((1.0 - alpha) * scaled + alpha * others)


def scaled_reward(reward: float, history: list[float], low: float = 0.2, high: float = 0.8):
    """A raw reward mapped to [-1, 1] by the ``low`` and ``high`` quantiles of the rewards
    seen so far (Graves et al. 2017): below the low quantile -1, above the high one 1."""
    q_low, q_high = np.quantile(np.asarray(history, dtype=np.float64), [low, high])
    if q_high <= q_low:
        return 0.0
    return float(np.clip(2.0 * (reward - q_low) / (q_high - q_low) - 1.0, -1.0, 1.0))


class BanditCurriculum(Callback):
    """An automatic curriculum (Graves et al. 2017, "Automated Curriculum Learning for Neural
    Networks"): an Exp3.S bandit chooses the difficulty of every training batch, rewarded by
    the learning progress the batch brought.

    The arms are ``levels``, [low, high] values of the task's range attribute ``field``
    (``lengths`` of Copy, ``repeats`` of RepeatCopy, ``items``, ``nodes``, ``nonzero``...).
    Each training batch is drawn at the level chosen for it, without rebuilding the
    datamodule; the range is then set back to the task's own (validation uses it, so it stays
    fixed). The reward, mapped to [-1, 1] by the quantiles of the rewards seen so far, is
    ``"prediction_gain"`` (the batch's task loss before the update minus after it: two extra
    forward passes per batch) or ``"gradient_gain"`` (the squared norm of the batch's
    gradient, summed over its optimiser steps: no extra pass). Logged per batch:
    ``curriculum/<field>_arm``, ``curriculum/reward``, and the expected top of the range
    under the policy, ``curriculum/<field>_expected``. The weights, the reward history and
    the arms of batches drawn but not yet trained on are saved in checkpoints, so a resumed
    run continues the same curriculum (each batch's choice is a function of the seed, the
    batch index and the weights).

    Args:
        field: the task's range attribute that the levels set.
        levels: the arms, each a [low, high] range, easiest first.
        reward: "prediction_gain" or "gradient_gain".
        eta: the bandit's step size.
        epsilon: the share of uniform exploration in the policy.
        alpha: the share of weight passed between arms at each step (Exp3.S's switching).
        history: how many raw rewards the quantiles are taken over (the latest).
        seed: the seed of the bandit's choices.
    """

    REWARDS = ("prediction_gain", "gradient_gain")

    def __init__(
        self,
        field: str,
        levels: list[tuple[int, int]],
        reward: str = "prediction_gain",
        eta: float = 0.1,
        epsilon: float = 0.05,
        alpha: float = 1e-3,
        history: int = 1000,
        seed: int = 0,
    ) -> None:
        owner = "BanditCurriculum"
        if not isinstance(levels, (list, tuple)) or len(levels) < 2:
            raise ValueError(f"{owner}: levels must list at least 2 [low, high] ranges, got "
                             f"{levels!r}")  # fmt: skip
        if reward not in self.REWARDS:
            raise ValueError(f"{owner}: reward must be one of {list(self.REWARDS)}, got {reward!r}")
        for name, value, low, high in (("eta", eta, 0.0, math.inf), ("epsilon", epsilon, 0.0, 1.0),
                                       ("alpha", alpha, 0.0, 1.0)):  # fmt: skip
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (low <= value <= high and (name != "eta" or value > 0))
            ):
                bounds = "> 0" if name == "eta" else f"in [{low}, {high}]"
                raise ValueError(f"{owner}: {name} must be {bounds}, got {value!r}")
        self.field, self.reward = field, reward
        self.levels = [tuple(int(v) for v in level) for level in levels]
        self.eta, self.epsilon, self.alpha = float(eta), float(epsilon), float(alpha)
        self.history_size = check_positive_int(owner, "history", history)
        self.seed = int(seed)
        self.weights = np.zeros(len(self.levels))
        self.history: list[float] = []
        self.pending: dict[int, tuple[int, float]] = {}  # batch index -> (arm, probability)
        self._order: list[int] = []  # indices drawn, in order (training consumes them so)
        self._task: Any = None
        self._before: float | None = None
        self._gradient = 0.0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(field=self.field, levels=self.levels)

    def probabilities(self) -> np.ndarray:
        """The policy now, one probability per level."""
        return exp3s_probabilities(self.weights, self.epsilon)

    def choose(self, index: int) -> tuple[int, float]:
        """The arm and its probability for training batch ``index`` (a function of the
        seed, the index and the weights now; an arm chosen before is kept)."""
        if index not in self.pending:
            policy = self.probabilities()
            arm = int(np.random.default_rng([self.seed, index]).choice(len(policy), p=policy))
            self.pending[index] = (arm, float(policy[arm]))
        return self.pending[index]

    # ------------------------------------------------------------------ drawing batches
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        task = trainer.datamodule
        if task is None or not hasattr(task, "make_batch"):
            raise ValueError("BanditCurriculum: the Trainer has no task datamodule")
        if trainer.world_size > 1:
            raise ValueError(
                f"BanditCurriculum: one process only, got world_size={trainer.world_size} (each "
                "rank would play its own bandit on its own batches)"
            )
        if trainer.accumulate_grad_batches > 1:
            raise ValueError(
                "BanditCurriculum: accumulate_grad_batches must be 1, got "
                f"{trainer.accumulate_grad_batches} (a batch's reward is its own update's)"
            )
        owner = vars(task).get("make_batch")
        if owner is not None and getattr(owner, "bandit", None) is not self:
            raise ValueError(
                "BanditCurriculum: the task's batches already pass through another "
                "BanditCurriculum; give each fit its own task or one bandit"
            )
        if getattr(task, "num_workers", 0):
            raise ValueError(
                f"BanditCurriculum: the task has num_workers={task.num_workers}; workers draw "
                "batches from their own copy of the task and the bandit's choices would not "
                "reach them: use num_workers=0"
            )
        for level in self.levels:
            try:
                task.check_difficulty(self.field, level)
            except (TypeError, ValueError) as error:
                raise ValueError(f"BanditCurriculum: field={self.field!r}: {error}") from None
        if self._task is not task:
            draw = task.make_batch

            def make_batch(split: str, index: int) -> Any:
                if split != "train":
                    return draw(split, index)
                arm, _ = self.choose(index)
                own = getattr(task, self.field)
                setattr(task, self.field, self.levels[arm])
                try:
                    return draw(split, index)
                finally:
                    setattr(task, self.field, own)
                    self._order.append(index)

            make_batch.bandit = self  # type: ignore[attr-defined]
            task.make_batch = make_batch  # this task object's batches pass through the bandit
            self._task = task

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the task its own ``make_batch`` back (picklable again, free for another fit)."""
        if self._task is not None and "make_batch" in vars(self._task):
            del self._task.make_batch
        self._task = None
        self._order.clear()

    # ------------------------------------------------------------------ rewards
    def _task_loss(self, pl_module: Any, batch: Any) -> float:
        """The batch's task loss with the weights now; tiers are told the stage "curriculum"
        meanwhile, so a Disk appends nothing."""
        from tiered.tier import Tier

        tiers = [m for m in pl_module.controller.modules() if isinstance(m, Tier)]
        stages = [tier.stage for tier in tiers]
        for tier in tiers:
            tier.stage = "curriculum"
        try:
            with torch.no_grad():
                out = pl_module.controller(batch.inputs)
                total, count, _ = pl_module._losses(out, batch)
        finally:
            for tier, stage in zip(tiers, stages, strict=True):
                tier.stage = stage
        return float(total / count.clamp_min(1))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        self._gradient = 0.0
        self._before = (
            self._task_loss(pl_module, batch) if self.reward == "prediction_gain" else None
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        if self.reward == "gradient_gain":
            self._gradient += float(sum(p.grad.pow(2).sum() for p in pl_module.parameters()
                                        if p.grad is not None))  # fmt: skip

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if not self._order:
            return
        index = self._order.pop(0)
        arm, probability = self.pending.pop(index)
        if self.reward == "prediction_gain":
            raw = self._before - self._task_loss(pl_module, batch)  # type: ignore[operator]
        else:
            raw = self._gradient
        self.history = [*self.history, raw][-self.history_size :]
        reward = scaled_reward(raw, self.history)
        self.weights = exp3s_update(self.weights, arm, reward, probability, self.eta, self.alpha)
        policy = self.probabilities()
        expected = float(sum(p * level[1] for p, level in zip(policy, self.levels, strict=True)))
        pl_module.log_dict({f"curriculum/{self.field}_arm": float(arm), "curriculum/reward": reward,
                            f"curriculum/{self.field}_expected": expected},
                           on_step=True, on_epoch=False, batch_size=1)  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "history": list(self.history),
                "pending": {str(k): list(v) for k, v in self.pending.items()},
                "order": list(self._order)}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights = np.asarray(state_dict["weights"], dtype=np.float64)
        self.history = [float(r) for r in state_dict.get("history", [])]
        self.pending = {int(k): (int(v[0]), float(v[1]))
                        for k, v in state_dict.get("pending", {}).items()}  # fmt: skip
        self._order = []  # a resumed loader draws its batches again (their arms are kept)
