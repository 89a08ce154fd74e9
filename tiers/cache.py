"""Cache: a small, dense, content-addressable memory (NTM-style content + usage write).

Every step, one write head either refreshes the slot its key matches or overwrites the
least recently used slot (an allocation gate mixes the two), then each read head attends
over all slots by content. Usage is a decaying record of recent access; the slot to
overwrite is chosen hard, as the argmin of usage, like the least-recently-used access of
Santoro et al. 2016 ("One-shot learning with memory-augmented neural networks"): gradients
flow through the gates, keys and contents, not through the choice. Cost per step
O(B (R + 1) N W).

Named dimensions: B batch, N slots, W width, R read heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tiered.hierarchy import check_tier_name, hierarchy_repr, spill_of
from tiered.tier import (
    Spill,
    Tier,
    TierOutput,
    Traffic,
    blend,
    join_spills,
    tier_stats,
    write_ticks,
)
from tiered.tiers import addressing
from tiered.validation import (
    check_bool,
    check_non_negative_float,
    check_positive_int,
    check_unit_interval,
)


class CacheState(NamedTuple):
    """Per-sequence state of the cache.

    Attributes:
        memory: (B, N, W).
        usage: (B, N) in [0, 1], how recently each slot was read or written.
        written: (B, N) in [0, 1], how much each slot has ever been written
            (``addressing.mark_written``); it never decays. Its sum is ``slots_used``; with
            ``spill_to`` it is differentiable, since a spill's gate depends on it.
        read_weights: (B, R, N), the last read weights (kept for diagnostics).
        clock: (B,) steps taken, an integer tensor.
    """

    memory: Tensor
    usage: Tensor
    written: Tensor
    read_weights: Tensor
    clock: Tensor


class CacheInterface(NamedTuple):
    """The cache's slice of the interface vector, split and squashed.

    Attributes:
        read_keys: (B, R, W).
        read_strengths: (B, R), >= 1.
        write_key: (B, 1, W).
        write_strength: (B, 1), >= 1.
        erase: (B, 1, W) in [0, 1].
        add: (B, 1, W).
        allocation_gate: (B, 1) in [0, 1]: 1 overwrites the least used slot, 0 the match.
        write_gate: (B, 1) in [0, 1].
    """

    read_keys: Tensor
    read_strengths: Tensor
    write_key: Tensor
    write_strength: Tensor
    erase: Tensor
    add: Tensor
    allocation_gate: Tensor
    write_gate: Tensor


def cache_interface_size(width: int, read_heads: int) -> int:
    """R (W + 1) + 3W + 3 features: see ``parse_cache_interface``."""
    return read_heads * (width + 1) + 3 * width + 3


def parse_cache_interface(interface: Tensor, width: int, read_heads: int) -> CacheInterface:
    """Split (B, cache_interface_size) into ``CacheInterface``.

    Layout: R read keys (W each), R read strengths, the write key (W), write strength,
    erase (W), add (W), allocation gate, write gate.
    """
    B, W, R = interface.shape[0], width, read_heads
    parts = torch.split(interface, [R * W, R, W, 1, W, W, 1, 1], dim=-1)
    return CacheInterface(
        read_keys=parts[0].reshape(B, R, W),
        read_strengths=addressing.oneplus(parts[1]),
        write_key=parts[2].reshape(B, 1, W),
        write_strength=addressing.oneplus(parts[3]),
        erase=torch.sigmoid(parts[4]).reshape(B, 1, W),
        add=parts[5].reshape(B, 1, W),
        allocation_gate=torch.sigmoid(parts[6]),
        write_gate=torch.sigmoid(parts[7]),
    )


def least_used_weights(usage: Tensor) -> Tensor:
    """One-hot weights on the least used slot (the first one on ties).

    Args:
        usage: (B, N).

    Returns:
        (B, N), 1 at argmin(usage), 0 elsewhere; carries no gradient.
    """
    index = usage.detach().argmin(dim=-1, keepdim=True)  # (B, 1)
    return torch.zeros_like(usage).scatter(-1, index, 1.0).detach()


def update_recency(
    prev_usage: Tensor, write_weights: Tensor, read_weights: Tensor, decay: float
) -> Tensor:
    """u_t = gamma (u_{t-1} + a - u_{t-1} a), a = 1 - prod over heads of (1 - w).

    ``a`` is the degree to which each slot was accessed (read or written) this step.

    Args:
        prev_usage: (B, N) in [0, 1].
        write_weights: (B, 1, N).
        read_weights: (B, R, N).
        decay: gamma in [0, 1].

    Returns:
        (B, N) in [0, 1].
    """
    weights = torch.cat([write_weights, read_weights], dim=1)  # (B, 1 + R, N)
    accessed = 1.0 - torch.prod(1.0 - weights, dim=1)  # (B, N)
    return decay * (prev_usage + accessed - prev_usage * accessed)


class Cache(Tier):
    """A small fast memory with dense soft attention over all slots.

    Args:
        slots: number of slots N (8 to 256 is the intended range).
        width: width W of each slot.
        read_heads: number of read heads R.
        usage_decay: gamma in [0, 1), how much of a slot's usage survives each step; lower
            forgets access sooner.
        rewrite_penalty: lambda, the weight of the erased content in the loss.
        period: the cache writes only on every ``period``-th step; reads every step.
        name: the tier's name in logs; defaults to ``"cache"``.
        spill_to: write-back: the name of a lower tier (a RAM or a Disk of the same
            controller) that receives what each write overwrites, instead of losing it
            (``tiered.hierarchy.spill_of``); None: overwritten content is lost.
        spill_projection: when the target's width differs from this cache's, map spilled
            rows through a trainable linear projection (owned by the controller);
            without it a width mismatch is an error.
        fill_from: fill on read: names of lower tiers whose reads are written into this
            cache at the next step when a head read them sharply (its largest read weight
            at least ``fill_threshold``), into the least used slots, with that weight as
            the write gate. Fills happen every step, whatever the period.
        fill_threshold: in [0, 1]: the largest read weight a head of a ``fill_from`` tier
            needs for its read to be filled in.
        clock_rule: with ``period > 1``: "last", "mean" or "gate" (``tiered.tier.Tier``).
    """

    def __init__(
        self,
        slots: int,
        width: int,
        read_heads: int = 1,
        usage_decay: float = 0.9,
        rewrite_penalty: float = 0.0,
        period: int = 1,
        name: str | None = None,
        spill_to: str | None = None,
        spill_projection: bool = False,
        fill_from: list[str] | None = None,
        fill_threshold: float = 0.5,
        clock_rule: str = "last",
    ) -> None:
        super().__init__(
            rewrite_penalty=rewrite_penalty, period=period, name=name, clock_rule=clock_rule
        )
        self.spill_to = check_tier_name("Cache", "spill_to", spill_to)
        self.spill_projection = check_bool("Cache", "spill_projection", spill_projection)
        if fill_from is not None and (
            not isinstance(fill_from, (list, tuple))
            or not all(isinstance(n, str) and n for n in fill_from)
        ):
            raise ValueError(f"Cache: fill_from must be a list of tier names, got {fill_from!r}")
        self.fill_from = list(fill_from or [])
        self.fill_threshold = check_unit_interval("Cache", "fill_threshold", fill_threshold)
        self.slots = check_positive_int("Cache", "slots", slots)
        self.width = check_positive_int("Cache", "width", width)
        self.read_heads = check_positive_int("Cache", "read_heads", read_heads)
        self.usage_decay = check_non_negative_float("Cache", "usage_decay", usage_decay)
        if self.usage_decay >= 1.0:
            raise ValueError(
                "Cache: usage_decay must lie in [0, 1) (at 1 usage saturates and the cache "
                f"can no longer tell which slot was used least recently), got {usage_decay}"
            )

    @property
    def interface_size(self) -> int:
        return cache_interface_size(self.width, self.read_heads)

    @property
    def read_size(self) -> int:
        return self.read_heads * self.width

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CacheState:
        B = check_positive_int("Cache", "batch_size", batch_size)
        return CacheState(
            memory=torch.zeros(B, self.slots, self.width, device=device, dtype=dtype),
            usage=torch.zeros(B, self.slots, device=device, dtype=dtype),
            written=torch.zeros(B, self.slots, device=device, dtype=dtype),
            read_weights=torch.zeros(B, self.read_heads, self.slots, device=device, dtype=dtype),
            clock=torch.zeros(B, device=device, dtype=torch.long),
        )

    @property
    def write_slices(self) -> list[slice]:
        """The write key, strength, erase, add and the two gates: after the read heads'
        keys and strengths."""
        R, W = self.read_heads, self.width
        return [slice(R * (W + 1), self.interface_size)]

    def forward(
        self,
        interface: Tensor,
        state: CacheState,
        incoming: tuple[Spill, ...] = (),
        with_traffic: bool = False,
    ) -> TierOutput | tuple[TierOutput, Traffic]:
        """One step: write (on ticks), then read (``step``, through ``nn.Module``'s call).

        Args:
            interface: (B, interface_size).
            state: the previous ``CacheState``.
            incoming: fills to write first (see ``step``).
            with_traffic: also return the ``Traffic`` (the controller's call).

        Returns:
            ``TierOutput`` with the read words (B, R * W), the next state and stats (and the
            ``Traffic`` with ``with_traffic``).
        """
        out = self.step(interface, state, incoming)
        return out if with_traffic else out[0]

    def step(
        self, interface: Tensor, state: CacheState, incoming: tuple[Spill, ...] = ()
    ) -> tuple[TierOutput, Traffic]:
        """One step: fills (every step), the write (on ticks), then the reads.

        Args:
            interface: (B, interface_size).
            state: the previous ``CacheState``.
            incoming: fills from the ``fill_from`` tiers: rows (B, S, W) and gates (B, S),
                written first into the S least used slots
                (``addressing.write_rows_to_free_slots``); the write's allocation then
                takes the least used slot after them.

        Returns:
            The ``TierOutput`` and the ``Traffic``: the spill (with ``spill_to``: one row
            for the fills' overwrite, when there were fills, then one for the write's) and
            each read head's largest weight.
        """
        self.check_interface(interface, state.clock)
        p = parse_cache_interface(interface, self.width, self.read_heads)
        tick = write_ticks(state.clock, self.period)  # (B,)
        B = interface.shape[0]

        memory, usage, written = state.memory, state.usage, state.written
        spills, fill_weights, fill_erased = [], None, 0.0
        if incoming:
            rows = torch.cat([fill.content for fill in incoming], dim=1)  # (B, S, W)
            gates = torch.cat([fill.gate for fill in incoming], dim=1)  # (B, S)
            if rows.shape[1] > self.slots:
                raise ValueError(
                    f"Cache '{self.name}': {rows.shape[1]} fills in one step need at most "
                    f"as many slots, the cache has {self.slots}"
                )
            memory, removed, fill_weights = addressing.write_rows_to_free_slots(
                memory, usage, rows, gates
            )  # fill_weights: (B, S, N)
            fill_erased = removed.abs().sum(dim=(-2, -1))
            if self.spill_to is not None:
                spills.append(spill_of(removed, fill_weights.sum(dim=1), written))
            touched = 1.0 - torch.prod(1.0 - fill_weights.detach(), dim=1)  # (B, N)
            marks = fill_weights if self.spill_to is not None else fill_weights.detach()
            written = addressing.mark_written(written, marks)
            usage = usage + touched - usage * touched  # the filled slots count as used

        allocation = least_used_weights(usage).unsqueeze(1)  # (B, 1, N)
        content = addressing.content_weights(memory, p.write_key, p.write_strength)
        write_weights = addressing.write_weights(
            allocation, content, p.allocation_gate, p.write_gate
        )  # (B, 1, N)
        write_weights = write_weights * tick.to(write_weights.dtype)[:, None, None]
        before = memory
        memory, removed = addressing.overwrite(before, write_weights, p.erase, p.add)
        erased = removed.abs().sum(dim=(-2, -1)) + fill_erased
        if self.period > 1:
            memory = blend(tick, memory, before)
        if self.spill_to is not None:
            spills.append(spill_of(removed, write_weights.sum(dim=1), written))

        read_weights = addressing.content_weights(memory, p.read_keys, p.read_strengths)
        words = addressing.read_words(memory, read_weights)  # (B, R, W)
        accesses = (
            write_weights
            if fill_weights is None
            else torch.cat([fill_weights, write_weights], dim=1)
        )
        usage = update_recency(state.usage, accesses, read_weights, self.usage_decay)
        # with spill_to, how full each slot is shapes the next spill's gate: keep its graph
        marks = write_weights if self.spill_to is not None else write_weights.detach()
        written = addressing.mark_written(written, marks)  # (B, N)

        mass = accesses.sum(dim=(1, 2))  # g^w on ticks, 0 off them, plus the fills' gates
        spill = join_spills(spills)
        stats = tier_stats(
            erased, write_mass=mass, read_weights=read_weights, slots_used=written.sum(dim=-1),
            spilled=None if spill is None else spill.gate.sum(dim=1),
        )  # fmt: skip
        next_state = CacheState(memory, usage, written, read_weights, state.clock + 1)
        traffic = Traffic(spill=spill, peak=read_weights.max(dim=-1).values)
        return TierOutput(words.reshape(B, -1), next_state, stats), traffic

    def extra_repr(self) -> str:
        return (
            f"slots={self.slots}, width={self.width}, read_heads={self.read_heads}, "
            f"usage_decay={self.usage_decay}, " + super().extra_repr() + hierarchy_repr(self)
        )
