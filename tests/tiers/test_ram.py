"""Dense RAM: behaviour (write then read, links, allocation), period, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from tiered.tier import TierStats
from tiered.tiers import RAM, RAMState
from tiered.tiers.ram_dense import parse_ram_interface, ram_interface_size

B, N, W, R, H = 7, 13, 5, 2, 2
BIG = 30.0  # a logit that saturates a sigmoid gate


def build_interface(
    ram: RAM,
    batch: int,
    *,
    read_keys=None,
    read_strength=BIG,
    free=-BIG,
    read_mode="content",
    write_key=None,
    write_strength=0.0,
    erase=BIG,
    write_vector=None,
    allocation=BIG,
    write=BIG,
) -> torch.Tensor:
    """Raw interface logits for a RAM with one write head, the inverse of the parse."""
    assert ram.write_heads == 1
    Wd, Rd = ram.width, ram.read_heads
    zeros = torch.zeros(batch, Wd, dtype=torch.float64)
    modes = {"backward": 0, "content": 1, "forward": 2}
    mode_logits = torch.full((batch, Rd, 3), -BIG, dtype=torch.float64)
    mode_logits[:, :, modes[read_mode]] = BIG
    # oneplus(x) ~ x for large x, so the strength logit is the strength itself.
    parts = [
        (zeros if read_keys is None else read_keys).repeat(1, Rd),
        torch.full((batch, Rd), read_strength, dtype=torch.float64),
        torch.full((batch, Rd), free, dtype=torch.float64),
        mode_logits.reshape(batch, -1),
        zeros if write_key is None else write_key,
        torch.full((batch, 1), write_strength, dtype=torch.float64),
        torch.full((batch, Wd), erase, dtype=torch.float64),
        zeros if write_vector is None else write_vector,
        torch.full((batch, 1), allocation, dtype=torch.float64),
        torch.full((batch, 1), write, dtype=torch.float64),
    ]
    interface = torch.cat(parts, dim=-1)
    assert interface.shape == (batch, ram.interface_size)
    return interface


def random_state(ram: RAM, batch: int) -> RAMState:
    """A valid state with distinct usage (no ties, so allocation is differentiable)."""
    n, hw, rh = ram.slots, ram.write_heads, ram.read_heads
    simplex = lambda *s: 0.9 * torch.rand(*s, dtype=torch.float64).softmax(-1)  # noqa: E731
    link = simplex(batch, hw, n, n) * (1 - torch.eye(n, dtype=torch.float64))
    usage = torch.stack([torch.randperm(n, dtype=torch.float64) for _ in range(batch)])
    return RAMState(
        memory=torch.randn(batch, n, ram.width, dtype=torch.float64),
        read_weights=simplex(batch, rh, n),
        write_weights=simplex(batch, hw, n),
        precedence=simplex(batch, hw, n),
        link=link,
        usage=(usage + 0.5) / (n + 1),
        clock=torch.zeros(batch, dtype=torch.long),
    )


def test_interface_and_read_sizes_follow_the_layout():
    ram = RAM(N, W, read_heads=R, write_heads=H)
    assert (
        ram.interface_size == R * (W + 3 + 2 * H) + H * (3 * W + 3) == ram_interface_size(W, R, H)
    )
    assert ram.read_size == R * W
    parsed = parse_ram_interface(torch.randn(B, ram.interface_size), W, R, H)
    assert parsed.read_modes.shape == (B, R, 1 + 2 * H)
    torch.testing.assert_close(parsed.read_modes.sum(-1), torch.ones(B, R))
    assert (parsed.read_strengths >= 1).all() and (parsed.write_strengths >= 1).all()


def test_initial_state_is_zero_with_documented_shapes():
    state = RAM(N, W, R, H).initial_state(B, dtype=torch.float64)
    assert state.memory.shape == (B, N, W) and state.link.shape == (B, H, N, N)
    assert state.read_weights.shape == (B, R, N) and state.write_weights.shape == (B, H, N)
    assert state.usage.shape == (B, N) and state.clock.dtype == torch.long
    assert all(t.abs().sum() == 0 for t in state)


def test_written_vector_is_read_back_by_content():
    ram = RAM(N, W, read_heads=1, write_heads=1).double()
    v = torch.randn(B, W, dtype=torch.float64)
    state = ram.initial_state(B, dtype=torch.float64)
    read, state, stats = ram(build_interface(ram, B, write_vector=v, read_keys=v), state)
    torch.testing.assert_close(read, v, atol=1e-4, rtol=1e-4)
    assert isinstance(stats, TierStats)
    # the write went to one slot (allocation into empty memory) and nothing was erased
    assert (state.write_weights.amax(-1) > 0.99).all()
    torch.testing.assert_close(stats.rewrite, torch.zeros(B, dtype=torch.float64))


def test_allocation_fills_free_slots_and_free_gates_release_them():
    ram = RAM(4, W, read_heads=1, write_heads=1).double()
    state = ram.initial_state(1, dtype=torch.float64)
    written = []
    for _ in range(3):
        v = torch.randn(1, W, dtype=torch.float64)
        _, state, _ = ram(build_interface(ram, 1, write_vector=v, read_keys=v), state)
        written.append(int(state.write_weights[0, 0].argmax()))
    assert len(set(written)) == 3  # three different slots
    # read slot `written[0]` with the free gate open: its usage drops at the next step
    v0 = state.memory[:, written[0]]
    _, state, _ = ram(build_interface(ram, 1, read_keys=v0, write=-BIG), state)
    _, state, _ = ram(build_interface(ram, 1, free=BIG, write=-BIG), state)
    assert state.usage[0, written[0]] < 0.01
    assert (state.usage[0, written[1:]] > 0.99).all()


def test_overwriting_a_slot_counts_erased_content_as_rewrite():
    ram = RAM(3, W, read_heads=1, write_heads=1).double()
    state = ram.initial_state(1, dtype=torch.float64)
    v = torch.ones(1, W, dtype=torch.float64)
    _, state, stats = ram(build_interface(ram, 1, write_vector=v), state)
    assert stats.rewrite.item() == pytest.approx(0.0, abs=1e-9)
    # write by content onto the same slot with full erase: W units of content overwritten
    _, state, stats = ram(
        build_interface(ram, 1, write_key=v, write_strength=BIG, allocation=-BIG, write_vector=v),
        state,
    )
    assert stats.rewrite.item() == pytest.approx(W, rel=1e-3)


def test_forward_and_backward_reads_follow_the_order_of_writes():
    ram = RAM(6, W, read_heads=1, write_heads=1).double()
    state = ram.initial_state(1, dtype=torch.float64)
    vectors = torch.eye(W, dtype=torch.float64)[:3].unsqueeze(1)  # three orthogonal (1, W)
    for v in vectors:
        _, state, _ = ram(build_interface(ram, 1, write_vector=v), state)
    no_write = {"write": -BIG}
    # locate the middle vector by content, then step forward and backward along the links
    _, at_middle, _ = ram(build_interface(ram, 1, read_keys=vectors[1], **no_write), state)
    forward, _, _ = ram(build_interface(ram, 1, read_mode="forward", **no_write), at_middle)
    backward, _, _ = ram(build_interface(ram, 1, read_mode="backward", **no_write), at_middle)
    torch.testing.assert_close(forward, vectors[2], atol=1e-4, rtol=0)
    torch.testing.assert_close(backward, vectors[0], atol=1e-4, rtol=0)


def test_period_three_writes_on_steps_zero_three_six_only():
    ram = RAM(N, W, read_heads=R, write_heads=H, period=3).double()
    state = ram.initial_state(B, dtype=torch.float64)
    writes, changed = [], []
    for _ in range(8):
        previous = state
        _, state, stats = ram(torch.randn(B, ram.interface_size, dtype=torch.float64), state)
        writes.append(stats.wrote[0].item())
        changed.append(not torch.equal(state.memory, previous.memory))
        torch.testing.assert_close(stats.write_mass, state.write_weights.sum(dim=(1, 2)))
        if not changed[-1]:  # off ticks: links and precedence carried, nothing written
            for field in ("link", "precedence"):
                assert torch.equal(getattr(state, field), getattr(previous, field))
            assert state.write_weights.abs().max() == 0
            assert stats.rewrite.abs().max() == 0
    assert writes == [1, 0, 0, 1, 0, 0, 1, 0]
    assert changed == [True, False, False, True, False, False, True, False]


def test_free_gates_release_slots_off_ticks_and_each_write_is_counted_once():
    ram = RAM(4, W, read_heads=1, write_heads=1, period=3).double()
    state = ram.initial_state(1, dtype=torch.float64)
    v = torch.randn(1, W, dtype=torch.float64)
    _, state, _ = ram(build_interface(ram, 1, write_vector=v, read_keys=v), state)  # tick
    slot = int(state.write_weights[0, 0].argmax())
    _, state, _ = ram(build_interface(ram, 1, read_keys=v), state)  # off tick: usage counts it
    assert state.usage[0, slot] > 0.99
    _, state, _ = ram(build_interface(ram, 1, free=BIG), state)  # off tick: frees what it read
    assert state.usage[0, slot] < 0.01
    assert torch.equal(state.write_weights, torch.zeros_like(state.write_weights))


def test_a_one_hot_write_and_read_give_write_mass_one_entropy_zero_and_one_slot_used():
    ram = RAM(N, W, read_heads=R, write_heads=1).double()
    v = torch.randn(B, W, dtype=torch.float64)
    state = ram.initial_state(B, dtype=torch.float64)
    _, state, stats = ram(build_interface(ram, B, write_vector=v, read_keys=v), state)
    ones = torch.ones(B, dtype=torch.float64)
    torch.testing.assert_close(stats.write_mass, ones, atol=1e-9, rtol=0)
    assert torch.equal(stats.wrote, ones)
    torch.testing.assert_close(stats.read_entropy, 0 * ones, atol=1e-9, rtol=0)
    # the write counts at once, not one step later as the DNC's usage does
    assert state.usage.abs().max() == 0
    torch.testing.assert_close(stats.slots_used, ones, atol=1e-9, rtol=0)


def test_a_read_of_an_empty_memory_is_uniform_with_entropy_log_n():
    ram = RAM(N, W, read_heads=R, write_heads=1).double()
    state = ram.initial_state(B, dtype=torch.float64)
    keys = torch.randn(B, W, dtype=torch.float64)
    _, _, stats = ram(build_interface(ram, B, read_keys=keys, write=-BIG), state)
    expected = torch.full((B,), math.log(N), dtype=torch.float64)
    torch.testing.assert_close(stats.read_entropy, expected, atol=1e-12, rtol=0)
    assert stats.wrote.abs().max() == 0 and (stats.write_mass < 1e-12).all()


def test_slots_used_drops_when_the_free_gates_release_a_slot():
    ram = RAM(4, W, read_heads=1, write_heads=1, period=3).double()
    state = ram.initial_state(1, dtype=torch.float64)
    v = torch.randn(1, W, dtype=torch.float64)
    used, masses = [], []
    for interface in (
        build_interface(ram, 1, write_vector=v, read_keys=v),  # tick: writes one slot
        build_interface(ram, 1, read_keys=v),  # off tick: reads it
        build_interface(ram, 1, free=BIG),  # off tick: frees what it read
    ):
        _, state, stats = ram(interface, state)
        used.append(stats.slots_used.item())
        masses.append(stats.write_mass.item())
    assert used[0] == pytest.approx(1, abs=1e-9) and used[1] == pytest.approx(1, abs=1e-9)
    assert used[2] < 0.01
    assert masses[1:] == [0.0, 0.0]


def test_write_mass_sums_every_write_head():
    ram = RAM(N, W, read_heads=R, write_heads=H).double()
    state = ram.initial_state(B, dtype=torch.float64)
    _, state, stats = ram(torch.randn(B, ram.interface_size, dtype=torch.float64), state)
    torch.testing.assert_close(stats.write_mass, state.write_weights.sum(dim=(1, 2)))
    assert (stats.write_mass <= H).all()
    # the read entropy is that of each head's weights normalised to sum 1 (float64 reference)
    p = state.read_weights / state.read_weights.sum(-1, keepdim=True)  # (B, R, N)
    torch.testing.assert_close(stats.read_entropy, -(p * p.log()).sum(-1).mean(-1))


def test_zero_interface_and_zero_memory_give_finite_reads_gradients_and_stats():
    ram = RAM(N, W, R, H).double()
    interface = torch.zeros(B, ram.interface_size, dtype=torch.float64, requires_grad=True)
    state = ram.initial_state(B, dtype=torch.float64)
    total = 0
    for _ in range(3):
        read, state, stats = ram(interface, state)
        total = total + read.sum() + stats.rewrite.sum()
        assert all(torch.isfinite(field).all() for field in stats)
    total.backward()
    assert torch.isfinite(read).all() and torch.isfinite(interface.grad).all()


def test_gradcheck_one_step_from_a_random_state():
    ram = RAM(N, W, R, H).double()
    state = random_state(ram, B)
    interface = torch.randn(B, ram.interface_size, dtype=torch.float64, requires_grad=True)
    memory = state.memory.clone().requires_grad_()

    def step(interface, memory):
        read, next_state, stats = ram(interface, state._replace(memory=memory))
        return read, next_state.memory, next_state.usage, stats.rewrite

    assert gradcheck(step, (interface, memory))


def test_gradcheck_three_steps_with_writes():
    ram = RAM(5, 3, read_heads=2, write_heads=2).double()
    state = random_state(ram, 3)
    interfaces = torch.randn(3, 3, ram.interface_size, dtype=torch.float64, requires_grad=True)

    def run(interfaces):
        s, reads = state, []
        for t in range(interfaces.shape[1]):
            read, s, _ = ram(interfaces[:, t], s)
            reads.append(read)
        return torch.stack(reads, 1), s.memory

    assert gradcheck(run, (interfaces,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slots": 0, "width": 4}, "RAM: slots must be a positive integer (>= 1), got 0"),
        ({"slots": 4, "width": -2}, "RAM: width must be a positive integer (>= 1), got -2"),
        ({"slots": 4, "width": 4, "read_heads": 0}, "read_heads must be a positive integer"),
        ({"slots": 4, "width": 4, "period": 0}, "RAM: period must be a positive integer"),
        ({"slots": 4, "width": 4, "rewrite_penalty": -1.0}, "rewrite_penalty must be a finite"),
        ({"slots": 4, "width": 4, "name": "a.b"}, "got 'a.b'"),
    ],
)
def test_bad_arguments_name_the_field_and_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RAM(**kwargs)


def test_non_integer_slots_is_a_type_error():
    with pytest.raises(TypeError, match="RAM: slots must be a positive integer, got 2.5"):
        RAM(2.5, 4)  # type: ignore[arg-type]


def test_a_state_for_another_batch_size_is_rejected():
    ram = RAM(N, W, R, H)
    with pytest.raises(
        ValueError, match=r"state is for batch size 1 but the interface has batch size 4"
    ):
        ram(torch.zeros(4, ram.interface_size), ram.initial_state(1))


def test_interface_of_the_wrong_width_is_rejected():
    ram = RAM(N, W, R, H)
    with pytest.raises(
        ValueError, match=rf"interface must have shape \(batch, {ram.interface_size}\)"
    ):
        ram(torch.zeros(B, ram.interface_size + 1), ram.initial_state(B))
