"""tiered: neural networks with a memory hierarchy.

A controller composes a Register (its own recurrent state) with memory tiers (a small
Cache, a large RAM, and later read-only ROM and persistent Disk tiers); every tier has its
own size, access mechanism, clock (``period``) and rewrite penalty.

Subpackages: ``tiered.tiers`` (Register, Cache, RAM), ``tiered.controllers``
(LSTMController) and ``tiered.tasks`` (the algorithmic tasks). ``tiered.TieredModule``
trains a controller with Lightning; ``tiered`` on the command line is its CLI.
"""

from pathlib import Path as _Path

from tiered import _source_layout
from tiered.state import detach_state, map_state
from tiered.tier import Tier, TierOutput, TierStats

_source_layout.install(_Path(__file__).parent)

from tiered.module import TieredModule  # noqa: E402  (needs the subpackages above)

__version__ = "0.1.0"

__all__ = [
    "Tier",
    "TierOutput",
    "TierStats",
    "TieredModule",
    "__version__",
    "detach_state",
    "map_state",
]
