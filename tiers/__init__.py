"""Memory tiers: Register, Cache, RAM (dense or sparse), ROM (read-only) and Disk (zarr)."""

from tiered.tiers.cache import Cache, CacheState
from tiered.tiers.disk import Disk, DiskState
from tiered.tiers.ram import RAM, RAMState
from tiered.tiers.ram_sparse import SparseRAMState
from tiered.tiers.register import Register, RegisterState
from tiered.tiers.rom import ROM, ROMState

__all__ = [
    "RAM",
    "ROM",
    "Cache",
    "CacheState",
    "Disk",
    "DiskState",
    "RAMState",
    "ROMState",
    "Register",
    "RegisterState",
    "SparseRAMState",
]
