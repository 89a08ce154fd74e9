"""tiered: neural networks with a memory hierarchy.

A controller composes a Register (its own recurrent state) with memory tiers (a small
Cache, a large RAM, and later read-only ROM and persistent Disk tiers); every tier has its
own size, access mechanism, clock (``period``) and rewrite penalty.

Subpackages: ``tiered.tiers`` (Register, Cache, RAM) and ``tiered.controllers``
(LSTMController).
"""

from pathlib import Path as _Path

from tiered import _source_layout
from tiered.state import detach_state, map_state
from tiered.tier import Tier, TierOutput, TierStats

_source_layout.install(_Path(__file__).parent)

__version__ = "0.1.0"

__all__ = ["Tier", "TierOutput", "TierStats", "__version__", "detach_state", "map_state"]
