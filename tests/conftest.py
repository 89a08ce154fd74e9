"""Shared fixtures: deterministic seeds and float64 helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def random_simplex(*shape: int, total: float = 0.9, dtype: torch.dtype = torch.float64):
    """Random non-negative weights over the last axis summing to ``total`` (< 1)."""
    weights = torch.rand(*shape, dtype=dtype) + 0.05
    return total * weights / weights.sum(dim=-1, keepdim=True)


@pytest.fixture
def lookup_store_in_cwd(tmp_path, monkeypatch):
    """chdir to tmp_path and put a small store where the shipped YAML expects the lookup
    store (runs/stores/kv_1m), so every shipped config can be instantiated."""
    import numpy as np

    from tiered.storage import KVStore

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    store = KVStore.create(tmp_path / "runs" / "stores" / "kv_1m", 32, 16)
    store.append(rng.standard_normal((64, 32)), np.sign(rng.standard_normal((64, 16))))
    return tmp_path
