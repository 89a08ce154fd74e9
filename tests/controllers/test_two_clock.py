"""TwoClockController: a fast and a slow core, decoupled by synthetic gradients."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import tiered.controllers.two_clock as two_clock
from tiered import TieredModule
from tiered.controllers import TwoClockController
from tiered.tasks import Copy
from tiered.tiers import RAM, Register


def _controller(decoupled=True, tiers=(), seed=0):
    torch.manual_seed(seed)
    return TwoClockController(5, 3, Register(6), Register(4, period=3), list(tiers),
                              decoupled=decoupled).double()  # fmt: skip


def _grads(module):
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for n, p in module.named_parameters()}  # fmt: skip


def test_the_slow_core_ticks_on_its_clock_and_is_logged_under_its_name():
    controller = _controller(tiers=[RAM(5, 4, sparse=False)])
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    out = controller(x)
    assert out.output.shape == (2, 7, 3)
    assert set(out.aux) == {"register", "ram", "slow"}
    assert out.aux["slow"].write_mass[0].tolist() == [1, 0, 0, 1, 0, 0, 1]  # steps 0, 3, 6
    assert out.state.slow.clock.tolist() == [7, 7]
    # Continuing from a state equals one pass (the slow clock carries over).
    first = controller(x[:, :4])
    rest = controller(x[:, 4:], first.state)
    torch.testing.assert_close(torch.cat([first.output, rest.output], 1), out.output)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="slow.period must be at least 2"):
        TwoClockController(5, 3, Register(6), Register(4, name="slow"))
    with pytest.raises(TypeError, match="slow must be a tiered.tiers.Register"):
        TwoClockController(5, 3, Register(6), RAM(5, 4))
    with pytest.raises(ValueError, match="name 'ram' is taken"):
        TwoClockController(5, 3, Register(6), Register(4, period=2, name="ram"), [RAM(5, 4)])


def test_coupled_cores_backpropagate_through_both():
    controller = _controller(decoupled=False)
    assert controller.synthetic is None
    controller(torch.randn(2, 7, 5, dtype=torch.float64)).output.sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in controller.slow.parameters())


def test_decoupled_gradients_are_the_synthetic_ones_and_m_regresses_on_the_true_ones(
    monkeypatch,
):
    """The slow core's gradient is that of sum_t <q_t, M(q_t)>; M's is that of
    sum_t 1/2 ||M(q_t) - dL/dv_t||^2, with dL/dv_t measured by making each v_t a leaf."""
    controller = _controller()
    torch.nn.init.normal_(controller.synthetic.net[-1].weight, std=0.3)
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    weights = torch.randn(3, 8, 3, dtype=torch.float64)
    controller.zero_grad()
    (controller(x).output * weights).sum().backward()
    got = _grads(controller)
    assert controller.pop_synthetic_loss() > 0 and controller.pop_synthetic_loss() is None

    records = []

    def leaf_boundary(q, prediction, losses):  # served_t as a leaf, q and M(q) recorded
        served = q.detach().requires_grad_(True)
        records.append((q, prediction, served))
        return served

    monkeypatch.setattr(two_clock._Boundary, "apply", leaf_boundary)
    controller.zero_grad()
    loss = (controller(x).output * weights).sum()
    loss.backward(retain_graph=True)
    fast = _grads(controller)
    used = [(q, m, v) for q, m, v in records if v.grad is not None]  # not the last step's
    assert len(used) == len(records) - 1
    synthetic = sum((q * m.detach()).sum() for q, m, _ in used)
    regression = sum(0.5 * (m - v.grad).pow(2).sum() for _, m, v in used)
    controller.zero_grad()
    (synthetic + regression).backward()
    rest = _grads(controller)
    for name in got:
        want = rest[name] if not name.startswith("fast.") else fast[name]
        torch.testing.assert_close(got[name], want, rtol=1e-10, atol=1e-12, msg=name)
    assert all(got[n].abs().sum() > 0 for n in got if n.startswith(("slow.", "synthetic.")))


def test_a_module_trains_a_two_clock_controller_and_logs_m():
    task = Copy(lengths=(2, 4), batch_size=4, train_batches=4)
    controller = TwoClockController(task.input_size, task.output_size, Register(8),
                                    Register(5, period=2), [RAM(6, 4, sparse=False)])  # fmt: skip
    before = {n: p.clone() for n, p in controller.named_parameters()}
    module = TieredModule(controller)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(module, task)
    assert "train/sg/slow_loss" in trainer.callback_metrics
    groups = trainer.optimizers[0].param_groups  # M learns at synthetic_lr
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert groups[1]["params"] == list(controller.synthetic.parameters())
    moved = {n for n, p in controller.named_parameters() if not torch.equal(p, before[n])}
    assert {"slow.cells.0.weight_ih", "synthetic.net.0.weight"} <= moved


def test_the_cli_builds_it_from_yaml(tmp_path):
    from tiered.cli import make_cli

    stack = tmp_path / "two_clock.yaml"
    stack.write_text(
        "model:\n  class_path: tiered.TieredModule\n  init_args:\n    controller:\n"
        "      class_path: tiered.controllers.TwoClockController\n      init_args:\n"
        "        register: {class_path: tiered.tiers.Register, init_args: {hidden_size: 9}}\n"
        "        slow: {class_path: tiered.tiers.Register, init_args: {hidden_size: 5, "
        "period: 4}}\n"
    )
    cli = make_cli(["--config", str(stack), "--data", "tiered.tasks.Copy",
                    "--trainer.logger", "false"], run=False)  # fmt: skip
    controller = cli.model.controller
    assert isinstance(controller, TwoClockController)
    assert controller.input_size == cli.datamodule.input_size and controller.slow.period == 4


def test_m_s_losses_add_up_over_backward_passes_in_constant_memory():
    controller = _controller()
    torch.nn.init.normal_(controller.synthetic.net[-1].weight, std=0.3)
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    each = []
    for _ in range(3):  # three backward passes, never popped in between
        controller(x).output.sum().backward()
        each.append(controller.synthetic_losses.total.clone())
    total = controller.synthetic_losses.total
    assert total.dim() == 0  # one running sum, whatever the number of passes
    torch.testing.assert_close(controller.pop_synthetic_loss(), each[0] * 3)  # same x each time
    assert controller.pop_synthetic_loss() is None
