"""tiered: neural networks with a memory hierarchy.

A controller composes a Register (its own recurrent state) with memory tiers (a small
Cache, a large RAM, a read-only ROM and a persistent Disk, the last two stored in zarr);
every tier has its own size, access mechanism, clock (``period``) and rewrite penalty.

Subpackages: ``tiered.tiers`` (Register, Cache, RAM, ROM, Disk), ``tiered.controllers``
(LSTMController), ``tiered.tasks`` (the algorithmic tasks) and ``tiered.sweeps`` (ablation
sweeps). ``tiered.TieredModule`` trains a controller with Lightning; ``tiered`` on the
command line is its CLI (``tiered --help`` lists the subcommands).

The names below are imported on first use, so ``import tiered`` (and ``tiered --help``)
does not import torch or Lightning.
"""

from __future__ import annotations

import importlib
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

from tiered import _source_layout

_source_layout.install(_Path(__file__).parent)

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Tier": "tiered.tier",
    "TierOutput": "tiered.tier",
    "TierStats": "tiered.tier",
    "TieredModule": "tiered.module",
    "detach_state": "tiered.state",
    "map_state": "tiered.state",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from tiered.module import TieredModule as TieredModule
    from tiered.state import detach_state as detach_state
    from tiered.state import map_state as map_state
    from tiered.tier import Tier as Tier
    from tiered.tier import TierOutput as TierOutput
    from tiered.tier import TierStats as TierStats


# subpackages reachable as attributes (``tiered.tiers.RAM`` after ``import tiered``)
_SUBPACKAGES = ("tiers", "controllers", "tasks", "sweeps")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"tiered.{name}")
    else:
        raise AttributeError(f"module 'tiered' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})
