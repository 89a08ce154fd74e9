"""Memory tiers: Register, Cache, RAM (dense or sparse) and ROM (read-only, zarr)."""

from tiered.tiers.cache import Cache, CacheState
from tiered.tiers.ram import RAM, RAMState
from tiered.tiers.ram_sparse import SparseRAMState
from tiered.tiers.register import Register, RegisterState
from tiered.tiers.rom import ROM, ROMState

__all__ = [
    "RAM",
    "ROM",
    "Cache",
    "CacheState",
    "RAMState",
    "ROMState",
    "Register",
    "RegisterState",
    "SparseRAMState",
]
