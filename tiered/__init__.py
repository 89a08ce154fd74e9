"""tiered: neural networks with a memory hierarchy.

A controller composes a Register (its own recurrent state) with memory tiers (a small
Cache, a large RAM, a read-only ROM and a persistent Disk, the last two stored in zarr);
every tier has its own size, access mechanism, clock (``period``) and rewrite penalty.

Subpackages: ``tiered.tiers`` (Register, Cache, RAM, ROM, Disk), ``tiered.controllers``
(LSTMController), ``tiered.tasks`` (the algorithmic tasks) and ``tiered.sweeps`` (ablation
sweeps). ``tiered.TieredModule`` trains a controller with Lightning; ``tiered`` on the
command line is its CLI (``tiered --help`` lists the subcommands).
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
