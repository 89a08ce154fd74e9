"""The tier contract: what every memory tier is and returns.

A tier is an ``nn.Module`` with explicit per-sequence state in the style of DeepMind's DNC:
``forward(interface, prev_state) -> TierOutput(read, state, stats)``. Nothing per-sequence
lives on the module; everything a sequence needs is in the state, a NamedTuple of tensors
made by ``initial_state``. Every state carries a ``clock`` (batch,) of the steps already
taken, from which the tier decides whether this step is one of its write ticks.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tiered.validation import (
    check_choice,
    check_name,
    check_non_negative_float,
    check_positive_int,
)

# A weight above this counts as an access: SAM's delta (Rae et al. 2016). The sparse RAM
# records accesses with it, and ``wrote`` counts a write only when its mass exceeds it.
ACCESS_THRESHOLD = 0.005


class TierStats(NamedTuple):
    """Per-step statistics of one tier, each of shape (batch,).

    Only ``rewrite`` carries gradient; the other fields are detached figures of how the tier
    is used, cheap to compute (O(K) per read head in the sparse RAM, like its step).

    Attributes:
        rewrite: how much stored content this step overwrote; differentiable, so that
            ``rewrite_penalty * rewrite`` can be added to the loss.
        write_mass: the total write weight this step, summed over write heads and slots;
            0 off the tier's ticks. Cache and RAM: ``sum_h sum_n w^w_h[n]`` (the write gate
            for one head whose weights sum to 1); Disk: 1 per appended row; Register: 1 on
            ticks (its one state is rewritten whole); ROM: 0.
        wrote: 1.0 where the tier wrote this step, else 0.0: a tick and a write mass above
            ``ACCESS_THRESHOLD`` (0.005, SAM's delta), so a write gated shut (a sigmoid
            gate never reaches exactly 0) does not count. Its mean over steps is the share
            of steps that wrote.
        read_entropy: the mean over read heads of the entropy, in nats, of the read weights
            normalised to sum 1 (``read_entropy`` below): 0 for a one-hot read, log N for a
            uniform read over N slots (at most log K for the sparse RAM, ROM and Disk, whose
            weights lie over the K rows retrieved); 0 for a head that read nothing. The
            Register reads its one state with weight 1: 0.
        slots_used: how many slots hold content. Cache: ``sum_n f[n]`` with ``f`` the degree
            to which each slot has ever been written (``mark_written``); dense RAM: the
            DNC usage after this step's write, ``sum_n (u + w - u w)``, so a slot freed by
            the free gates stops counting; sparse RAM: rows ever written with any weight above 0
            (the rows its kNN index holds; a sigmoid write gate is never exactly 0, so a
            tick with the gate shut still marks its LRU row: a hard count, unlike the
            Cache's soft one); ROM and Disk: rows
            stored (readable); Register: ``sum |h|`` over layers and units, the soft count
            of active units (0 for the zero state, L * S when every unit saturates). The
            soft counts equal the number of slots for one-hot writes.
        value_reads: value rows this step read from a key/value store (ROM, Disk; rows the
            kNN search did not find are not counted); 0 for tiers without a store.
        cache_hits: how many of ``value_reads`` were served without a store read: from the
            LRU value cache (held since an earlier step) or, with ``values_in_memory``,
            from memory. The hit rate is ``cache_hits / value_reads``.
        recall_checked: how many of the exact k nearest rows of this step's content queries
            were computed to check the kNN index (the sparse RAM with ``recall_every``, on
            its sampled steps); 0 otherwise.
        recall_hits: how many of those the index returned too. The sampled recall@k is
            ``recall_hits / recall_checked``.
        spilled: the content this step wrote back into the tier named by ``spill_to``: the
            sum of its spill's gates (1 for a whole slot overwritten and sent down); 0
            without ``spill_to``.
    """

    rewrite: Tensor
    write_mass: Tensor
    wrote: Tensor
    read_entropy: Tensor
    slots_used: Tensor
    value_reads: Tensor
    cache_hits: Tensor
    recall_checked: Tensor
    recall_hits: Tensor
    spilled: Tensor


def read_entropy(weights: Tensor) -> Tensor:
    """The mean over read heads of the entropy of each head's normalised read weights.

    ``H_r = -sum_x p_r[x] log p_r[x]`` with ``p_r = w_r / sum_x w_r[x]`` (0 log 0 = 0), so a
    one-hot read gives 0 and a uniform read over X slots log X; a head whose weights are
    all 0 gives 0. Detached: no gradient flows through it.

    Args:
        weights: (B, R, X) non-negative read weights of R heads over X slots (or rows).

    Returns:
        (B,) the mean of H_r over the R heads, in nats.
    """
    w = weights.detach()
    total = w.sum(dim=-1, keepdim=True)  # (B, R, 1)
    p = w / torch.where(total > 0, total, torch.ones_like(total))  # (B, R, X)
    return 0.0 - torch.xlogy(p, p).sum(dim=-1).mean(dim=-1)  # 0.0 - x: no -0.0


def tier_stats(
    rewrite: Tensor,
    *,
    write_mass: Tensor,
    read_weights: Tensor,
    slots_used: Tensor,
    value_reads: Tensor | None = None,
    cache_hits: Tensor | None = None,
    recall_checked: Tensor | None = None,
    recall_hits: Tensor | None = None,
    spilled: Tensor | None = None,
) -> TierStats:
    """A step's ``TierStats``: everything but ``rewrite`` detached; ``wrote`` is
    ``write_mass > ACCESS_THRESHOLD``.

    Args:
        rewrite: (B,) differentiable.
        write_mass: (B,) total write weight this step (0 off ticks).
        read_weights: (B, R, X) this step's read weights, for ``read_entropy``.
        slots_used: (B,) slots holding content.
        value_reads: (B,) value rows read from a store; None: 0 (no store).
        cache_hits: (B,) of those, served without a store read; None: 0.
        recall_checked: (B,) exact neighbours checked against the index; None: 0.
        recall_hits: (B,) of those, returned by the index; None: 0.
        spilled: (B,) the gates of the rows written back (``spill_to``); None: 0.

    Returns:
        The ``TierStats``, every field (B,) in ``rewrite``'s dtype.
    """
    dtype = rewrite.dtype
    zero = torch.zeros_like(rewrite, dtype=dtype).detach()
    mass = write_mass.detach().to(dtype)
    return TierStats(
        rewrite=rewrite,
        write_mass=mass,
        wrote=(mass > ACCESS_THRESHOLD).to(dtype),
        read_entropy=read_entropy(read_weights).to(dtype),
        slots_used=slots_used.detach().to(dtype),
        value_reads=zero if value_reads is None else value_reads.detach().to(dtype),
        cache_hits=zero if cache_hits is None else cache_hits.detach().to(dtype),
        recall_checked=zero if recall_checked is None else recall_checked.detach().to(dtype),
        recall_hits=zero if recall_hits is None else recall_hits.detach().to(dtype),
        spilled=zero if spilled is None else spilled.detach().to(dtype),
    )


class TierOutput(NamedTuple):
    """What a tier's ``forward`` returns.

    Attributes:
        read: the read vector (batch, read_size).
        state: the next state, of the same type as the one passed in.
        stats: this step's statistics.
    """

    read: Tensor
    state: Any
    stats: TierStats


class Spill(NamedTuple):
    """Content a tier overwrote this step, to be written into the tier named by its
    ``spill_to`` (write-back), or content a lower tier read with high weight, to be written
    into a Cache that names it in ``fill_from`` (fill on read).

    Attributes:
        content: (B, S, W) S rows of content, each of the source's width W (or projected
            to the target's).
        gate: (B, S) in [0, 1], how much of each row to write: 0 writes nothing.
    """

    content: Tensor
    gate: Tensor


class Traffic(NamedTuple):
    """What a step of a tier offers the tiers around it (``Tier.step``).

    Attributes:
        spill: the content this step overwrote, when the tier has ``spill_to``; else None.
        peak: (B, R) the largest read weight of each read head (differentiable): how
            sharply the head found one row; None for tiers without read heads over slots.
    """

    spill: Spill | None = None
    peak: Tensor | None = None


def join_spills(spills: list[Spill] | tuple[Spill, ...]) -> Spill | None:
    """The rows of several spills as one (rows concatenated), or None when there are none."""
    if not spills:
        return None
    if len(spills) == 1:
        return spills[0]
    return Spill(
        torch.cat([s.content for s in spills], dim=1), torch.cat([s.gate for s in spills], dim=1)
    )


CLOCK_RULES = ("last", "mean", "gate")


# Lightning's running stages (``trainer.state.stage``), which tiers may act on.
STAGES = ("train", "sanity_check", "validate", "test", "predict")


def head_slices(read_heads: int, width: int) -> list[slice]:
    """The interface slices of ``read_heads`` queries of ``width`` features laid end to end
    at the start of the interface: the ``query_slices`` of the RAM, ROM and Disk."""
    return [slice(h * width, (h + 1) * width) for h in range(read_heads)]


def write_ticks(clock: Tensor, period: int) -> Tensor:
    """Which batch elements write at this step.

    Args:
        clock: (batch,) integer count of steps already taken by each sequence.
        period: the tier writes on steps 0, period, 2 * period, ...

    Returns:
        (batch,) boolean tensor, True where ``clock % period == 0``.
    """
    return torch.remainder(clock, period) == 0


def blend(tick: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``tick`` is True, ``old`` elsewhere; ``tick`` is (batch,)."""
    mask = tick.reshape(tick.shape + (1,) * (new.dim() - 1))
    return torch.where(mask, new, old)


class Tier(nn.Module, abc.ABC):
    """Abstract base of every memory tier.

    Subclasses define ``interface_size``, ``read_size``, ``initial_state`` and ``forward``.

    Args:
        rewrite_penalty: lambda, the weight of this tier's ``rewrite`` in the loss.
        period: the tier writes only on every ``period``-th step (steps 0, period, ...);
            reads are served every step.
        name: the tier's name in logs and in the controller's ``aux`` record; defaults to
            the class name in lower case.
        clock_rule: with ``period > 1``, what the tier writes at a tick: "last" (the tick's
            own write features), "mean" (their mean over the steps since the last tick) or
            "gate" (a learned gated summary of them); see
            ``tiered.hierarchy.summarise_interface``. The controller keeps the summary;
            tiers that never write take only "last".
    """

    # Tiers whose writes can take another tier's spills (``spill_to`` targets).
    accepts_spills = False
    # Tiers whose reads (``Traffic.peak``) can fill a Cache (``fill_from`` sources).
    fills_caches = False

    def __init__(
        self,
        rewrite_penalty: float = 0.0,
        period: int = 1,
        name: str | None = None,
        clock_rule: str = "last",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.rewrite_penalty = check_non_negative_float(owner, "rewrite_penalty", rewrite_penalty)
        self.period = check_positive_int(owner, "period", period)
        self.name = check_name(owner, owner.lower() if name is None else name)
        self.clock_rule = check_choice(owner, "clock_rule", clock_rule, CLOCK_RULES)
        # The tier to write back into (``spill_to``), set by tiers that overwrite content.
        self.spill_to: str | None = None
        self.spill_projection = False
        # The running stage, one of STAGES, set by the training module before each batch;
        # None outside Lightning, where ``current_stage`` follows ``self.training``.
        self.stage: str | None = None
        # Whether the tier reads values through an LRU value cache (ROM, Disk), so that the
        # training module logs its hit rate, ``cache_hits / value_reads`` of its stats.
        self.has_value_cache = False
        # Whether the tier samples its kNN index's recall (``recall_checked`` and
        # ``recall_hits``): the training module then logs ``recall/<name>``.
        self.samples_recall = False

    @property
    def current_stage(self) -> str:
        """The stage this step runs in: the training module's, else "train" in train mode
        and "validate" in eval mode."""
        if self.stage is not None:
            return self.stage
        return "train" if self.training else "validate"

    @property
    @abc.abstractmethod
    def interface_size(self) -> int:
        """How many controller features the tier consumes per step."""

    @property
    @abc.abstractmethod
    def read_size(self) -> int:
        """How many features the tier returns per step."""

    @abc.abstractmethod
    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Any:
        """The state at the start of a sequence: a NamedTuple of tensors."""

    @abc.abstractmethod
    def forward(self, interface: Tensor, state: Any) -> TierOutput:
        """One step: ``interface`` (batch, interface_size) and the previous state."""

    @property
    def write_slices(self) -> list[slice]:
        """Where in the interface the tier reads the features that only its writes use (a
        slow tier's ``clock_rule`` summarises them); none for tiers that never write."""
        return []

    def step(
        self, interface: Tensor, state: Any, incoming: tuple[Spill, ...] = ()
    ) -> tuple[TierOutput, Traffic]:
        """One step, with the hierarchy's traffic: ``incoming`` spills (or fills) to write
        this step, and the ``Traffic`` (spill, read peaks) it offers the other tiers.

        The default serves tiers that take no spills and offer none: ``forward``. Tiers that
        override it also take ``incoming`` and ``with_traffic`` in ``forward``, which the
        controller calls (so that ``nn.Module`` hooks see every step).
        """
        if incoming:
            raise ValueError(f"{type(self).__name__} '{self.name}' cannot take spills or fills")
        return self(interface, state), Traffic()

    @property
    def query_slices(self) -> list[slice]:
        """Where in the interface the tier reads its content queries (one slice per read
        head), for controllers that can feed their input there directly; none by default."""
        return []

    def check_interface(self, interface: Tensor, clock: Tensor) -> None:
        """Raise a clear error unless ``interface`` is (batch, interface_size) and the
        state's ``clock`` (batch,) has the same batch size."""
        if interface.dim() != 2 or interface.shape[-1] != self.interface_size:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': interface must have shape "
                f"(batch, {self.interface_size}), got {tuple(interface.shape)}"
            )
        if clock.shape != interface.shape[:1]:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': the state is for batch size "
                f"{clock.shape[0] if clock.dim() else clock.shape} but the interface has "
                f"batch size {interface.shape[0]}; make the state with "
                f"initial_state({interface.shape[0]})"
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, rewrite_penalty={self.rewrite_penalty}, period={self.period}"
