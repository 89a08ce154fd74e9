"""LSTMController: composition, aux record, ticks, explicit state, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from tiered import detach_state
from tiered.controllers import ControllerOutput, LSTMController
from tiered.tiers import RAM, Cache, CacheState, RAMState, Register

B, T, I, O = 7, 9, 5, 3

STACKS = {
    "register_only": lambda: [],
    "cache": lambda: [Cache(6, 4, read_heads=2, rewrite_penalty=0.1)],
    "ram": lambda: [RAM(13, 4, read_heads=2, write_heads=2, rewrite_penalty=0.01)],
    "cache_and_ram": lambda: [Cache(6, 4), RAM(13, 4, read_heads=2, period=2)],
}


def make(stack: str, hidden: int = 11) -> LSTMController:
    return LSTMController(I, O, Register(hidden), STACKS[stack]()).double()


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_stack_runs_forward_and_backward(stack):
    controller = make(stack)
    x = torch.randn(B, T, I, dtype=torch.float64)
    out = controller(x)
    assert isinstance(out, ControllerOutput)
    assert out.output.shape == (B, T, O)
    assert list(out.aux) == controller.tier_names
    for record in out.aux.values():
        assert all(field.shape == (B, T) for field in record)
    loss = out.output.pow(2).mean() + sum(a.penalty.mean() for a in out.aux.values())
    loss.backward()
    for name, parameter in controller.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert controller.interface is not None or stack == "register_only"


def test_penalty_is_rewrite_times_the_tiers_lambda_and_stats_are_counted():
    controller = make("cache")
    out = controller(torch.randn(B, T, I, dtype=torch.float64))
    cache = out.aux["cache"]
    torch.testing.assert_close(cache.penalty, 0.1 * cache.rewrite)
    assert cache.penalty.requires_grad
    for field in ("write_mass", "wrote", "read_entropy", "slots_used", "value_reads"):
        assert getattr(cache, field).shape == (B, T) and not getattr(cache, field).requires_grad
    assert ((cache.write_mass > 0) & (cache.write_mass <= 1)).all()  # a write every step
    assert ((cache.read_entropy >= 0) & (cache.read_entropy <= math.log(6) + 1e-9)).all()
    assert ((cache.slots_used > 0) & (cache.slots_used <= 6)).all()
    assert (cache.slots_used.diff(dim=1) >= 0).all()  # a cache never frees a slot
    assert torch.equal(out.aux["register"].penalty, torch.zeros(B, T, dtype=torch.float64))


def test_a_tier_with_period_three_writes_on_steps_0_3_6_only():
    controller = LSTMController(
        I, O, Register(8), [Cache(5, 4, name="fast"), RAM(7, 4, read_heads=1, period=3)]
    ).double()
    out = controller(torch.randn(B, 8, I, dtype=torch.float64))
    ram_writes = out.aux["ram"].write_mass[0].tolist()
    assert [t for t, w in enumerate(ram_writes) if w > 0] == [0, 3, 6]
    assert (out.aux["ram"].rewrite[:, [1, 2, 4, 5, 7]] == 0).all()
    assert (out.aux["ram"].wrote[:, [1, 2, 4, 5, 7]] == 0).all()
    assert (out.aux["fast"].write_mass > 0).all()


def test_continuing_from_the_returned_state_equals_one_long_run():
    controller = make("cache_and_ram")
    x = torch.randn(B, T, I, dtype=torch.float64)
    whole = controller(x)
    first = controller(x[:, :4])
    second = controller(x[:, 4:], first.state)
    torch.testing.assert_close(torch.cat([first.output, second.output], 1), whole.output)
    torch.testing.assert_close(second.state.tiers[1].memory, whole.state.tiers[1].memory)


def test_interleaving_two_sequences_of_different_batch_sizes_equals_running_them_apart():
    controller = make("cache_and_ram")
    xa = torch.randn(B, T, I, dtype=torch.float64)
    xb = torch.randn(3, T, I, dtype=torch.float64)
    alone_a, alone_b = controller(xa).output, controller(xb).output
    state_a = state_b = None
    outs_a, outs_b = [], []
    for start in range(0, T, 2):
        out_a = controller(xa[:, start : start + 2], state_a)
        out_b = controller(xb[:, start : start + 2], state_b)
        state_a, state_b = out_a.state, out_b.state
        outs_a.append(out_a.output)
        outs_b.append(out_b.output)
    torch.testing.assert_close(torch.cat(outs_a, 1), alone_a)
    torch.testing.assert_close(torch.cat(outs_b, 1), alone_b)


def test_modules_hold_no_per_sequence_tensors():
    controller = make("cache_and_ram")
    before = {k: v.clone() for k, v in controller.state_dict().items()}
    controller(torch.randn(B, T, I, dtype=torch.float64))
    after = controller.state_dict()
    assert list(controller.buffers()) == []
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_detached_state_cuts_the_graph_but_keeps_values():
    controller = make("ram")
    out = controller(torch.randn(B, T, I, dtype=torch.float64))
    detached = detach_state(out.state)
    assert type(detached) is type(out.state)
    assert isinstance(detached.tiers[0], RAMState)
    assert not detached.tiers[0].memory.requires_grad
    torch.testing.assert_close(detached.tiers[0].memory, out.state.tiers[0].memory)


def test_gradcheck_controller_steps_with_writes():
    controller = LSTMController(
        3, 2, Register(4), [Cache(4, 3, read_heads=1), RAM(5, 3, read_heads=1)]
    ).double()
    batch = 2
    state = controller.initial_state(batch, dtype=torch.float64)
    cache_usage = torch.stack([torch.randperm(4, dtype=torch.float64) for _ in range(batch)]) / 4
    ram_usage = (
        torch.stack([torch.randperm(5, dtype=torch.float64) for _ in range(batch)]) + 1
    ) / 7
    cache_state = CacheState(
        torch.randn(batch, 4, 3, dtype=torch.float64), cache_usage, *state.tiers[0][2:]
    )
    ram_state = state.tiers[1]._replace(
        memory=torch.randn(batch, 5, 3, dtype=torch.float64), usage=ram_usage
    )
    state = state._replace(tiers=(cache_state, ram_state))
    x = torch.randn(batch, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = controller.interface.weight.detach().clone().requires_grad_()

    def run_functional(x, weight):
        params = dict(controller.named_parameters())
        params["interface.weight"] = weight
        out = torch.func.functional_call(controller, params, (x, state))
        return out.output, out.aux["ram"].rewrite, out.aux["cache"].rewrite

    assert gradcheck(run_functional, (x, weight))


def test_bad_compositions_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"tiers must have unique names.*\['cache'\] repeated"):
        LSTMController(I, O, Register(8), [Cache(4, 4), Cache(8, 4)])
    with pytest.raises(ValueError, match="tiers must have unique names"):
        LSTMController(I, O, Register(8), [RAM(4, 4, name="register")])
    with pytest.raises(TypeError, match=r"tiers\[0\] must be a memory tier"):
        LSTMController(I, O, Register(8), [Register(4)])
    with pytest.raises(TypeError, match="register must be a tiered.tiers.Register"):
        LSTMController(I, O, Cache(4, 4), [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LSTMController: output_size must be a positive integer"):
        LSTMController(I, 0, Register(8))
    controller = LSTMController(I, O, Register(8))
    with pytest.raises(
        ValueError, match=r"x must have shape \(batch, time >= 1, 5\), got \(2, 3, 4\)"
    ):
        controller(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="got \\(2, 0, 5\\)"):
        controller(torch.zeros(2, 0, I))


def test_a_register_given_the_wrong_input_size_is_rejected():
    with pytest.raises(ValueError, match="input_size is 4 but the controller feeds it 13"):
        LSTMController(I, O, Register(8, input_size=4), [Cache(4, 4, read_heads=2)])


def test_input_skip_starts_as_the_identity_into_queries_as_wide_as_the_input():
    cache, ram = Cache(slots=5, width=3), RAM(slots=9, width=7, read_heads=2, sparse=False)
    controller = LSTMController(7, 2, Register(8), [cache, ram], input_skip=True)
    weight = controller.input_skip.weight  # (cache + ram interface sizes, 7)
    offset = cache.interface_size
    assert weight.shape == (offset + ram.interface_size, 7)
    for head in range(2):  # each RAM read key starts as the input
        block = weight[offset + 7 * head : offset + 7 * (head + 1)]
        torch.testing.assert_close(block, torch.eye(7))
    assert weight[:offset].abs().sum() == 0 and weight[offset + 14 :].abs().sum() == 0
    assert weight.requires_grad
    # Without tiers there is nothing to skip into; by default there is no skip.
    assert LSTMController(7, 2, Register(8), [], input_skip=True).input_skip is None
    assert LSTMController(7, 2, Register(8), [ram]).input_skip is None
    with pytest.warns(
        UserWarning, match=r"as wide as the input \(5; the tiers' query widths are \[7\]\)"
    ):
        zero = LSTMController(5, 2, Register(8), [ram], input_skip=True)
    assert zero.input_skip.weight.abs().sum() == 0


def test_input_skip_adds_the_input_to_the_interface():
    ram = RAM(slots=9, width=5, read_heads=1, sparse=False)
    controller = LSTMController(5, 2, Register(8), [ram], input_skip=True).double()
    with torch.no_grad():
        controller.interface.weight.zero_()
        controller.interface.bias.zero_()
    seen = []
    ram.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    controller(x)
    assert len(seen) == 4  # the controller steps its tiers through nn.Module's call
    for t, interface in enumerate(seen):
        torch.testing.assert_close(interface[:, :5], x[:, t])
        assert interface[:, 5:].abs().sum() == 0
