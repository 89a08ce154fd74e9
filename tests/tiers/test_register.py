"""Register: equals torch's LSTM/GRU, rewrite is the squared state change, clockwork period."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from tiered.tiers import Register

B, T, I, S = 7, 6, 5, 9


def run_register(register: Register, x: torch.Tensor):
    state = register.initial_state(x.shape[0], dtype=x.dtype)
    outputs, rewrites, states = [], [], []
    for t in range(x.shape[1]):
        out, state, stats = register(x[:, t], state)
        outputs.append(out)
        rewrites.append(stats.rewrite)
        states.append(state)
    return torch.stack(outputs, 1), torch.stack(rewrites, 1), states


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_torch_recurrent_layer_with_the_same_weights(cell):
    register = Register(S, num_layers=2, cell=cell, input_size=I).double()
    reference = (nn.LSTM if cell == "lstm" else nn.GRU)(I, S, num_layers=2, batch_first=True)
    reference = reference.double()
    with torch.no_grad():
        for layer, module in enumerate(register.cells):
            getattr(reference, f"weight_ih_l{layer}").copy_(module.weight_ih)
            getattr(reference, f"weight_hh_l{layer}").copy_(module.weight_hh)
            getattr(reference, f"bias_ih_l{layer}").copy_(module.bias_ih)
            getattr(reference, f"bias_hh_l{layer}").copy_(module.bias_hh)
    x = torch.randn(B, T, I, dtype=torch.float64)
    outputs, _, _ = run_register(register, x)
    expected, _ = reference(x)
    torch.testing.assert_close(outputs, expected)


def test_rewrite_is_the_squared_change_of_the_cell_state():
    register = Register(S, num_layers=2, input_size=I).double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    _, rewrites, states = run_register(register, x)
    cells = [torch.zeros_like(states[0].cell)] + [s.cell for s in states]
    expected = torch.stack([(b - a).pow(2).sum((1, 2)) for a, b in itertools.pairwise(cells)], 1)
    torch.testing.assert_close(rewrites, expected)
    assert (rewrites > 0).all()


def test_period_two_holds_the_state_between_ticks():
    register = Register(S, input_size=I, period=2).double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    outputs, rewrites, states = run_register(register, x)
    for t in range(1, T, 2):  # odd steps are off ticks: output and state carried
        torch.testing.assert_close(outputs[:, t], outputs[:, t - 1], rtol=0, atol=0)
        assert rewrites[:, t].abs().max() == 0
    assert not torch.equal(outputs[:, 2], outputs[:, 1])
    assert [s.clock[0].item() for s in states] == list(range(1, T + 1))


def test_stats_count_active_units_and_writes_on_ticks_only():
    register = Register(S, num_layers=2, input_size=I, period=2).double()
    state = register.initial_state(B, dtype=torch.float64)
    for t in range(4):
        _, state, stats = register(torch.randn(B, I, dtype=torch.float64), state)
        tick = float(t % 2 == 0)
        assert stats.write_mass.tolist() == [tick] * B and stats.wrote.tolist() == [tick] * B
        # one state, read whole with weight 1; the soft count of active units is sum |h|
        assert stats.read_entropy.abs().max() == 0
        torch.testing.assert_close(stats.slots_used, state.hidden.abs().sum((1, 2)))
        assert ((stats.slots_used > 0) & (stats.slots_used <= 2 * S)).all()
        assert not stats.slots_used.requires_grad
    zero = register.initial_state(B, dtype=torch.float64)._replace(clock=state.clock + 1)
    _, _, stats = register(torch.randn(B, I, dtype=torch.float64), zero)  # an off tick
    assert stats.slots_used.abs().max() == 0  # the zero state holds nothing


def test_zero_input_gives_finite_outputs_and_gradients():
    register = Register(S, input_size=I).double()
    x = torch.zeros(B, T, I, dtype=torch.float64, requires_grad=True)
    outputs, rewrites, _ = run_register(register, x)
    (outputs.sum() + rewrites.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_gradcheck_register_steps():
    register = Register(4, num_layers=2, cell="lstm", input_size=3).double()
    x = torch.randn(3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: run_register(register, x)[:2], (x,))


def test_build_rejects_a_different_input_size_and_unbuilt_use_is_explained():
    register = Register(S, input_size=I)
    register.build(I)  # the same size again is fine
    with pytest.raises(ValueError, match=r"input_size is 5 but the controller feeds it 7"):
        register.build(7)
    with pytest.raises(RuntimeError, match="has no input_size yet"):
        _ = Register(S).interface_size


def test_bad_arguments_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="Register: cell must be one of 'lstm', 'gru', got 'rnn'"):
        Register(S, cell="rnn")
    with pytest.raises(ValueError, match="Register: hidden_size must be a positive integer"):
        Register(0)
