"""Memory tiers: Register, Cache and RAM (dense; sparse mode and ROM/Disk come later)."""

from tiered.tiers.cache import Cache, CacheState
from tiered.tiers.ram import RAM, RAMState
from tiered.tiers.register import Register, RegisterState

__all__ = ["RAM", "Cache", "CacheState", "RAMState", "Register", "RegisterState"]
