"""Controllers that compose a Register and memory tiers."""

from tiered.controllers.lstm import ControllerOutput, ControllerState, LSTMController, TierAux

__all__ = ["ControllerOutput", "ControllerState", "LSTMController", "TierAux"]
