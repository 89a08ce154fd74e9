"""Truncated backpropagation through time for ``TieredModule`` (manual optimisation), with
synthetic gradients bridging the windows' edges (``tiered.synthetic``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tiered.metrics import bit_errors
from tiered.state import detach_state
from tiered.synthetic import check_cosine, inject, predictor_loss, start_state, target
from tiered.tasks.base import SequenceBatch
from tiered.tier import Tier


def scored_count(logits: Tensor, mask: Tensor, loss: str) -> Tensor:
    """How many elements ``masked_loss_sum`` added: scored steps (times bits for bits)."""
    count = mask.sum()
    return count * logits.shape[-1] if loss == "bits" else count


class TruncatedTraining:
    """The training step of ``TieredModule`` with ``tbptt_steps`` (a mixin: it uses the
    module's controller, losses, logging and options)."""

    def _window_loss(self, out: Any, window: SequenceBatch, batch: SequenceBatch) -> tuple:
        """A window's loss, its shares of the whole batch's means (the task loss over the
        batch's scored elements, the penalties over its real steps), and its sums."""
        total, count, penalty_sums = self._losses(out, window)
        whole_count = scored_count(out.output, batch.mask, self.loss_kind).clamp_min(1)
        whole_steps = batch.steps.sum().clamp_min(1)
        loss = total / whole_count + sum(penalty_sums.values()) / whole_steps
        return loss, total, count, penalty_sums

    def _tbptt_step(self, batch: SequenceBatch) -> None:
        """Optimise every ``tbptt_steps`` steps; the state is detached between windows (and
        bridged by a synthetic gradient with ``synthetic_gradients``)."""
        optimizers = self.optimizers()
        optimizer, sg_optimizer = optimizers if isinstance(optimizers, list) else (optimizers, None)
        state, sums, counts, last, errors = None, [], [], None, 0.0
        penalty_totals: dict[str, Tensor] = {}
        T = batch.inputs.shape[1]
        whole_steps = batch.steps.sum().clamp_min(1)  # the penalties' denominator
        pending, sg_losses = None, []  # the last edge's (end vector, alive rows); M's losses
        applied = self.synthetic_scale if self.global_step >= self.synthetic_warmup else 0.0
        # M's scale: gradients of the batch's summed task loss (tiered.synthetic)
        unit = scored_count(batch.targets, batch.mask, self.loss_kind).clamp_min(1).item()
        for start in range(0, T, self.tbptt_steps):
            window = SequenceBatch(*(t[:, start : start + self.tbptt_steps] for t in batch))
            leaf = None
            if self.synthetic is not None and state is not None:
                state, leaf = start_state(state)
            out = self.controller(window.inputs, state)
            loss, total, count, penalty_sums = self._window_loss(out, window, batch)
            edge, bootstrap = None, None
            if self.synthetic is not None and start + self.tbptt_steps < T:
                # rows with scored steps after the edge (a finished, padded one has no future)
                alive = batch.mask[:, start + self.tbptt_steps :].any(dim=1)
                loss, end, bootstrap = inject(loss, out.state, leaf, self.synthetic, applied,
                                              self.synthetic_scale, unit, alive)  # fmt: skip
                edge = (end, alive)
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.gradient_clip_val:
                self.clip_gradients(optimizer, self.gradient_clip_val, "norm")
            optimizer.step()
            if sg_optimizer is not None and pending is not None and bool(pending[1].any()):
                # M's optimiser is stepped directly: Lightning would count its steps in
                # global_step, which counts the controller's (one per window).
                raw = sg_optimizer.optimizer
                raw.zero_grad()
                end, rows = pending
                sg_loss = predictor_loss(self.synthetic(end), target(leaf, bootstrap, unit), rows)
                sg_loss.backward()
                raw.step()
                sg_losses.append(sg_loss.detach())
            pending = edge
            if self.scheduler_interval == "step":
                self._step_scheduler()
            state = detach_state(self._flush(out.state))
            sums.append(total.detach())
            counts.append(count)
            if self.loss_kind == "bits":  # wrong bits per sequence add up across windows
                errors = errors + bit_errors(out.output.detach(), window.targets, window.mask)
            for name, value in penalty_sums.items():
                penalty_totals[name] = penalty_totals.get(name, 0.0) + value.detach()
            last = (out, window.steps)
        task_loss = torch.stack(sums).sum() / torch.stack(counts).sum().clamp_min(1)
        penalties = {name: value / whole_steps for name, value in penalty_totals.items()}
        out, steps = last  # type: ignore[misc]
        # Logged for the whole batch: the losses and penalties; for the last window: stats.
        self._log_losses(
            "train", task_loss + sum(p.detach() for p in penalties.values()), task_loss, batch
        )
        self._log_tiers("train", out.aux, penalties, steps)
        if self.loss_kind == "bits":
            self._log_train_bit_errors(errors)  # type: ignore[arg-type]
        if sg_losses:
            self.log("train/sg/loss", torch.stack(sg_losses).mean(), batch_size=len(batch.inputs))

    def _check_synthetic(self, batch: SequenceBatch) -> None:
        """Log ``train/sg/cosine``: predictions against full BPTT's gradients at each window
        end (tiers see the stage "sg_check", so a Disk does not append)."""
        for module in self.controller.modules():
            if isinstance(module, Tier):
                module.stage = "sg_check"
        try:

            def window_loss(out: Any, start: int) -> Tensor:
                window = SequenceBatch(*(t[:, start : start + self.tbptt_steps] for t in batch))
                return self._window_loss(out, window, batch)[0]

            value = check_cosine(self.controller, batch.inputs, self.tbptt_steps, window_loss,
                                 self.synthetic)  # fmt: skip
        finally:
            self._announce_stage()
        if not torch.isnan(value):
            self.log("train/sg/cosine", value, batch_size=len(batch.inputs))
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped  # the other metrics'
            for logger in self.trainer.loggers:  # written now, whatever log_every_n_steps
                logger.log_metrics({"train/sg/cosine": float(value)}, step=step)

    def _step_scheduler(self) -> None:
        """Step the scheduler by hand (manual optimisation), with val/loss for plateaus."""
        if self.scheduler_factory is None:
            return
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.trainer.callback_metrics.get("val/loss")
            if value is not None:
                scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]

    def on_train_epoch_end(self) -> None:
        if self.tbptt_steps is not None and self.scheduler_interval == "epoch":
            self._step_scheduler()
