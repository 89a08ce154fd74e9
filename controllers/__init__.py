"""Controllers that compose a Register and memory tiers."""

from tiered.controllers.act import ACTController
from tiered.controllers.base import Controller
from tiered.controllers.lstm import ControllerState, LSTMController
from tiered.controllers.ponder_net import PonderNetController, PonderSteps
from tiered.controllers.sequence import ControllerOutput, TierAux
from tiered.controllers.two_clock import TwoClockController, TwoClockState

__all__ = [
    "ACTController",
    "Controller",
    "ControllerOutput",
    "ControllerState",
    "LSTMController",
    "PonderNetController",
    "PonderSteps",
    "TierAux",
    "TwoClockController",
    "TwoClockState",
]
