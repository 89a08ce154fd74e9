"""The controller contract shared by every controller."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor, nn


class Controller(nn.Module, abc.ABC):
    """Abstract base of controllers: a recurrent core that composes memory tiers.

    A controller maps ``x`` (batch, time, input_size) and an optional state to a
    ``ControllerOutput(output, state, aux)``; ``aux`` holds one ``TierAux`` per tier name.
    ``input_size`` and ``output_size`` are plain attributes so that training code and the
    CLI can check and link them.
    """

    input_size: int
    output_size: int

    @property
    @abc.abstractmethod
    def tier_names(self) -> list[str]:
        """Names of all tiers, the register included, in order."""

    @abc.abstractmethod
    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Any:
        """The state at the start of a batch of sequences."""

    @abc.abstractmethod
    def forward(self, x: Tensor, state: Any = None) -> Any:
        """Run over a sequence; returns a ``ControllerOutput``."""
