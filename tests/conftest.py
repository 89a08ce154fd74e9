"""Shared fixtures: deterministic seeds and float64 helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    """The dense RAM's C kernels are built from this checkout's source into a fresh folder,
    once per test session: no test uses a library left in ~/.cache by an earlier version."""
    from tiered.tiers import link_kernels

    folder = tmp_path_factory.mktemp("kernel-cache")
    original = link_kernels._cache_dir
    link_kernels._cache_dir = lambda: folder
    link_kernels._library.cache_clear()
    yield
    link_kernels._cache_dir = original
    link_kernels._library.cache_clear()


@pytest.fixture
def benchmark_script(monkeypatch):
    """A loader of the scripts in experiments/benchmarks by name, with their folder on
    ``sys.path`` as when they run (they import ``machine.py`` beside them)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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
