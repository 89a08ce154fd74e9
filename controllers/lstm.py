"""LSTMController: one Register and a list of memory tiers, stepped over a sequence.

Per step t:
    register input   = [x_t, r_{t-1}]                  (B, I + sum of read sizes)
    h_t              = Register(register input)         (B, S)
    interface        = Linear(h_t) [+ S x_t], split among tiers   (B, sum of interface sizes)
    r_t              = [tier_k(interface_k) for k]       (B, sum of read sizes)
    y_t              = Linear([h_t, r_t])                (B, O)

Named dimensions: B batch, T time, I input size, O output size, S register hidden size.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tiered.controllers.base import Controller
from tiered.tier import Tier, TierStats
from tiered.tiers.register import Register, RegisterState
from tiered.validation import check_bool, check_positive_int


class ControllerState(NamedTuple):
    """Per-sequence state of a controller.

    Attributes:
        register: the Register's state.
        tiers: one state per tier, in the order of the controller's ``tiers``.
        reads: (B, sum of read sizes), the tiers' reads at the previous step.
    """

    register: RegisterState
    tiers: tuple[Any, ...]
    reads: Tensor


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


class ControllerOutput(NamedTuple):
    """What a controller returns.

    Attributes:
        output: (B, T, O), the outputs (logits) at every step.
        state: the final ``ControllerState``; pass it back in to continue the sequence.
        aux: per tier name (the register's included), a ``TierAux`` record.
    """

    output: Tensor
    state: ControllerState
    aux: dict[str, TierAux]


class LSTMController(Controller):
    """A recurrent controller composing a Register and memory tiers.

    Args:
        input_size: features per step of the task input, I.
        output_size: features per step of the output, O.
        register: the recurrent core; its input size is set here to I plus the tiers' reads.
        tiers: the memory tiers, in order; may be empty. Names must be unique.
        input_skip: add a trainable linear map S of the step's input to the interface. It
            starts as the identity into every tier query (``Tier.query_slices``) as wide as
            the input, and zero elsewhere, so that such tiers are first queried with the
            input itself (e.g. a ROM looked up by the key given as input); with no such
            query it starts at zero, with a warning.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        register: Register,
        tiers: list[Tier] | None = None,
        input_skip: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("LSTMController", "input_size", input_size)
        self.output_size = check_positive_int("LSTMController", "output_size", output_size)
        if not isinstance(register, Register):
            raise TypeError(
                f"LSTMController: register must be a tiered.tiers.Register, "
                f"got {type(register).__name__}"
            )
        tiers = list(tiers or [])
        for position, tier in enumerate(tiers):
            if not isinstance(tier, Tier) or isinstance(tier, Register):
                raise TypeError(
                    f"LSTMController: tiers[{position}] must be a memory tier (Cache, RAM, ...), "
                    f"got {type(tier).__name__}"
                )
        names = [register.name] + [tier.name for tier in tiers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"LSTMController: tiers must have unique names (the register's included), "
                f"got {names} with "
                f"{duplicates} repeated; give each tier its own `name`"
            )
        self.register = register
        self.tiers = nn.ModuleList(tiers)
        self.reads_size = sum(tier.read_size for tier in tiers)
        self.interface_sizes = [tier.interface_size for tier in tiers]
        register.build(input_size + self.reads_size)
        S = register.hidden_size
        self.interface = nn.Linear(S, sum(self.interface_sizes)) if tiers else None
        check_bool("LSTMController", "input_skip", input_skip)
        self.input_skip = (
            nn.Linear(input_size, sum(self.interface_sizes), bias=False)
            if tiers and input_skip
            else None
        )
        if self.input_skip is not None:
            identity = identity_into_queries(self.tiers, input_size)
            if not identity.any():
                widths = sorted({q.stop - q.start for t in tiers for q in t.query_slices})
                warnings.warn(
                    f"LSTMController: input_skip=True but no tier query is as wide as the "
                    f"input ({input_size}; the tiers' query widths are {widths}), so the skip "
                    f"starts at zero instead of the identity",
                    stacklevel=2,
                )
            with torch.no_grad():
                self.input_skip.weight.copy_(identity)
        self.output = nn.Linear(S + self.reads_size, output_size)

    @property
    def tier_names(self) -> list[str]:
        """Names of the register and the tiers, in order."""
        return [self.register.name] + [tier.name for tier in self.tiers]

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ControllerState:
        """The state at the start of a batch of sequences."""
        return ControllerState(
            register=self.register.initial_state(batch_size, device, dtype),
            tiers=tuple(tier.initial_state(batch_size, device, dtype) for tier in self.tiers),
            reads=torch.zeros(batch_size, self.reads_size, device=device, dtype=dtype),
        )

    def step(
        self, x: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState, dict[str, TierStats]]:
        """One time step.

        Args:
            x: (B, I).
            state: the previous ``ControllerState``.

        Returns:
            The output (B, O), the next state, and each tier's ``TierStats`` by name.
        """
        hidden, register_state, register_stats = self.register(
            torch.cat([x, state.reads], dim=-1), state.register
        )  # hidden: (B, S)
        stats = {self.register.name: register_stats}
        reads, tier_states = [], []
        if self.interface is not None:
            features = self.interface(hidden)  # (B, sum of interface sizes)
            if self.input_skip is not None:
                features = features + self.input_skip(x)
            interfaces = torch.split(features, self.interface_sizes, dim=-1)
            for tier, interface, tier_state in zip(
                self.tiers, interfaces, state.tiers, strict=True
            ):
                read, next_tier_state, tier_stats = tier(interface, tier_state)
                reads.append(read)
                tier_states.append(next_tier_state)
                stats[tier.name] = tier_stats
        all_reads = torch.cat(reads, dim=-1) if reads else state.reads  # (B, sum of reads)
        output = self.output(torch.cat([hidden, all_reads], dim=-1))  # (B, O)
        return output, ControllerState(register_state, tuple(tier_states), all_reads), stats

    def forward(self, x: Tensor, state: ControllerState | None = None) -> ControllerOutput:
        """Run over a sequence.

        Args:
            x: (B, T, I).
            state: where to continue from; None starts fresh sequences.

        Returns:
            ``ControllerOutput(output (B, T, O), final state, aux by tier name)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size or x.shape[1] < 1:
            raise ValueError(
                f"LSTMController: x must have shape (batch, time >= 1, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        outputs: list[Tensor] = []
        records: dict[str, list[TierStats]] = {name: [] for name in self.tier_names}
        for t in range(x.shape[1]):
            output, state, stats = self.step(x[:, t], state)
            outputs.append(output)
            for name, tier_stats in stats.items():
                records[name].append(tier_stats)
        penalties = {self.register.name: self.register.rewrite_penalty}
        penalties.update({tier.name: tier.rewrite_penalty for tier in self.tiers})
        aux = {name: _stack_stats(records[name], penalties[name]) for name in self.tier_names}
        return ControllerOutput(torch.stack(outputs, dim=1), state, aux)


def identity_into_queries(tiers: list[Tier] | nn.ModuleList, input_size: int) -> Tensor:
    """(sum of interface sizes, I): the identity into every tier query slice of width I,
    zero elsewhere."""
    sizes = [tier.interface_size for tier in tiers]
    weight = torch.zeros(sum(sizes), input_size)
    offset = 0
    for tier, size in zip(tiers, sizes, strict=True):
        for query in tier.query_slices:
            if query.stop - query.start == input_size:
                weight[offset + query.start : offset + query.stop] = torch.eye(input_size)
        offset += size
    return weight


def _stack_stats(steps: list[TierStats], rewrite_penalty: float) -> TierAux:
    """Stack per-step (B,) statistics into (B, T) and add the penalty."""
    stacked = {
        field: torch.stack([getattr(s, field) for s in steps], dim=1) for field in TierStats._fields
    }
    return TierAux(penalty=rewrite_penalty * stacked["rewrite"], **stacked)
