"""What every controller's ``forward`` shares: stepping over time and stacking the tiers'
per-step records (``run_sequence``), and the records and output it returns.

Named dimensions: B batch, T time, I input size, O output size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from tiered.tier import TierStats


class TierAux(NamedTuple):
    """One tier's per-step record over a sequence, each of shape (B, T): its ``TierStats``
    stacked over time (``tiered.tier.TierStats`` defines them), plus the penalty.

    Attributes:
        rewrite: content overwritten at each step (differentiable).
        penalty: ``rewrite_penalty * rewrite`` (differentiable).
        write_mass: total write weight (0 off the tier's ticks).
        wrote: 1.0 where the tier wrote.
        read_entropy: mean entropy of the read heads' weights, in nats.
        slots_used: slots holding content.
        value_reads: value rows read from a key/value store (ROM, Disk).
        cache_hits: of those, served without a store read.
        recall_checked: exact nearest rows checked against the kNN index (sparse RAM).
        recall_hits: of those, returned by the index.
        spilled: content written back into the ``spill_to`` tier (the spill's gates).
    """

    rewrite: Tensor
    penalty: Tensor
    write_mass: Tensor
    wrote: Tensor
    read_entropy: Tensor
    slots_used: Tensor
    value_reads: Tensor
    cache_hits: Tensor
    recall_checked: Tensor
    recall_hits: Tensor
    spilled: Tensor


class ControllerOutput(NamedTuple):
    """What a controller returns.

    Attributes:
        output: (B, T, O), the outputs (logits) at every step.
        state: the final ``ControllerState``; pass it back in to continue the sequence.
        aux: per tier name (the register's included), a ``TierAux`` record.
        ponder: for a controller whose loss is an expectation over internal steps
            (``PonderNetController``), every step's outputs and halting weights
            (``PonderSteps``); None for the others.
    """

    output: Tensor
    state: Any
    aux: dict[str, TierAux]
    ponder: Any = None


def run_sequence(
    controller: Any,
    x: Tensor,
    state: Any,
    penalties: dict[str, float],
    extras: list | None = None,
) -> ControllerOutput:
    """Step ``controller`` over ``x`` (B, T, I) from ``state`` (None: fresh sequences).

    Every controller's ``forward``: its ``step`` at each time step, the outputs stacked to
    (B, T, O), and each record of ``tier_names`` stacked into a ``TierAux`` with the penalty
    weight ``penalties[name]``. With ``extras`` (a list), the step is the controller's
    ``step_with_extra``, whose fourth item at each time step is appended to it.
    """
    owner = type(controller).__name__
    if x.dim() != 3 or x.shape[-1] != controller.input_size or x.shape[1] < 1:
        raise ValueError(
            f"{owner}: x must have shape (batch, time >= 1, {controller.input_size}), "
            f"got {tuple(x.shape)}"
        )
    if state is None:
        state = controller.initial_state(x.shape[0], x.device, x.dtype)
    outputs: list[Tensor] = []
    records: dict[str, list[TierStats]] = {name: [] for name in controller.tier_names}
    for t in range(x.shape[1]):
        if extras is None:
            output, state, stats = controller.step(x[:, t], state)
        else:
            output, state, stats, extra = controller.step_with_extra(x[:, t], state)
            extras.append(extra)
        outputs.append(output)
        for name, tier_stats in stats.items():
            records[name].append(tier_stats)
    names = controller.tier_names
    aux = {name: _stack_stats(records[name], penalties[name]) for name in names}
    return ControllerOutput(torch.stack(outputs, dim=1), state, aux)


def _stack_stats(steps: list[TierStats], rewrite_penalty: float) -> TierAux:
    """Stack per-step (B,) statistics into (B, T) and add the penalty."""
    stacked = {
        field: torch.stack([getattr(s, field) for s in steps], dim=1) for field in TierStats._fields
    }
    return TierAux(penalty=rewrite_penalty * stacked["rewrite"], **stacked)
