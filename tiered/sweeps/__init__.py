"""Ablation sweeps: grids of overrides run locally or on Ray, resumable, with reports."""

from tiered.sweeps.spec import Run, SweepError, SweepSpec, load_sweep

__all__ = ["Run", "SweepError", "SweepSpec", "load_sweep"]
