"""TieredModule: the LightningModule that trains a controller with memory tiers.

The loss is the task loss plus, for every tier, ``rewrite_penalty * rewrite`` averaged
over the steps sequences really have (padding after a shorter sequence's end counts for
nothing):

    loss = task_loss + sum over tiers of mean_{(b, t) real}(lambda_tier * rewrite_tier[b, t])

``bits`` tasks use binary cross-entropy on logits, averaged over scored steps and bits;
``tokens`` tasks use cross-entropy averaged over scored steps.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MetricCollection

from tiered.controllers.base import Controller
from tiered.metrics import BitErrorsPerSequence, SequenceExactMatch, TokenAccuracy, bit_errors
from tiered.synthetic import SyntheticGradient, vector_size
from tiered.tasks.base import LOSSES, SequenceBatch
from tiered.tbptt import TruncatedTraining, scored_count
from tiered.tier import Tier
from tiered.tiers.disk import Disk
from tiered.validation import (
    check_bool,
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

# The per-step tier statistics logged as ``{stage}/{field}/{tier}``, each averaged over real
# steps (``TierStats`` defines them).
TIER_METRICS = ("rewrite", "write_mass", "wrote", "read_entropy", "slots_used", "spilled")


def masked_loss_sum(logits: Tensor, targets: Tensor, mask: Tensor, loss: str) -> Tensor:
    """Sum of the per-element loss over scored positions.

    Args:
        logits: (B, T, O).
        targets: (B, T, O) bits or (B, T) class indices.
        mask: (B, T) boolean.
        loss: "bits" or "tokens".

    Returns:
        A scalar: summed BCE over scored steps and bits, or summed CE over scored steps.
    """
    if loss == "bits":
        per_bit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (per_bit * mask.unsqueeze(-1)).sum()
    per_step = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    return (per_step * mask).sum()


def expected_loss_sum(
    step_logits: Tensor, weights: Tensor, targets: Tensor, mask: Tensor, loss: str
) -> Tensor:
    """``masked_loss_sum`` in expectation over internal steps (PonderNet): each scored
    position's loss is sum_n p^n loss(y^n).

    Args:
        step_logits: (B, T, M, O) every internal step's outputs.
        weights: (B, T, M) their halting probabilities p^n (zero where not taken).
        targets: (B, T, O) bits or (B, T) class indices.
        mask: (B, T) boolean.
        loss: "bits" or "tokens".

    Returns:
        A scalar: the p-weighted loss summed over scored steps (and bits).
    """
    M = step_logits.shape[2]
    if loss == "bits":
        expanded = targets.unsqueeze(2).expand(-1, -1, M, -1)
        per_bit = F.binary_cross_entropy_with_logits(step_logits, expanded, reduction="none")
        per_step = per_bit.sum(-1)  # (B, T, M)
    else:
        expanded = targets.unsqueeze(2).expand(-1, -1, M)
        per_step = F.cross_entropy(step_logits.permute(0, 3, 1, 2), expanded, reduction="none")
    return ((per_step * weights).sum(-1) * mask).sum()


def _stage_metrics(loss: str, prefix: str) -> MetricCollection:
    if loss == "bits":
        metrics = {"bit_errors": BitErrorsPerSequence(), "exact_match": SequenceExactMatch()}
    else:
        metrics = {"token_accuracy": TokenAccuracy(), "exact_match": SequenceExactMatch()}
    return MetricCollection(metrics, prefix=prefix)


class TieredModule(TruncatedTraining, L.LightningModule):
    """Trains a controller composed of memory tiers on a sequence task.

    Args:
        controller: the controller (``LSTMController``, ...), chosen in YAML by class_path.
        loss: ``"bits"`` (binary cross-entropy on logits) or ``"tokens"``
            (cross-entropy); the CLI links it from the task.
        optimizer: a callable that makes the optimizer from the parameters.
        scheduler: an optional callable that makes a learning-rate scheduler.
        gradient_clip_val: clip the gradient norm to this value; None or 0 turns it off.
            A ``trainer.gradient_clip_val`` given on the Trainer takes precedence (and is an
            error with ``tbptt_steps``: Lightning does not clip manual optimisation).
        tbptt_steps: truncated backpropagation through time: optimise every this many
            steps, detaching the state between windows (manual optimisation). None
            backpropagates through whole sequences. With it, ``global_step`` (and so
            ``max_steps``) counts optimiser steps, one per window.
        scheduler_interval: step the scheduler every optimiser "step" or every "epoch".
        synthetic_gradients: with ``tbptt_steps``, bridge each window's edge with a
            synthetic gradient (Jaderberg et al. 2017): a small model, trained by its own
            optimizer (the same kind), predicts the gradient beyond the window from the
            controller's vector state there (register and reads; ``tiered.synthetic``).
        synthetic_warmup: optimiser steps during which the gradient model is trained but
            its prediction is not applied (checked at each batch's start, so the last
            warm-up batch runs to its end).
        synthetic_scale: the factor on the prediction in each window's backward pass, and
            the discount on the next prediction in the gradient model's target.
        synthetic_hidden: the gradient model's hidden width; 0 for a linear model.
        synthetic_lr: the learning rate of the gradient model's optimizer (otherwise the
            module's kind and settings); None keeps the module's. Its outputs should move
            by much less than the gradients it predicts (about 0.1 per sequence), so it
            learns far more slowly than the model. It is also the learning rate of a
            ``TwoClockController``'s gradient model (a parameter group of its own).
        synthetic_check_every: every this many training batches, log the cosine between
            the predictions and the true gradients of full BPTT (``train/sg/cosine``; one
            extra forward and backward pass); 0 never.
    """

    def __init__(
        self,
        controller: Controller,
        loss: str = "bits",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        gradient_clip_val: float | None = 10.0,
        tbptt_steps: int | None = None,
        scheduler_interval: str = "step",
        synthetic_gradients: bool = False,
        synthetic_warmup: int = 0,
        synthetic_scale: float = 1.0,
        synthetic_hidden: int = 0,
        synthetic_lr: float | None = 1e-4,
        synthetic_check_every: int = 50,
    ) -> None:
        super().__init__()
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        # Built by the CLI, the hyperparameters are the config (class paths included), so
        # load_from_checkpoint rebuilds everything; built in Python, the controller, the
        # optimizer and the scheduler are objects, not hyperparameters:
        # load_from_checkpoint then needs controller=... (and uses the default optimizer).
        cli_built = _given_hyperparameters.get() is not None
        objects = ["controller", "optimizer", "scheduler"]
        self.save_hyperparameters(ignore=None if cli_built else objects)
        if not isinstance(controller, Controller):
            raise TypeError(
                "TieredModule: controller must be a tiered.controllers.Controller "
                f"(e.g. LSTMController), got {type(controller).__name__}"
            )
        self.controller = controller
        self.loss_kind = check_choice("TieredModule", "loss", loss, LOSSES)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gradient_clip_val = (
            None
            if gradient_clip_val is None
            else check_non_negative_float("TieredModule", "gradient_clip_val", gradient_clip_val)
        )
        self.tbptt_steps = (
            None
            if tbptt_steps is None
            else check_positive_int("TieredModule", "tbptt_steps", tbptt_steps)
        )
        self.scheduler_interval = check_choice(
            "TieredModule", "scheduler_interval", scheduler_interval, ("step", "epoch")
        )
        self.automatic_optimization = self.tbptt_steps is None
        owner = "TieredModule"
        self.synthetic: SyntheticGradient | None = None
        if check_bool(owner, "synthetic_gradients", synthetic_gradients):
            if self.tbptt_steps is None:
                raise ValueError(
                    "TieredModule: synthetic_gradients=True needs tbptt_steps (the windows "
                    "whose edges it bridges), got tbptt_steps=None"
                )
            self.synthetic = SyntheticGradient(
                vector_size(controller), check_non_negative_int(owner, "synthetic_hidden",
                                                                synthetic_hidden)
            )  # fmt: skip
        self.synthetic_warmup = check_non_negative_int(owner, "synthetic_warmup", synthetic_warmup)
        self.synthetic_scale = check_non_negative_float(owner, "synthetic_scale", synthetic_scale)
        self.synthetic_lr = (
            None
            if synthetic_lr is None
            else check_positive_float(owner, "synthetic_lr", synthetic_lr)
        )
        self.synthetic_check_every = check_non_negative_int(
            owner, "synthetic_check_every", synthetic_check_every
        )
        self.val_metrics = _stage_metrics(self.loss_kind, "val/")
        self.test_metrics = _stage_metrics(self.loss_kind, "test/")

    def forward(self, x: Tensor, state: Any = None) -> Any:
        """Run the controller: ``x`` (B, T, I) -> ``ControllerOutput``."""
        return self.controller(x, state)

    # ----------------------------------------------------------------------------- steps
    def _losses(self, out: Any, batch: SequenceBatch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Task loss sum, scored count and the per-tier penalty sums over real steps of one
        window (padding steps count for nothing)."""
        ponder = getattr(out, "ponder", None)
        if ponder is None:
            total = masked_loss_sum(out.output, batch.targets, batch.mask, self.loss_kind)
        else:  # PonderNet: the task loss in expectation over the halting step
            total = expected_loss_sum(ponder.outputs, ponder.weights, batch.targets, batch.mask,
                                      self.loss_kind)  # fmt: skip
        count = scored_count(out.output, batch.mask, self.loss_kind)
        steps = batch.steps.to(out.output.dtype)
        penalties = {name: (aux.penalty * steps).sum() for name, aux in out.aux.items()}
        return total, count, penalties

    def _log_tiers(
        self, stage: str, aux: dict[str, Any], penalties: dict[str, Tensor], steps: Tensor
    ) -> None:
        """Log each tier's penalty (already a mean over real steps) and its statistics, each
        averaged over the real steps (B, T) like the penalty; for tiers with a value cache,
        the hit rate over the window's real steps (hits / value rows read, 0 when none); for
        tiers that sample their index's recall, the recall over the sampled real steps (only
        in a batch that holds one)."""
        on_step = stage == "train"
        B = steps.shape[0]
        real = steps.sum().clamp_min(1)
        tiers = [module for module in self.controller.modules() if isinstance(module, Tier)]
        caches = {tier.name for tier in tiers if tier.has_value_cache}
        sampled = {tier.name for tier in tiers if tier.samples_recall}
        values = {}
        for name, record in aux.items():
            mask = steps.to(record.rewrite.dtype)  # (B, T), 1 on real steps
            values[f"{stage}/penalty/{name}"] = penalties[name].detach()
            for field in TIER_METRICS:
                per_step = getattr(record, field).detach()  # (B, T)
                values[f"{stage}/{field}/{name}"] = (per_step * mask).sum() / real
            if name in caches:
                hits = (record.cache_hits.detach() * mask).sum()
                reads = (record.value_reads.detach() * mask).sum()
                values[f"{stage}/cache_hit_rate/{name}"] = hits / reads.clamp_min(1)
            if name in sampled:
                checked = (record.recall_checked.detach() * mask).sum()
                if checked.item() > 0:  # a batch with a sampled step: recall@k found there
                    found = (record.recall_hits.detach() * mask).sum()
                    values[f"{stage}/recall/{name}"] = found / checked
        if "ponder" in aux:  # an ACTController: the internal steps per input
            values[f"{stage}/ponder_steps"] = values[f"{stage}/write_mass/ponder"]
        self.log_dict(
            values, on_step=on_step, on_epoch=not on_step, batch_size=B, sync_dist=not on_step
        )

    def _flush(self, state: Any) -> Any:
        """The end of a window: tiers with a write buffer store it (``Controller.flush``)."""
        flush = getattr(self.controller, "flush", None)
        return state if flush is None else flush(state)

    def _step(self, batch: SequenceBatch, stage: str) -> Tensor:
        out = self.controller(batch.inputs)
        self._flush(out.state)  # stores detached copies; the graph keeps the buffer
        total, count, penalty_sums = self._losses(out, batch)
        task_loss = total / count.clamp_min(1)
        real_steps = batch.steps.sum().clamp_min(1)
        penalties = {name: value / real_steps for name, value in penalty_sums.items()}
        loss = task_loss + sum(penalties.values())
        self._log_losses(stage, loss, task_loss, batch)
        self._log_tiers(stage, out.aux, penalties, batch.steps)
        if stage == "train":
            if self.loss_kind == "bits":
                self._log_train_bit_errors(
                    bit_errors(out.output.detach(), batch.targets, batch.mask)
                )
        else:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(out.output.detach(), batch.targets, batch.mask)
            self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    def _log_train_bit_errors(self, per_sequence: Tensor) -> None:
        """Log the mean of (B,) wrong bits per sequence as ``train/bit_errors``."""
        self.log("train/bit_errors", per_sequence.mean(), batch_size=per_sequence.shape[0])

    def _log_losses(
        self, stage: str, loss: Tensor, task_loss: Tensor, batch: SequenceBatch
    ) -> None:
        on_step = stage == "train"
        self.log_dict(
            {f"{stage}/loss": loss.detach(), f"{stage}/task_loss": task_loss.detach()},
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=True,
            batch_size=batch.inputs.shape[0],
            sync_dist=not on_step,
        )

    # -------------------------------------------------------------------------- stages
    def _announce_stage(self) -> None:
        """Tell every tier the running stage (a Disk appends only in the stages it names)."""
        stage = self.trainer.state.stage
        value = None if stage is None else str(stage.value)
        for module in self.controller.modules():
            if isinstance(module, Tier):
                module.stage = value

    def teardown(self, stage: str) -> None:
        """After fit, validate, test or predict: tiers follow ``self.training`` again, and
        every Disk gives up its writer lock (the next append takes it again)."""
        for module in self.controller.modules():
            if isinstance(module, Tier):
                module.stage = None
            if isinstance(module, Disk):
                module.close()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._announce_stage()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the loss of a ``TwoClockController``'s gradient model (``train/sg/slow_loss``),
        summed over the backward passes of the batch (every window's, with TBPTT)."""
        pop = getattr(self.controller, "pop_synthetic_loss", None)
        value = pop() if pop is not None else None
        if value is not None:
            self.log("train/sg/slow_loss", value)

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._announce_stage()

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._announce_stage()

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._announce_stage()

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> Tensor | None:
        if self.tbptt_steps is None:
            return self._step(batch, "train")
        every = self.synthetic_check_every if self.synthetic is not None else 0
        if every and batch_idx % every == 0:
            self._check_synthetic(batch)
        return self._tbptt_step(batch)

    def validation_step(self, batch: SequenceBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: SequenceBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: SequenceBatch, batch_idx: int) -> dict[str, Tensor]:
        """Predictions: bit probabilities (B, T, O) or token ids (B, T), with the mask."""
        logits = self.controller(batch.inputs).output
        if self.loss_kind == "bits":
            return {"probabilities": torch.sigmoid(logits), "mask": batch.mask}
        return {"tokens": logits.argmax(dim=-1), "mask": batch.mask}

    # ------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        params: Any = self.controller.parameters()
        slow = getattr(self.controller, "synthetic", None)  # a TwoClockController's M
        if isinstance(slow, torch.nn.Module) and self.synthetic_lr is not None:
            own = {id(p) for p in slow.parameters()}
            params = [{"params": [p for p in self.controller.parameters() if id(p) not in own]},
                      {"params": list(slow.parameters()), "lr": self.synthetic_lr}]  # fmt: skip
        optimizer = self.optimizer_factory(params)
        if self.synthetic is not None:  # M has an optimizer of its own (the same kind)
            self._check_synthetic_setup()
            synthetic = self.optimizer_factory(self.synthetic.parameters())
            for group in synthetic.param_groups if self.synthetic_lr is not None else ():
                group["lr"] = self.synthetic_lr
            optimizers = [optimizer, synthetic]
            if self.scheduler_factory is None:
                return optimizers
            return optimizers, [self._scheduler_config(optimizer)]
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self._scheduler_config(optimizer)}

    def _check_synthetic_setup(self) -> None:
        """Refuse what synthetic gradients across windows do not support: several processes
        (M is stepped outside DDP's all-reduce) and a gradient scaler (16-bit mixed
        precision scales the true gradients that M's target is made of)."""
        trainer = self._trainer
        if trainer is None:
            return
        if trainer.world_size > 1:
            raise ValueError(
                f"TieredModule: synthetic_gradients=True runs in one process, got "
                f"world_size={trainer.world_size}; train with devices=1"
            )
        if str(trainer.precision).startswith("16"):
            raise ValueError(
                f"TieredModule: synthetic_gradients=True does not support "
                f"precision={trainer.precision!r} (its gradient scaler); use '32-true', "
                "'64-true' or 'bf16-mixed'"
            )

    def _scheduler_config(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # val/loss exists only after a validation: skip the steps before it.
            config.update(monitor="val/loss", strict=False)
        return config

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        value = gradient_clip_val if gradient_clip_val is not None else self.gradient_clip_val
        if value:
            self.clip_gradients(optimizer, value, gradient_clip_algorithm or "norm")
