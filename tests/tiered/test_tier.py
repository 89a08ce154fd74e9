"""The tier contract: ticks, blending, names, abstractness, validation messages."""

from __future__ import annotations

import math

import pytest
import torch

from tiered import Tier, detach_state, map_state
from tiered.tier import ACCESS_THRESHOLD, TierStats, blend, read_entropy, tier_stats, write_ticks
from tiered.tiers import RAM, Cache, RAMState, Register
from tiered.validation import check_non_negative_float, check_positive_int


def test_write_ticks_fire_every_period_steps():
    clock = torch.arange(10)
    assert write_ticks(clock, 3).nonzero().flatten().tolist() == [0, 3, 6, 9]
    assert write_ticks(clock, 1).all()


def test_blend_picks_new_where_ticking():
    tick = torch.tensor([True, False])
    new, old = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    out = blend(tick, new, old)
    assert out[0].eq(1).all() and out[1].eq(0).all()


def test_the_tier_base_is_abstract():
    with pytest.raises(TypeError):
        Tier()  # type: ignore[abstract]


def test_names_default_to_the_class_name_in_lower_case():
    assert RAM(4, 4).name == "ram" and Cache(4, 4).name == "cache"
    assert Register(4).name == "register" and RAM(4, 4, name="big-ram").name == "big-ram"


@pytest.mark.parametrize("tier", [RAM(5, 3, 2, 1), Cache(5, 3, 2), Register(6, input_size=4)])
def test_every_tier_honours_the_contract(tier):
    state = tier.initial_state(3, device="cpu", dtype=torch.float64)
    assert hasattr(type(state), "_fields")  # a NamedTuple
    assert state.clock.dtype == torch.long and state.clock.shape == (3,)
    tier = tier.double()
    read, next_state, stats = tier(torch.randn(3, tier.interface_size, dtype=torch.float64), state)
    assert read.shape == (3, tier.read_size)
    assert type(next_state) is type(state)
    assert torch.equal(next_state.clock, state.clock + 1)
    assert all(field.shape == (3,) for field in stats)
    assert all(field.dtype == torch.float64 and torch.isfinite(field).all() for field in stats)
    assert not any(field.requires_grad for field in stats[1:])  # only rewrite has a gradient
    assert (stats.write_mass >= 0).all() and set(stats.wrote.tolist()) <= {0.0, 1.0}
    assert (stats.read_entropy >= 0).all() and (stats.slots_used >= 0).all()
    assert (stats.cache_hits <= stats.value_reads).all()


def test_read_entropy_is_zero_one_hot_log_x_uniform_and_zero_for_no_read():
    B, R, X = 7, 3, 13
    one_hot = torch.zeros(B, R, X, dtype=torch.float64)
    one_hot[:, :, 5] = 1.0
    uniform = torch.full((B, R, X), 1.0 / X, dtype=torch.float64)
    zero = torch.zeros(B, R, X, dtype=torch.float64)
    assert torch.equal(read_entropy(one_hot), torch.zeros(B, dtype=torch.float64))
    log_x = torch.full((B,), math.log(X), dtype=torch.float64)
    torch.testing.assert_close(read_entropy(uniform), log_x)
    assert torch.equal(read_entropy(zero), torch.zeros(B, dtype=torch.float64))
    assert not str(read_entropy(one_hot)[0].item()).startswith("-")  # no -0.0 in logs


def test_read_entropy_normalises_weights_and_averages_heads_against_a_float64_reference():
    B, R, X = 5, 3, 11
    weights = torch.rand(B, R, X, dtype=torch.float64) * torch.rand(B, R, 1)  # sums below 1
    weights[0, 1] = 0.0  # a head that read nothing counts 0
    expected = torch.zeros(B, R, dtype=torch.float64)
    for b in range(B):
        for r in range(R):
            total = float(weights[b, r].sum())
            for w in weights[b, r].tolist():
                if w > 0:
                    expected[b, r] -= (w / total) * math.log(w / total)
    torch.testing.assert_close(read_entropy(weights), expected.mean(-1))
    weights.requires_grad_()
    assert not read_entropy(weights).requires_grad


def test_tier_stats_detaches_and_counts_a_write_above_the_access_threshold():
    rewrite = torch.rand(4, dtype=torch.float64, requires_grad=True)
    mass = torch.tensor([0.0, 1e-9, ACCESS_THRESHOLD * 2, 1.0], requires_grad=True)
    stats = tier_stats(
        rewrite, write_mass=mass, read_weights=torch.ones(4, 2, 3), slots_used=mass * 3
    )
    assert isinstance(stats, TierStats) and stats.rewrite is rewrite
    assert stats.wrote.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert all(f.dtype == torch.float64 and not f.requires_grad for f in stats[1:])
    assert stats.value_reads.abs().max() == 0 and stats.cache_hits.abs().max() == 0
    log_3 = torch.full((4,), math.log(3), dtype=torch.float64)
    torch.testing.assert_close(stats.read_entropy, log_3)


def test_map_and_detach_state_keep_nested_types():
    state = RAM(4, 2, 1, 1).initial_state(2)
    doubled = map_state(lambda t: t + 1, {"a": (state, [state.memory])})
    assert isinstance(doubled["a"][0], RAMState)
    assert torch.equal(doubled["a"][1][0], state.memory + 1)
    assert detach_state(None) is None
    with pytest.raises(TypeError, match="cannot map over a str"):
        map_state(lambda t: t, ("oops",))


def test_checks_name_the_owner_the_field_and_the_value():
    with pytest.raises(TypeError, match="X: n must be a positive integer, got True of type bool"):
        check_positive_int("X", "n", True)
    with pytest.raises(ValueError, match="X: p must be a finite number >= 0, got nan"):
        check_non_negative_float("X", "p", float("nan"))


def test_tune_malloc_is_accepted_on_linux_glibc():
    import sys

    from tiered.malloc import tune_malloc

    result = tune_malloc()
    assert isinstance(result, bool)
    if sys.platform.startswith("linux"):
        assert result
