"""The hierarchy: spill links and their checks, write-back into dense and sparse RAM and into
a Disk, fill on read, clock rules, and the gradients through all of them."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from tiered.controllers import LSTMController
from tiered.hierarchy import plan_hierarchy, spill_of, summarise_interface
from tiered.tier import Spill
from tiered.tiers import RAM, ROM, Cache, Disk, Register
from tiered.tiers.addressing import write_rows_to_free_slots

BIG = 30.0
D = torch.float64


def cache_interface(cache: Cache, batch: int, *, add, read_key=None, write=BIG) -> torch.Tensor:
    """Raw Cache logits: allocate (the least used slot), erase all, add ``add``."""
    W, R = cache.width, cache.read_heads
    zeros = torch.zeros(batch, W, dtype=D)
    full = lambda n, v: torch.full((batch, n), v, dtype=D)  # noqa: E731
    key = zeros if read_key is None else read_key
    return torch.cat(
        [key.repeat(1, R), full(R, BIG), zeros, full(1, 0.0), full(W, BIG), add,
         full(1, BIG), full(1, write)], dim=-1,
    )  # fmt: skip


def controller(tiers, hidden=5, inputs=3, outputs=2):
    return LSTMController(inputs, outputs, Register(hidden), tiers).double()


# ---------------------------------------------------------------- links checked at build
@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        (lambda: [Cache(3, 4, spill_to="nowhere"), RAM(5, 4)], "names no tier"),
        (lambda: [RAM(5, 4, spill_to="ram")], "the tier itself"),
        (
            lambda: [RAM(5, 4, name="a", spill_to="b"), RAM(5, 4, name="b", spill_to="a")],
            "cycle: a -> b -> a",
        ),
        (lambda: [Cache(3, 4, spill_to="c2"), Cache(3, 4, name="c2")], "cannot take spills"),
        (lambda: [Cache(3, 4, spill_to="ram"), RAM(5, 6)], "width 4 into 'ram'.*6 wide"),
        (lambda: [Cache(3, 4, fill_from=["ram"])], "not another tier"),
        (lambda: [Cache(3, 4, fill_from=["c2"]), Cache(3, 4, name="c2")], "cannot fill"),
        (lambda: [Cache(3, 4, fill_from=["ram"]), RAM(5, 6)], "width 6 per head"),
        (lambda: [Cache(3, 4, fill_from=["ram", "ram"]), RAM(5, 4)], "twice"),
        (lambda: [Cache(3, 4, fill_from=["ram"]), RAM(5, 4, read_heads=4)], "up to 4 rows"),
    ],
)
def test_invalid_links_fail_at_construction_naming_the_tiers(tiers, message):
    with pytest.raises(ValueError, match=message):
        controller(tiers())


def test_a_rom_cannot_take_spills_and_a_disk_needs_equal_key_and_value_widths(tmp_path):
    import numpy as np

    from tiered.storage import KVStore

    KVStore.create(str(tmp_path / "rom"), 4, 4).append(
        np.ones((3, 4), np.float32), np.ones((3, 4), np.float32)
    )
    with pytest.raises(ValueError, match="'rom' is a ROM, which cannot take spills"):
        controller([Cache(3, 4, spill_to="rom"), ROM(str(tmp_path / "rom"), k=2)])
    disk = Disk(str(tmp_path / "disk"), key_width=4, value_width=5, period=2)
    with pytest.raises(ValueError, match=r"key_width \(4\) and value_width \(5\) differ"):
        controller([Cache(3, 4, spill_to="disk"), disk])


def test_a_clock_rule_needs_a_tier_that_writes_and_a_known_rule(tmp_path):
    with pytest.raises(ValueError, match="clock_rule must be one of 'last', 'mean', 'gate'"):
        RAM(5, 4, period=2, clock_rule="sum")
    import numpy as np

    from tiered.storage import KVStore

    KVStore.create(str(tmp_path / "rom"), 4, 4).append(
        np.ones((3, 4), np.float32), np.ones((3, 4), np.float32)
    )
    rom = ROM(str(tmp_path / "rom"), k=2, period=2)
    rom.clock_rule = "mean"  # a ROM takes no clock_rule argument; a custom tier might
    with pytest.raises(ValueError, match="ROM 'rom' has clock_rule='mean', but it never writes"):
        controller([rom])


def test_sources_step_before_their_targets_and_projections_bridge_widths():
    tiers = [RAM(5, 6, name="big"), RAM(5, 4, spill_to="cache_target"),
             Cache(3, 4, spill_to="big", spill_projection=True, name="c"),
             RAM(5, 4, name="cache_target")]  # fmt: skip
    plan = plan_hierarchy(tiers)
    assert plan.spills == {1: 3, 2: 0}
    assert plan.order.index(2) < plan.order.index(0)
    assert plan.order.index(1) < plan.order.index(3)
    assert plan.projections == {"c": (4, 6)}
    model = controller(tiers)
    assert model.spill_projections["c"].weight.shape == (6, 4)
    out = model(torch.randn(2, 3, 3, dtype=D))
    out.output.sum().backward()
    assert model.spill_projections["c"].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------ the numerics
def test_spill_of_a_one_hot_overwrite_is_the_erased_row_at_the_write_weight():
    B, N, W = 3, 5, 4
    memory = torch.randn(B, N, W, dtype=D)
    weights = torch.zeros(B, N, dtype=D)
    weights[:, 2] = 0.7
    erase = torch.rand(B, W, dtype=D)
    removed = memory * weights.unsqueeze(-1) * erase.unsqueeze(1)
    occupied = torch.ones(B, N, dtype=D)
    spilled = spill_of(removed, weights, occupied)
    assert spilled.content.shape == (B, 1, W) and spilled.gate.shape == (B, 1)
    torch.testing.assert_close(spilled.content[:, 0], erase * memory[:, 2])
    torch.testing.assert_close(spilled.gate[:, 0], torch.full((B,), 0.7, dtype=D))
    empty = spill_of(removed, weights, torch.zeros(B, N, dtype=D))  # nothing was there
    assert empty.gate.eq(0).all() and empty.content.eq(0).all()
    zero = spill_of(torch.zeros(B, N, W, dtype=D), torch.zeros(B, N, dtype=D), occupied)
    assert zero.gate.eq(0).all() and torch.isfinite(zero.content).all()


def test_incoming_rows_replace_the_least_used_slots():
    B, N, W = 2, 5, 3
    memory = torch.randn(B, N, W, dtype=D)
    usage = torch.tensor([[0.9, 0.1, 0.5, 0.0, 0.7], [0.2, 0.3, 0.1, 0.8, 0.9]], dtype=D)
    rows, gates = torch.randn(B, 2, W, dtype=D), torch.tensor([[1.0, 0.25], [0.5, 1.0]], dtype=D)
    new, removed, weights = write_rows_to_free_slots(memory, usage, rows, gates)
    expect = memory.clone()
    for b, slots in enumerate([[3, 1], [2, 0]]):
        for s, n in enumerate(slots):
            g = gates[b, s]
            expect[b, n] = memory[b, n] * (1 - g) + g * rows[b, s]
            torch.testing.assert_close(removed[b, n], memory[b, n] * g)
    torch.testing.assert_close(new, expect)
    assert weights.sum(-1).allclose(gates)


def test_a_cache_overwrite_lands_in_the_ram_and_is_read_back():
    """A 1-slot Cache: the second write evicts the first, which the RAM then holds."""
    B, W = 3, 4
    cache = Cache(1, W, spill_to="ram").double()
    ram = RAM(6, W, read_heads=1).double()
    state = cache.initial_state(B, dtype=D)
    v1, v2 = torch.randn(B, W, dtype=D), torch.randn(B, W, dtype=D)
    (_, state, _), traffic = cache.step(cache_interface(cache, B, add=v1), state)
    assert traffic.spill.gate.abs().max() < 1e-9  # the slot was empty: nothing spills
    (_, state, _), traffic = cache.step(cache_interface(cache, B, add=v2), state)
    spilled = traffic.spill
    torch.testing.assert_close(spilled.content[:, 0], v1, atol=1e-9, rtol=0)
    assert spilled.gate.min() > 0.999
    ram_state = ram.initial_state(B, dtype=D)
    interface = torch.zeros(B, ram.interface_size, dtype=D)
    interface[:, -1] = -BIG  # the RAM's own write gate shut
    (_, ram_state, stats), _ = ram.step(interface, ram_state, (spilled,))
    # slot 0 took the shut write's ~1e-13 weight, so the least used slot is slot 1
    stored = ram_state.memory[:, 1]
    torch.testing.assert_close(stored, v1, atol=1e-6, rtol=0)
    assert ram_state.memory[:, 2:].abs().max() < 1e-9
    assert stats.write_mass.min() > 0.999  # the spill's gate counts as written
    assert ram_state.usage[:, 1].min() > 0.999  # and the next allocation avoids it


@pytest.mark.parametrize("gate", [0.0, 0.4, 1.0])
def test_the_sparse_ram_takes_a_spill_into_its_least_recently_used_row(gate):
    B, N, W = 2, 7, 3
    ram = RAM(N, W, read_heads=1, k=2, sparse=True, links=0, index="exact").double()
    state = ram.initial_state(B, dtype=D)
    interface = torch.zeros(B, ram.interface_size, dtype=D)
    interface[:, 1 * (W + 1) + 2 * W] = -BIG  # write gate shut
    content = torch.randn(B, 1, W, dtype=D)
    spill = Spill(content, torch.full((B, 1), gate, dtype=D))
    (_, state, stats), _ = ram.step(interface, state, (spill,))
    # the shut write (weight ~1e-13, below SAM's delta) leaves row 0 least recently used
    torch.testing.assert_close(state.memory[:, 0], gate * content[:, 0], atol=1e-9, rtol=0)
    assert state.memory[:, 1:].abs().max() == 0
    torch.testing.assert_close(stats.write_mass, torch.full((B,), gate, dtype=D), atol=1e-9, rtol=0)


def test_gradients_of_sparse_spills_match_finite_differences():
    B, N, W = 2, 5, 3

    def run(content, gate, query):
        ram = RAM(N, W, read_heads=1, k=3, sparse=True, links=0, index="exact",
                  spill_to="down").double()  # fmt: skip
        state = ram.initial_state(B, dtype=D)
        torch.manual_seed(0)
        total = 0.0
        for t in range(3):
            interface = torch.zeros(B, ram.interface_size, dtype=D)
            interface[:, :W] = query
            interface[:, W] = 2.0
            spill = Spill(content[:, t : t + 1], gate[:, t : t + 1])
            (read, state, _), traffic = ram.step(interface, state, (spill,))
            total = total + (read * torch.arange(1, W + 1, dtype=D)).sum()
            total = total + (traffic.spill.content * traffic.spill.gate.unsqueeze(-1)).sum()
        return total

    content = torch.randn(B, 3, W, dtype=D, requires_grad=True)
    gate = torch.rand(B, 3, dtype=D).mul(0.8).add(0.1).requires_grad_()
    query = torch.randn(B, W, dtype=D, requires_grad=True)
    assert gradcheck(run, (content, gate, query), eps=1e-6, atol=1e-6)


def test_a_controller_with_spills_fills_and_a_gated_clock_has_exact_gradients():
    torch.manual_seed(3)
    model = controller(
        [
            Cache(3, 4, spill_to="ram", fill_from=["ram"], fill_threshold=0.0),
            RAM(5, 4, read_heads=2, period=2, clock_rule="gate"),
        ],
    )
    x = torch.randn(2, 5, 3, dtype=D, requires_grad=True)
    assert gradcheck(lambda x: model(x).output, (x,), eps=1e-6, atol=1e-6)
    out = model(x)
    out.output.sum().backward()
    assert model.interface.weight.shape[0] == sum(model.interface_sizes) + 1  # the gate
    assert model.interface.weight.grad[-1].abs().sum() > 0  # the gate is trained


def test_without_hierarchy_options_outputs_and_gradients_are_those_before_the_hierarchy():
    """Values recorded with the code before issue 14 (commit b71d189), from parameters and
    inputs set by formula (no random numbers), float64: Cache, a dense RAM with two write
    heads and period 2, and a sparse DNC."""
    model = controller(
        [Cache(3, 4, read_heads=2), RAM(6, 4, read_heads=2, write_heads=2, period=2),
         RAM(40, 4, read_heads=1, k=3, links=2, sparse=True, index="exact", name="big")],
        hidden=7, inputs=5, outputs=3,
    )  # fmt: skip
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            angles = torch.arange(p.numel(), dtype=D) * 0.37 + k
            p.copy_(0.3 * torch.sin(angles).reshape(p.shape))
    x = torch.cos(torch.arange(2 * 9 * 5, dtype=D) * 0.71).reshape(2, 9, 5)
    out = model(x)
    out.output.pow(2).sum().backward()
    norm = sum(p.grad.pow(2).sum() for p in model.parameters()).sqrt()
    assert out.output.sum().item() == pytest.approx(13.717247402704576, rel=1e-12)
    assert out.output[1, -1].tolist() == pytest.approx(
        [0.06248959377298377, 0.3132813517148025, 0.352035543553024], rel=1e-12
    )
    assert norm.item() == pytest.approx(18.75454572910953, rel=1e-12)
    masses = {name: aux.write_mass.sum().item() for name, aux in out.aux.items()}
    assert masses == pytest.approx(
        {"register": 18.0, "cache": 10.11796912129002, "ram": 11.289283143141253,
         "big": 5.545921112954753}, rel=1e-12,
    )  # fmt: skip
    assert all(aux.spilled.eq(0).all() for aux in out.aux.values())


def test_the_rule_last_equals_no_rule():
    torch.manual_seed(0)
    plain = controller([Cache(3, 4), RAM(5, 4, period=3)])
    ruled = controller([Cache(3, 4), RAM(5, 4, period=3, clock_rule="last")])
    ruled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 7, 3, dtype=D)
    a, b = plain(x), ruled(x)
    torch.testing.assert_close(a.output, b.output, rtol=0, atol=0)
    assert a.state.summaries == () and a.state.fills == ()


# ------------------------------------------------------------------------- clock rules
def test_clock_rules_summarise_the_steps_since_the_last_tick():
    period, F = 3, 2
    xs = torch.arange(1.0, 8.0, dtype=D).unsqueeze(-1).expand(7, F).unsqueeze(1)  # (T, 1, F)
    summary = {rule: [] for rule in ("last", "mean", "gate")}
    for rule in summary:
        s = torch.zeros(1, F, dtype=D)
        for t in range(7):
            gate = torch.full((1, 1), 0.5, dtype=D)
            s = summarise_interface(rule, xs[t], s, torch.tensor([t]), period, gate)
            summary[rule].append(s[0, 0].item())
    # steps 0..6 hold 1..7; ticks at 0, 3, 6; windows {0}, {1, 2, 3}, {4, 5, 6}
    assert summary["last"] == [1, 2, 3, 4, 5, 6, 7]
    assert summary["mean"][0] == 1 and summary["mean"][3] == pytest.approx((2 + 3 + 4) / 3)
    assert summary["mean"][6] == pytest.approx((5 + 6 + 7) / 3)
    # gate 0.5: s1 = 2, s2 = 2.5, s3 = 3.25
    assert summary["gate"][1:4] == pytest.approx([2, 2.5, 3.25])
    assert summary["gate"][4] == 5  # a new window starts from its first step


def test_a_slow_tier_writes_the_window_mean_at_its_tick():
    """Period 2, rule mean: the Cache writes at step 2 the mean of steps 1 and 2's adds."""
    from tiered.controllers.lstm import summarised

    B, W = 2, 3
    cache = Cache(4, W, period=2, clock_rule="mean").double()
    adds = [torch.randn(B, W, dtype=D) for _ in range(3)]
    state, summary = cache.initial_state(B, dtype=D), None
    for t in range(3):
        interface, summary = summarised(
            cache, cache_interface(cache, B, add=adds[t]), summary, state.clock, None
        )
        state = cache(interface, state).state
    # step 0 wrote adds[0] into slot 0; step 2 wrote mean(adds[1], adds[2]) into slot 1
    torch.testing.assert_close(state.memory[:, 0], adds[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(state.memory[:, 1], (adds[1] + adds[2]) / 2, atol=1e-9, rtol=0)
    assert state.memory[:, 2:].abs().max() < 1e-9


# ------------------------------------------------------------------------ fill on read
def test_a_sharp_ram_read_is_filled_into_the_cache_at_the_next_step():
    from tiered.controllers.lstm import fills_for
    from tiered.tier import Traffic

    B, W = 2, 4
    model = controller([Cache(3, W, fill_from=["ram"], fill_threshold=0.9), RAM(6, W, 1)])
    cache = model.tiers[0]
    word = torch.randn(B, W, dtype=D)
    # a RAM read of weight 0.95 and one of 0.5: only the first passes the threshold
    for peak, expect in ((0.95, 0.95), (0.5, 0.0)):
        traffic = Traffic(peak=torch.full((B, 1), peak, dtype=D))
        fill = fills_for(cache, [(word, traffic, model.tiers[1])])
        torch.testing.assert_close(fill.gate, torch.full((B, 1), expect, dtype=D))
        torch.testing.assert_close(fill.content[:, 0], word)
    fill = fills_for(cache, [(word, Traffic(peak=torch.ones(B, 1, dtype=D)), model.tiers[1])])
    state = cache.initial_state(B, dtype=D)
    state = state._replace(usage=torch.tensor([[0.5, 0.0, 0.9], [0.1, 0.2, 0.0]], dtype=D))
    shut = cache_interface(cache, B, add=torch.zeros(B, W, dtype=D), write=-BIG)
    (_, state, stats), _ = cache.step(shut, state, (fill,))
    # the whole word went into each element's least used slot (1 and 2), nothing elsewhere
    torch.testing.assert_close(state.memory[0, 1], word[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(state.memory[1, 2], word[1], atol=1e-9, rtol=0)
    assert state.memory[0, [0, 2]].abs().max() < 1e-9 and state.memory[1, :2].abs().max() < 1e-9
    torch.testing.assert_close(stats.write_mass, torch.ones(B, dtype=D), atol=1e-9, rtol=0)


def test_fills_come_only_from_a_ram_read_and_reach_the_cache_in_training():
    torch.manual_seed(1)
    filling = controller([Cache(3, 4, fill_from=["ram"], fill_threshold=0.0), RAM(6, 4, 1)])
    never = controller([Cache(3, 4, fill_from=["ram"], fill_threshold=1.0), RAM(6, 4, 1)])
    never.load_state_dict(filling.state_dict())
    x = torch.randn(2, 4, 3, dtype=D)
    out, out_never = filling(x), never(x)
    assert out.state.fills[0].content.shape == (2, 1, 4)
    assert out.state.fills[1] is None
    # step 0 has no fill yet: both runs agree there; from step 1 the fills' gates (the RAM's
    # read peaks) add to the cache's write mass
    torch.testing.assert_close(
        out.aux["cache"].write_mass[:, 0], out_never.aux["cache"].write_mass[:, 0]
    )
    extra = out.aux["cache"].write_mass[:, 1:] - out_never.aux["cache"].write_mass[:, 1:]
    assert (extra > 0.05).all()
    assert out_never.state.fills[0].gate.abs().max() == 0  # peaks stay below 1


# ---------------------------------------------------------------------- a disk that learns
def _disk_interface(disk, B, *, key, value, query, strength=5.0):
    R = disk.read_heads
    return torch.cat(
        [query.repeat(1, R), torch.full((B, R), strength, dtype=D), key, value], dim=-1
    )


def test_a_learning_disk_keeps_the_window_in_a_differentiable_buffer(tmp_path):
    B, Dk = 3, 4
    disk = Disk(str(tmp_path / "disk"), key_width=Dk, value_width=Dk, k=2, period=2,
                learn_writes=True)  # fmt: skip
    disk.train()
    state = disk.initial_state(B)
    key = torch.randn(B, Dk, dtype=D, requires_grad=True)
    value = torch.randn(B, Dk, dtype=D, requires_grad=True)
    read, state, stats = disk(_disk_interface(disk, B, key=key, value=value, query=key), state)
    assert disk.rows == 0  # nothing reached the store
    assert state.keys.shape == (B, Dk) and stats.slots_used.eq(B).all()
    read, state, _ = disk(_disk_interface(disk, B, key=key * 0, value=value * 0, query=key), state)
    (read * torch.arange(1, B * Dk + 1, dtype=D).reshape(B, Dk)).sum().backward()
    assert key.grad.abs().sum() > 0 and value.grad.abs().sum() > 0  # writes learn
    assert disk.rows == 0 and disk.own.rows == 0  # the store itself holds nothing yet
    state = disk.flush(state)
    assert state.keys is None and disk.rows == B
    torch.testing.assert_close(
        torch.from_numpy(disk.own.read_keys()).double(), key.detach(), atol=1e-6, rtol=0
    )
    # once stored, rows are constants: reading them gives no gradient to the old writes
    key.grad, value.grad = None, None
    query = key.detach().clone().requires_grad_()
    stored_state = disk.initial_state(B)._replace(clock=torch.ones(B, dtype=torch.long))
    read, _, _ = disk(_disk_interface(disk, B, key=key, value=value, query=query), stored_state)
    read.sum().backward()
    assert query.grad.abs().sum() > 0  # through the query
    assert key.grad.abs().sum() == 0 and value.grad.abs().sum() == 0  # an off tick, stored rows
    fresh = torch.randn(B, Dk, dtype=D, requires_grad=True)
    off_tick = disk.initial_state(B)._replace(clock=torch.ones(B, dtype=torch.long))
    interface = _disk_interface(disk, B, key=fresh, value=fresh, query=fresh.detach())
    read, _, _ = disk(interface, off_tick)
    read.sum().backward()
    assert fresh.grad is None or fresh.grad.abs().sum() == 0  # an off tick writes nothing
    disk.close()


def test_without_gradients_a_learning_disk_appends_at_once(tmp_path):
    B, Dk = 2, 3
    disk = Disk(str(tmp_path / "d"), key_width=Dk, value_width=Dk, k=2, period=1,
                learn_writes=True)  # fmt: skip
    disk.train()
    x = torch.randn(B, Dk, dtype=D)
    with torch.no_grad():
        _, state, _ = disk(_disk_interface(disk, B, key=x, value=x, query=x), disk.initial_state(B))
    assert disk.rows == B and state.keys is None
    disk.close()


def test_spills_reach_a_disk_at_its_tick_when_their_gate_passes(tmp_path):
    B, W = 2, 4
    disk = Disk(str(tmp_path / "d"), key_width=W, value_width=W, k=2, period=3,
                spill_threshold=0.5)  # fmt: skip
    disk.train()
    state = disk.initial_state(B)._replace(clock=torch.ones(B, dtype=torch.long))
    rows = torch.randn(B, 1, W, dtype=D)
    zero = torch.zeros(B, W, dtype=D)
    interface = _disk_interface(disk, B, key=zero, value=zero, query=zero + 1)
    (_, state, _), _ = disk.step(
        interface, state, (Spill(rows, torch.tensor([[0.9], [0.1]], dtype=D)),)
    )
    assert disk.rows == 0 and state.pending.content.shape == (B, 1, W)  # waits for the tick
    (_, state, _), _ = disk.step(interface, state, ())  # clock 2
    (_, state, stats), _ = disk.step(interface, state, ())  # clock 3: a tick
    # the tick's own row for each element, and the spill of element 0 (gate 0.9 >= 0.5)
    assert disk.rows == B + 1 and state.pending is None
    assert stats.write_mass.tolist() == [2.0, 1.0]
    stored = torch.from_numpy(disk.own.read_keys()).double()
    assert (stored - rows[0, 0]).abs().amax(-1).min() < 1e-6
    disk.close()


def test_a_cache_spills_into_a_learning_disk_under_training(tmp_path):
    import lightning as L

    from tiered.module import TieredModule
    from tiered.tasks import Copy

    store = str(tmp_path / "disk")
    model = TieredModule(
        LSTMController(
            5, 4, Register(8),
            [Cache(2, 4, spill_to="disk"),
             Disk(store, key_width=4, value_width=4, k=2, period=2, learn_writes=True,
                  spill_threshold=0.0)],
        ),
        tbptt_steps=4,
    )  # fmt: skip
    task = Copy(lengths=(2, 3), eval_lengths=(4, 5), bits=4, batch_size=3, train_batches=2,
                val_batches=1, test_batches=1)  # fmt: skip
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)  # fmt: skip
    disk = model.controller.tiers[1]
    seen = []  # (clock at the step, rows in the store then)
    disk.register_forward_hook(
        lambda module, args, output: seen.append((int(args[1].clock[0]), module.own.rows))
    )
    trainer.fit(model, task)
    # windows of 4 steps: the store changes only between windows (at flushes), never inside
    windows: list[list[int]] = []
    for clock, rows in seen:
        if clock % 4 == 0:
            windows.append([])
        windows[-1].append(rows)
    assert len(windows) >= 4 and all(len(set(w)) == 1 for w in windows)
    starts = [w[0] for w in windows]
    assert starts[0] == 0 and starts == sorted(starts) and disk.rows > starts[-1] > 0
    assert torch.isfinite(torch.from_numpy(disk.own.read_keys())).all()


def test_a_cache_fills_from_a_rom_whose_read_is_sharp(tmp_path):
    import numpy as np

    from tiered.storage import KVStore

    keys = np.eye(4, dtype=np.float32)
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    KVStore.create(str(tmp_path / "rom"), 4, 4).append(keys, values)
    rom = ROM(str(tmp_path / "rom"), k=2, index="exact")
    model = controller([Cache(2, 4, fill_from=["rom"], fill_threshold=0.9), rom], inputs=4)
    with torch.no_grad():  # query the ROM with key 2 at a high strength
        model.interface.weight.zero_()
        model.interface.bias.zero_()
        offset = model.tiers[0].interface_size
        model.interface.bias[offset + 2] = 1.0
        model.interface.bias[offset + 4] = 60.0
        model.interface.bias[offset - 1] = -BIG  # the Cache's own write gate shut
    out = model(torch.zeros(1, 2, 4, dtype=D))
    fill = out.state.fills[0]
    assert fill.gate.item() > 0.99  # the ROM read row 2 with weight ~1
    torch.testing.assert_close(fill.content[0, 0], torch.from_numpy(values[2]).double(),
                               atol=1e-6, rtol=0)  # fmt: skip
    # the fill of step 0 was written into the Cache at step 1
    cache_memory = out.state.tiers[0].memory[0]
    assert (cache_memory - fill.content[0, 0]).abs().amax(-1).min() < 1e-6
    with pytest.raises(ValueError, match="ROM 'rom' is read-only"):
        rom.step(torch.zeros(1, rom.interface_size), rom.initial_state(1), (fill,))


def test_the_hierarchy_sweeps_build_the_hierarchies_their_variants_name():
    """A variant's tier list merges into the base stack's item by item (jsonargparse), so a
    side-by-side variant must say it does not spill: checked on what the runs build."""
    from pathlib import Path

    from tiered.cli import make_cli
    from tiered.sweeps.spec import load_sweep

    root = Path(__file__).resolve().parents[2] / "experiments" / "sweeps"
    built = {}
    for name in ("hierarchy_structure", "hierarchy_penalty", "hierarchy_clock"):
        for run in load_sweep(root / f"{name}.yaml").runs():
            if run.seed == 0:
                cli = make_cli([*run.args, "--trainer.logger", "false"], run=False)
                built[run.variant.removeprefix("config=")] = {
                    t.name: t for t in cli.model.controller.tiers
                }
    assert set(built["ram_only"]) == {"ram"} and set(built["cache_only"]) == {"cache"}
    assert built["cache_ram"]["cache"].spill_to is None
    assert built["cache_ram"]["cache"].fill_from == []
    assert built["cache_spill_ram"]["cache"].spill_to == "ram"
    assert built["cache_spill_ram"]["cache"].fill_from == []
    assert built["cache_spill_fill_ram"]["cache"].fill_from == ["ram"]
    for penalty in (0.001, 0.01, 0.1):
        cache = built[f"cache_penalty_{penalty}"]["cache"]
        assert cache.rewrite_penalty == penalty and cache.spill_to == "ram"
    for period in (2, 4):
        for rule in ("last", "mean", "gate"):
            ram = built[f"slow_ram_p{period}_{rule}"]["ram"]
            assert (ram.period, ram.clock_rule) == (period, rule)
