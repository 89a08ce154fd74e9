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
from tiered.controllers.sequence import ControllerOutput, run_sequence
from tiered.hierarchy import plan_hierarchy, summarise_interface
from tiered.tier import Spill, Tier, TierStats, Traffic
from tiered.tiers.register import Register, RegisterState
from tiered.validation import check_bool, check_positive_int


class ControllerState(NamedTuple):
    """Per-sequence state of a controller.

    Attributes:
        register: the Register's state.
        tiers: one state per tier, in the order of the controller's ``tiers``.
        reads: (B, sum of read sizes), the tiers' reads at the previous step.
        summaries: per tier, the summary (B, F) of its write features since its last tick
            (tiers with ``period > 1`` and a ``clock_rule`` other than "last"), else None;
            empty: none yet.
        fills: per tier, the fill (``Spill``) a Cache with ``fill_from`` writes at the next
            step, else None; empty: none yet.
    """

    register: RegisterState
    tiers: tuple[Any, ...]
    reads: Tensor
    summaries: tuple[Tensor | None, ...] = ()
    fills: tuple[Spill | None, ...] = ()


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
        self.plan = plan_hierarchy(tiers)
        self.spill_projections = nn.ModuleDict(
            {name: nn.Linear(a, b, bias=False) for name, (a, b) in self.plan.projections.items()}
        )
        for tier in tiers:
            if tier.clock_rule != "last" and not tier.write_slices:
                raise ValueError(
                    f"LSTMController: {type(tier).__name__} '{tier.name}' has "
                    f"clock_rule={tier.clock_rule!r}, but it never writes; use 'last'"
                )
        # Tiers whose summaries take a learned gate: one more interface feature each.
        self.gated = [
            position
            for position, tier in enumerate(tiers)
            if tier.clock_rule == "gate" and tier.period > 1
        ]
        width = sum(self.interface_sizes) + len(self.gated)
        self.interface = nn.Linear(S, width) if tiers else None
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

    def flush(self, state: ControllerState) -> ControllerState:
        """End a training window: every tier with a write buffer (a ``learn_writes`` Disk)
        stores its buffered rows; returns the state with empty buffers."""
        tiers = tuple(
            tier.flush(tier_state) if hasattr(tier, "flush") else tier_state
            for tier, tier_state in zip(self.tiers, state.tiers, strict=True)
        )
        return state._replace(tiers=tiers)

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
        if self.interface is None:
            output = self.output(torch.cat([hidden, state.reads], dim=-1))  # (B, O)
            return output, state._replace(register=register_state), stats
        features = self.interface(hidden)  # (B, sum of interface sizes + gated tiers)
        total = sum(self.interface_sizes)
        interfaces = features[:, :total]
        if self.input_skip is not None:
            interfaces = interfaces + self.input_skip(x)
        gates = torch.sigmoid(features[:, total:])  # (B, gated tiers)
        n = len(self.tiers)
        summaries = list(state.summaries or (None,) * n)
        pending_fills = state.fills or (None,) * n
        incoming: list[list[Spill]] = [[] for _ in range(n)]
        outputs: list[Any] = [None] * n
        traffic: list[Traffic] = [Traffic()] * n
        split = torch.split(interfaces, self.interface_sizes, dim=-1)
        for position in self.plan.order:
            interface = split[position]
            tier, tier_state = self.tiers[position], state.tiers[position]
            if tier.clock_rule != "last" and tier.period > 1:
                gate = (
                    gates[:, self.gated.index(position)].unsqueeze(-1)
                    if position in self.gated
                    else None
                )
                interface, summaries[position] = summarised(
                    tier, interface, summaries[position], tier_state.clock, gate
                )
            fill = pending_fills[position]
            arrived = tuple(incoming[position]) + (() if fill is None else (fill,))
            outputs[position], traffic[position] = step_tier(tier, interface, tier_state, arrived)
            spill = traffic[position].spill
            if spill is not None and position in self.plan.spills:
                if tier.name in self.spill_projections:
                    spill = spill._replace(content=self.spill_projections[tier.name](spill.content))
                incoming[self.plan.spills[position]].append(spill)
        reads = [out.read for out in outputs]
        for tier, out in zip(self.tiers, outputs, strict=True):
            stats[tier.name] = out.stats
        fills = tuple(
            fills_for(
                self.tiers[c], [(outputs[s].read, traffic[s], self.tiers[s]) for s in sources]
            )
            if c in self.plan.fills and (sources := self.plan.fills[c])
            else None
            for c in range(n)
        )
        all_reads = torch.cat(reads, dim=-1)  # (B, sum of reads)
        output = self.output(torch.cat([hidden, all_reads], dim=-1))  # (B, O)
        next_state = ControllerState(
            register_state,
            tuple(out.state for out in outputs),
            all_reads,
            tuple(summaries) if any(s is not None for s in summaries) else (),
            tuple(fills) if any(f is not None for f in fills) else (),
        )
        return output, next_state, stats

    def forward(self, x: Tensor, state: ControllerState | None = None) -> ControllerOutput:
        """Run over a sequence.

        Args:
            x: (B, T, I).
            state: where to continue from; None starts fresh sequences.

        Returns:
            ``ControllerOutput(output (B, T, O), final state, aux by tier name)``.
        """
        penalties = {self.register.name: self.register.rewrite_penalty}
        penalties.update({tier.name: tier.rewrite_penalty for tier in self.tiers})
        return run_sequence(self, x, state, penalties)


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


