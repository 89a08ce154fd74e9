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

from tiered.validation import check_name, check_non_negative_float, check_positive_int


class TierStats(NamedTuple):
    """Per-step statistics of one tier, each of shape (batch,).

    Attributes:
        rewrite: how much stored content this step overwrote; differentiable, so that
            ``rewrite_penalty * rewrite`` can be added to the loss.
        reads: read heads served this step (detached).
        writes: write heads that wrote this step, 0 on steps that are not ticks (detached).
        slots_in_use: how much of the tier is in use (detached). RAM: the sum of DNC
            usage, the expected number of allocated slots (a write enters it one step
            later). Cache: the sum of its decaying recency, the number of recently accessed
            slots. Register: its number of units.
    """

    rewrite: Tensor
    reads: Tensor
    writes: Tensor
    slots_in_use: Tensor


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
    """

    def __init__(
        self, rewrite_penalty: float = 0.0, period: int = 1, name: str | None = None
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.rewrite_penalty = check_non_negative_float(owner, "rewrite_penalty", rewrite_penalty)
        self.period = check_positive_int(owner, "period", period)
        self.name = check_name(owner, owner.lower() if name is None else name)
        # The running stage, one of STAGES, set by the training module before each batch;
        # None outside Lightning, where ``current_stage`` follows ``self.training``.
        self.stage: str | None = None

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
