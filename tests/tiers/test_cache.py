"""Cache: content reads, least-recently-used overwrites, period, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from tiered.tiers import Cache, CacheState
from tiered.tiers.cache import cache_interface_size, update_recency

B, N, W, R = 7, 13, 5, 3
BIG = 30.0


def build_interface(
    cache: Cache,
    batch: int,
    *,
    read_key=None,
    write_key=None,
    add=None,
    write_strength=0.0,
    allocation=BIG,
    write=BIG,
    erase=BIG,
) -> torch.Tensor:
    """Raw interface logits, the inverse of ``parse_cache_interface``."""
    Wd, Rd = cache.width, cache.read_heads
    zeros = torch.zeros(batch, Wd, dtype=torch.float64)
    full = lambda n, v: torch.full((batch, n), v, dtype=torch.float64)  # noqa: E731
    parts = [
        (zeros if read_key is None else read_key).repeat(1, Rd),
        full(Rd, BIG),
        zeros if write_key is None else write_key,
        full(1, write_strength),
        full(Wd, erase),
        zeros if add is None else add,
        full(1, allocation),
        full(1, write),
    ]
    return torch.cat(parts, dim=-1)


def test_sizes_follow_the_layout():
    cache = Cache(N, W, read_heads=R)
    assert cache.interface_size == R * (W + 1) + 3 * W + 3 == cache_interface_size(W, R)
    assert cache.read_size == R * W


def test_written_vector_is_read_back_by_content():
    cache = Cache(N, W, read_heads=1).double()
    v = torch.randn(B, W, dtype=torch.float64)
    state = cache.initial_state(B, dtype=torch.float64)
    read, state, stats = cache(build_interface(cache, B, read_key=v, add=v), state)
    torch.testing.assert_close(read, v, atol=1e-4, rtol=1e-4)
    assert stats.wrote.tolist() == [1.0] * B


def test_allocation_overwrites_the_least_recently_used_slot():
    cache = Cache(3, W, read_heads=1, usage_decay=0.5).double()
    state = cache.initial_state(1, dtype=torch.float64)
    vectors = torch.eye(W, dtype=torch.float64)[:4].unsqueeze(1)  # (4, 1, W), orthogonal
    slots = []
    for v in vectors[:3]:  # fill the three slots; read keys are zero, so reads are uniform
        _, state, _ = cache(build_interface(cache, 1, add=v), state)
        slots.append(int(state.memory[0].matmul(v[0]).argmax()))
    assert sorted(slots) == [0, 1, 2]
    # the 4th write replaces the 1st vector, the least recently touched
    _, state, stats = cache(build_interface(cache, 1, add=vectors[3]), state)
    stored = state.memory[0]  # (3, W)
    assert stored[slots[0]].matmul(vectors[3][0]) > 0.99
    assert stored[slots[0]].matmul(vectors[0][0]) < 0.01
    assert stats.rewrite.item() > 0.9  # the old vector was erased


def test_recency_is_in_unit_interval_and_decays_without_access():
    usage = torch.rand(B, N, dtype=torch.float64)
    w = torch.rand(B, 1, N, dtype=torch.float64).softmax(-1)
    r = torch.rand(B, R, N, dtype=torch.float64).softmax(-1)
    updated = update_recency(usage, w, r, 0.9)
    assert ((updated >= 0) & (updated <= 1)).all()
    idle = update_recency(usage, torch.zeros_like(w), torch.zeros_like(r), 0.9)
    torch.testing.assert_close(idle, 0.9 * usage)


def test_period_two_writes_on_even_steps_only():
    cache = Cache(N, W, read_heads=R, period=2).double()
    state = cache.initial_state(B, dtype=torch.float64)
    writes, changed = [], []
    for _ in range(5):
        previous = state.memory
        _, state, stats = cache(torch.randn(B, cache.interface_size, dtype=torch.float64), state)
        writes.append(stats.wrote[0].item())
        changed.append(not torch.equal(state.memory, previous))
    assert writes == [1, 0, 1, 0, 1]
    assert changed == [True, False, True, False, True]


def test_zero_interface_gives_finite_reads_gradients_and_stats():
    cache = Cache(N, W, R).double()
    interface = torch.zeros(B, cache.interface_size, dtype=torch.float64, requires_grad=True)
    state = cache.initial_state(B, dtype=torch.float64)
    total = 0
    for _ in range(3):
        read, state, stats = cache(interface, state)
        total = total + read.sum() + stats.rewrite.sum()
        assert all(torch.isfinite(field).all() for field in stats)
    total.backward()
    assert torch.isfinite(interface.grad).all()


def test_a_one_hot_write_and_read_give_write_mass_one_and_read_entropy_zero():
    cache = Cache(N, W, read_heads=R).double()
    v = torch.randn(B, W, dtype=torch.float64)
    state = cache.initial_state(B, dtype=torch.float64)
    # the write is one-hot on the least used slot; every head reads v back, one-hot
    _, state, stats = cache(build_interface(cache, B, read_key=v, add=v), state)
    ones = torch.ones(B, dtype=torch.float64)
    torch.testing.assert_close(stats.write_mass, ones, atol=1e-9, rtol=0)
    assert torch.equal(stats.wrote, ones)
    torch.testing.assert_close(stats.read_entropy, 0 * ones, atol=1e-9, rtol=0)
    torch.testing.assert_close(stats.slots_used, ones, atol=1e-9, rtol=0)
    assert stats.value_reads.abs().max() == 0 and stats.cache_hits.abs().max() == 0
    assert not any(field.requires_grad for field in stats[1:])


def test_a_zero_key_reads_uniformly_with_entropy_log_n():
    cache = Cache(N, W, read_heads=R).double()
    state = cache.initial_state(B, dtype=torch.float64)
    # a zero read key is equally similar (0) to every slot: uniform over N
    _, _, stats = cache(
        build_interface(cache, B, add=torch.randn(B, W, dtype=torch.float64)), state
    )
    expected = torch.full((B,), math.log(N), dtype=torch.float64)
    torch.testing.assert_close(stats.read_entropy, expected, atol=1e-12, rtol=0)


def test_a_write_gated_shut_is_not_counted_as_a_write():
    cache = Cache(N, W, read_heads=R).double()
    state = cache.initial_state(B, dtype=torch.float64)
    _, state, stats = cache(
        build_interface(cache, B, add=torch.randn(B, W, dtype=torch.float64), write=-BIG), state
    )
    assert (stats.write_mass > 0).all() and (stats.write_mass < 1e-12).all()
    assert stats.wrote.abs().max() == 0 and (stats.slots_used < 1e-12).all()


def test_slots_used_counts_each_slot_written_once():
    cache = Cache(4, W, read_heads=1, usage_decay=0.5).double()
    state = cache.initial_state(1, dtype=torch.float64)
    vectors = torch.eye(W, dtype=torch.float64)[:4].unsqueeze(1)  # (4, 1, W)
    used = []
    for v in [*vectors[:3], vectors[0], vectors[0]]:  # 3 slots, then the LRU slot again
        _, state, stats = cache(build_interface(cache, 1, add=v), state)
        used.append(stats.slots_used.item())
    torch.testing.assert_close(torch.tensor(used), torch.tensor([1.0, 2, 3, 4, 4]),
                               atol=1e-9, rtol=0)  # fmt: skip


def test_off_tick_steps_have_zero_write_mass_and_did_not_write():
    cache = Cache(N, W, read_heads=R, period=2).double()
    state = cache.initial_state(B, dtype=torch.float64)
    masses, wrote = [], []
    for _ in range(4):
        _, state, stats = cache(torch.randn(B, cache.interface_size, dtype=torch.float64), state)
        masses.append(stats.write_mass)
        wrote.append(stats.wrote)
    assert (masses[0] > 0).all() and (masses[2] > 0).all()
    assert masses[1].abs().max() == 0 and masses[3].abs().max() == 0
    assert wrote[1].abs().max() == 0 and wrote[3].abs().max() == 0
    # a write weight sums to the write gate, at most 1
    assert (masses[0] <= 1).all()


def test_gradcheck_two_steps_from_a_random_state():
    cache = Cache(N, W, read_heads=2).double()
    usage = torch.stack([torch.randperm(N, dtype=torch.float64) for _ in range(B)]) / N
    state = CacheState(
        memory=torch.randn(B, N, W, dtype=torch.float64),
        usage=usage,
        written=torch.ones(B, N, dtype=torch.float64),
        read_weights=torch.zeros(B, 2, N, dtype=torch.float64),
        clock=torch.zeros(B, dtype=torch.long),
    )
    interfaces = torch.randn(B, 2, cache.interface_size, dtype=torch.float64, requires_grad=True)

    def run(interfaces):
        s, reads, rewrites = state, [], []
        for t in range(2):
            read, s, stats = cache(interfaces[:, t], s)
            reads.append(read)
            rewrites.append(stats.rewrite)
        return torch.stack(reads, 1), torch.stack(rewrites, 1), s.memory

    assert gradcheck(run, (interfaces,))


def test_bad_arguments_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="Cache: slots must be a positive integer"):
        Cache(0, 4)
    with pytest.raises(ValueError, match=r"Cache: usage_decay must lie in \[0, 1\).*got 1.5"):
        Cache(4, 4, usage_decay=1.5)
    with pytest.raises(ValueError, match=r"usage_decay must lie in \[0, 1\).*got 1.0"):
        Cache(4, 4, usage_decay=1.0)
    cache = Cache(4, 4)
    with pytest.raises(ValueError, match="Cache 'cache': interface must have shape"):
        cache(torch.zeros(2, 3), cache.initial_state(2))


def test_least_used_weights_are_one_hot_on_the_argmin():
    from tiered.tiers.cache import least_used_weights

    usage = torch.rand(B, N, dtype=torch.float64)
    weights = least_used_weights(usage)
    assert torch.equal(weights.sum(-1), torch.ones(B, dtype=torch.float64))
    assert torch.equal(weights.argmax(-1), usage.argmin(-1))
