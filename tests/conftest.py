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