def step_tier(
    tier: Tier, interface: Tensor, state: Any, incoming: tuple[Spill, ...]
) -> tuple[Any, Traffic]:
    """Step a tier through ``nn.Module``'s call (so hooks fire): with its traffic where it
    overrides ``Tier.step``, else its plain ``forward`` and no traffic."""
    if type(tier).step is Tier.step:
        return tier.step(interface, state, incoming)  # calls the tier itself
    return tier(interface, state, incoming, with_traffic=True)


def summarised(
    tier: Tier, interface: Tensor, previous: Tensor | None, clock: Tensor, gate: Tensor | None
) -> tuple[Tensor, Tensor]:
    """A slow tier's interface with its write features replaced by their summary.

    Args:
        tier: a tier with ``period > 1`` and a ``clock_rule`` other than "last".
        interface: (B, interface_size) this step's features.
        previous: (B, F) the summary after the previous step (None: none yet).
        clock: (B,) the tier's steps taken.
        gate: (B, 1) the learned gate for "gate", else None.

    Returns:
        The interface (B, interface_size) to step the tier with and the summary (B, F).
    """
    slices = tier.write_slices
    features = torch.cat([interface[:, piece] for piece in slices], dim=-1)  # (B, F)
    prev = torch.zeros_like(features) if previous is None else previous
    summary = summarise_interface(tier.clock_rule, features, prev, clock, tier.period, gate)
    parts, at, offset = [], 0, 0
    for piece in slices:
        parts.append(interface[:, at : piece.start])
        width = piece.stop - piece.start
        parts.append(summary[:, offset : offset + width])
        at, offset = piece.stop, offset + width
    parts.append(interface[:, at:])
    return torch.cat(parts, dim=-1), summary


def fills_for(cache: Tier, sources: list[tuple[Tensor, Traffic, Tier]]) -> Spill:
    """What a Cache with ``fill_from`` writes at the next step: each source head's read
    (B, W) as a row, gated by the head's largest read weight where it reaches the cache's
    ``fill_threshold`` (0 below it).

    Args:
        cache: the Cache.
        sources: per source tier, its read (B, R * W), its ``Traffic`` and the tier.

    Returns:
        ``Spill`` with rows (B, sum of R, W) and gates (B, sum of R).
    """
    rows, gates = [], []
    for read, traffic, source in sources:
        if traffic.peak is None:
            raise ValueError(f"{type(source).__name__} '{source.name}' offers no read peaks")
        B, R = traffic.peak.shape
        rows.append(read.reshape(B, R, -1))
        peak = traffic.peak
        gates.append(peak * (peak.detach() >= cache.fill_threshold).to(peak.dtype))  # type: ignore[attr-defined]
    return Spill(torch.cat(rows, dim=1), torch.cat(gates, dim=1))
