"""ACTController: halting weights, ponder cost, the step limit, and equality with the
LSTMController at one step."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tiered import TieredModule
from tiered.controllers import ACTController, LSTMController
from tiered.controllers.act import blend_states, halting_weights
from tiered.tasks import Parity
from tiered.tiers import RAM, Cache, Register


def test_halting_weights_follow_the_paper_and_sum_to_one():
    halts = torch.tensor([[0.5, 0.3, 0.4, 0.9], [0.1, 0.1, 0.1, 0.1], [0.995, 0.2, 0.2, 0.2]],
                         dtype=torch.float64)  # fmt: skip
    weights, steps, remainder = halting_weights(halts, 0.01)
    assert steps.tolist() == [3, 4, 1]
    torch.testing.assert_close(remainder, torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64))
    expected = [[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7], [1.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64))


def test_the_ponder_cost_gradient_is_minus_one_for_each_step_before_halting():
    halts = torch.tensor([[0.5, 0.3, 0.4, 0.9], [0.1, 0.1, 0.1, 0.1]], dtype=torch.float64,
                         requires_grad=True)  # fmt: skip
    _, steps, remainder = halting_weights(halts, 0.01)
    (steps + remainder).sum().backward()
    expected = [[-1.0, -1.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]]
    torch.testing.assert_close(halts.grad, torch.tensor(expected, dtype=torch.float64))


def _act(max_steps=4, bias=0.0, tiers=(), seed=0):
    torch.manual_seed(seed)
    act = ACTController(5, 3, Register(7), list(tiers), max_steps=max_steps, halting_bias=bias)
    return act.double()


def test_the_step_limit_holds_and_the_bias_sets_the_first_pondering():
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    assert (_act(max_steps=3, bias=-20.0)(x).aux["ponder"].write_mass == 3).all()
    assert (_act(max_steps=3, bias=20.0)(x).aux["ponder"].write_mass == 1).all()


def test_one_step_equals_an_lstm_controller_with_the_first_step_flag_as_input():
    act = _act(max_steps=1, tiers=[Cache(3, 4), RAM(5, 4, sparse=False)])
    torch.manual_seed(1)
    plain = LSTMController(6, 3, Register(7), [Cache(3, 4), RAM(5, 4, sparse=False)]).double()
    plain.load_state_dict(act.core.state_dict())
    x = torch.randn(3, 5, 5, dtype=torch.float64, requires_grad=True)
    ours = act(x)
    theirs = plain(torch.cat([x, torch.ones(3, 5, 1, dtype=torch.float64)], dim=-1))
    torch.testing.assert_close(ours.output, theirs.output, rtol=0, atol=0)
    torch.testing.assert_close(ours.state.tiers[1].memory, theirs.state.tiers[1].memory,
                               rtol=0, atol=0)  # fmt: skip
    assert (ours.aux["ponder"].penalty == 1e-2 * 2.0).all()  # rho = N + R = 1 + 1
    (g_ours,) = torch.autograd.grad(ours.output.sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.output.sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=0)


def test_halted_sequences_stay_put_while_others_ponder():
    act = _act(max_steps=6, tiers=[Cache(3, 4)], seed=3)
    with torch.no_grad():
        act.halt.weight.mul_(8.0)  # halting units that differ between sequences
    x = torch.randn(6, 1, 5, dtype=torch.float64)
    out = act(x)
    steps = out.aux["ponder"].write_mass[:, 0]
    assert len(set(steps.tolist())) >= 2  # sequences halted at different steps
    # Every clock counts the internal steps each sequence took, no more.
    assert out.state.register.clock.tolist() == steps.long().tolist()
    assert out.state.tiers[0].clock.tolist() == steps.long().tolist()


def test_act_gradients_in_float64():
    act = _act(max_steps=3, tiers=[RAM(4, 3, sparse=False)], seed=2)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)

    def run(inputs):
        out = act(inputs)
        return out.output, out.aux["ponder"].penalty

    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-6)


def test_blend_states_names_a_state_it_cannot_freeze():
    from tiered.state import Opaque

    keep = torch.tensor([True, False])
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert blend_states(keep, (a, None), (b, None))[0].tolist() == [[1, 1, 1], [0, 0, 0]]
    with pytest.raises(TypeError, match="cannot be frozen"):
        blend_states(keep, Opaque(), Opaque())


def test_a_module_trains_act_on_parity_with_the_ponder_cost_in_the_loss():
    task = Parity(size=8, nonzero=(1, 8), eval_nonzero=(1, 8), batch_size=4, train_batches=3,
                  val_batches=1)  # fmt: skip
    controller = ACTController(task.input_size, task.output_size, Register(6), max_steps=3,
                               time_penalty=0.1)  # fmt: skip
    module = TieredModule(controller)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, task)
    metrics = trainer.callback_metrics
    assert 1.0 <= float(metrics["val/ponder_steps"]) <= 3.0
    assert float(metrics["val/penalty/ponder"]) >= 0.1  # tau (N + R) with N + R >= 1
    batch = task.make_batch("train", 0)
    out = controller(batch.inputs)
    assert out.output.shape == (4, 1, 1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_steps"):
        ACTController(5, 3, Register(7), max_steps=0)
    with pytest.raises(ValueError, match="epsilon must be below 1"):
        ACTController(5, 3, Register(7), epsilon=1.0)
    with pytest.raises(ValueError, match="'ponder' is the ponder cost's"):
        ACTController(5, 3, Register(7), [Cache(3, 4, name="ponder")])


def test_diagnostics_draw_the_internal_steps_beside_the_tiers():
    from tiered.diagnostics import draw, summary, trace

    act = _act(max_steps=3, tiers=[RAM(5, 4, sparse=False)])
    records = trace(act, torch.randn(2, 4, 5, dtype=torch.float64))
    record = records[0]
    assert record["ponder"].kind == "ACT" and record["ram"].reads.shape == (4, 5)
    steps = record["ponder"].stats["write_mass"]
    assert ((steps >= 1) & (steps <= 3)).all()
    assert "ponder (ACT): internal steps per input" in summary(record)
    figure = draw(record)
    titles = [ax.get_title() for ax in figure.axes]
    assert "ACT: internal steps pondered per input" in titles


def test_a_batch_ponders_each_sequence_as_it_would_alone():
    act = _act(max_steps=5, tiers=[Cache(3, 4), RAM(5, 4, sparse=False)], seed=4)
    with torch.no_grad():
        act.halt.weight.mul_(8.0)  # sequences halt at different steps
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    together = act(x)
    steps = together.aux["ponder"].write_mass
    assert len(set(steps.flatten().tolist())) >= 2
    for b in range(4):
        alone = act(x[b : b + 1])
        torch.testing.assert_close(alone.output[0], together.output[b], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            alone.state.tiers[1].memory[0],
            together.state.tiers[1].memory[b],
            rtol=1e-12,
            atol=1e-12,
        )
        torch.testing.assert_close(alone.aux["ponder"].write_mass[0], steps[b])


def test_slow_tiers_and_fills_ponder_and_a_disk_is_refused(tmp_path):
    from tiered.tiers import Disk

    slow = _act(max_steps=3, tiers=[Cache(3, 4, period=2, clock_rule="mean")])
    out = slow(torch.randn(2, 3, 5, dtype=torch.float64))
    assert out.output.shape == (2, 3, 3)
    ram = RAM(5, 4, sparse=False, read_heads=1, name="ram")
    filled = _act(max_steps=3, tiers=[Cache(3, 4, fill_from=["ram"]), ram])
    assert filled(torch.randn(2, 3, 5, dtype=torch.float64)).output.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="may not hold a Disk"):
        ACTController(5, 3, Register(7), [Disk(str(tmp_path / "d"), 4, 3)])
