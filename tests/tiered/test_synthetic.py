"""Synthetic gradients across truncation windows (tiered.synthetic and TieredModule)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from tiered import TieredModule
from tiered.controllers import LSTMController
from tiered.synthetic import (
    SyntheticGradient,
    cosine,
    future_gradients,
    inject,
    predictor_loss,
    start_state,
    state_vector,
    target,
    vector_size,
    with_state_vector,
)
from tiered.tasks.base import pad_examples
from tiered.tasks.copy import copy_example
from tiered.tiers import RAM, Cache, Register

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, limit_val_batches=0)  # fmt: skip


def _controller(tiers=(), seed=0, layers=1):
    torch.manual_seed(seed)
    return LSTMController(5, 3, Register(7, num_layers=layers), list(tiers)).double()


def _loss(targets):
    """A window loss: a fixed random linear function of the outputs (B, T, 3)."""

    def window_loss(out, start):
        return (out.output * targets[:, start : start + out.output.shape[1]]).sum()

    return window_loss


def _grads(controller):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in controller.parameters()]  # fmt: skip


@pytest.mark.parametrize("layers", [1, 2])
def test_a_perfect_predictor_makes_windowed_gradients_sum_to_full_bptt(layers):
    controller = _controller(layers=layers)
    torch.manual_seed(1)
    x = torch.randn(3, 11, 5, dtype=torch.float64)  # 11 steps, windows of 3: 3, 3, 3, 2
    window_loss = _loss(torch.randn(3, 11, 3, dtype=torch.float64))
    controller.zero_grad()
    full = controller(x)
    window_loss(full, 0).backward()
    expected = _grads(controller)
    ends, true = future_gradients(controller, x, 3, window_loss)
    assert len(ends) == 3 and true[0].shape == (3, vector_size(controller))

    def windowed(oracle):
        controller.zero_grad()
        state, leaves = None, []
        for k, start in enumerate(range(0, 11, 3)):
            leaf = None
            if state is not None:
                state, leaf = start_state(state)
                leaves.append(leaf)
            out = controller(x[:, start : start + 3], state)
            loss = window_loss(out, start)
            if oracle and k < 3:
                loss = loss + (state_vector(out.state) * true[k]).sum()
            loss.backward()  # the parameters' gradients add up over the windows
            state = type(out.state)(*out.state)  # the end state, cut below
            state = with_state_vector(state, state_vector(state).detach())
        return _grads(controller), leaves

    summed, leaves = windowed(oracle=True)
    for got, want in zip(summed, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for leaf, want in zip(leaves, true, strict=True):  # each start's gradient is the truth
        torch.testing.assert_close(leaf.grad, want, rtol=1e-10, atol=1e-12)
    truncated, _ = windowed(oracle=False)  # plain truncation loses the future's share
    assert any(not torch.allclose(a, b) for a, b in zip(truncated, expected, strict=True))


def test_the_state_vector_round_trips_and_covers_register_and_reads():
    controller = _controller(tiers=[Cache(3, 4), RAM(5, 4, sparse=False)], layers=2)
    state = controller.initial_state(2, dtype=torch.float64)
    vector = torch.randn(2, vector_size(controller), dtype=torch.float64)
    assert vector.shape[1] == 2 * 2 * 7 + controller.reads_size
    rebuilt = with_state_vector(state, vector)
    assert torch.equal(state_vector(rebuilt), vector)
    assert rebuilt.tiers is state.tiers  # the tiers' own states are not part of it
    with pytest.raises(TypeError, match="need a tiered.controllers.LSTMController"):
        vector_size(torch.nn.Linear(2, 2))


def test_future_gradients_reach_the_reads_of_a_memory_controller():
    controller = _controller(tiers=[RAM(5, 4, sparse=False)])
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    ends, grads = future_gradients(controller, x, 4, _loss(torch.randn(2, 7, 3).double()))
    assert len(ends) == 1
    reads = grads[0][:, 14:]
    assert reads.shape == (2, controller.reads_size) and reads.abs().sum() > 0
    assert future_gradients(controller, x, 7, _loss(torch.randn(2, 7, 3).double())) == ([], [])


def test_the_gradient_model_starts_at_zero_and_checks_its_sizes():
    for hidden in (0, 6):
        model = SyntheticGradient(9, hidden=hidden).double()
        assert torch.equal(
            model(torch.randn(4, 9, dtype=torch.float64)), torch.zeros(4, 9).double()
        )
    with pytest.raises(ValueError, match="hidden must be an int >= 0, got -1"):
        SyntheticGradient(9, hidden=-1)
    with pytest.raises(ValueError, match="size"):
        SyntheticGradient(0)


def test_the_target_discounts_the_next_prediction_whatever_is_applied():
    controller = _controller()
    model = SyntheticGradient(vector_size(controller)).double()
    torch.nn.init.normal_(model.net[-1].weight)
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    window_loss = _loss(torch.randn(2, 6, 3, dtype=torch.float64))
    with torch.no_grad():
        first = controller(x[:, :3])

    def second_window(applied, discount, unit):
        state, leaf = start_state(first.state)
        out = controller(x[:, 3:], state)
        loss, end, bootstrap = inject(
            window_loss(out, 3), out.state, leaf, model, applied, discount, unit
        )
        assert (bootstrap is None) == (applied == discount)
        assert not end.requires_grad and torch.equal(end, state_vector(out.state))
        loss.backward()
        return target(leaf, bootstrap, unit)

    for discount in (1.0, 0.4):
        targets = [second_window(applied, discount, 1.0) for applied in (discount, 0.3, 0.0)]
        for other in targets[1:]:
            torch.testing.assert_close(other, targets[0], rtol=1e-12, atol=1e-12)
    # The target is unit times the window's own gradient plus the discounted J^T M(h_T).
    bootstrap = second_window(0.0, 1.0, 1.0) - second_window(0.0, 0.0, 1.0)
    own = second_window(0.0, 0.0, 1.0)
    torch.testing.assert_close(second_window(0.0, 1.0, 4.0), 4 * own + bootstrap)
    torch.testing.assert_close(second_window(1.0, 1.0, 4.0), 4 * own + bootstrap)


def test_cosine_of_gradients():
    a = torch.randn(3, 4, dtype=torch.float64)
    assert cosine(a, 2 * a).item() == pytest.approx(1.0)
    assert cosine(a, -a).item() == pytest.approx(-1.0)
    assert cosine(a, torch.zeros_like(a)).item() == 0.0


# --------------------------------------------------------------------------- the module
def _batch(dtype=torch.float64):
    """Copy sequences of lengths 4, 2 and 3 (9, 5 and 7 steps) padded to 9."""
    rng = np.random.default_rng(0)
    batch = pad_examples([copy_example(rng, 8, n) for n in (4, 2, 3)], tokens=False)
    return batch._replace(inputs=batch.inputs.to(dtype), targets=batch.targets.to(dtype))


class _OneBatch(L.LightningDataModule):
    def __init__(self, batch, repeat=1):
        super().__init__()
        self.batch, self.repeat = batch, repeat

    def train_dataloader(self):
        return torch.utils.data.DataLoader([self.batch] * self.repeat, batch_size=None)


class _Recorder(torch.optim.SGD):
    """SGD with learning rate 0 that adds up every gradient it is stepped with."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.sums = None

    def step(self, closure=None):
        if closure is not None:  # automatic optimisation: the closure runs the backward pass
            with torch.enable_grad():
                closure()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                 for g in self.param_groups for p in g["params"]]  # fmt: skip
        self.sums = (
            grads if self.sums is None else [a + b for a, b in zip(self.sums, grads, strict=True)]
        )
        return super().step()


class _Oracle(torch.nn.Module):
    """A 'gradient model' that returns the true future gradient of each window end."""

    def __init__(self, ends, gradients):
        super().__init__()
        self.ends, self.gradients = ends, gradients
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, vector):
        for end, gradient in zip(self.ends, self.gradients, strict=True):
            if torch.equal(end, vector):
                return gradient + 0 * self.dummy
        raise AssertionError("an end state the oracle has not seen")


def _module(batch, **options):
    torch.manual_seed(0)
    controller = LSTMController(batch.inputs.shape[-1], 8, Register(7, rewrite_penalty=0.5),
                                [Cache(3, 4)])  # fmt: skip
    return TieredModule(controller, gradient_clip_val=0.0, **options).to(batch.inputs.dtype)


def test_register_only_perfect_predictor_equals_full_bptt_in_the_module():
    batch = _batch()

    def module(**options):
        torch.manual_seed(0)
        controller = LSTMController(batch.inputs.shape[-1], 8, Register(7, rewrite_penalty=0.5))
        m = TieredModule(controller, gradient_clip_val=0.0, **options).double()
        m.optimizer_factory = _Recorder
        return m

    full = module()
    L.Trainer(max_steps=1, **QUIET).fit(full, _OneBatch(batch))
    windowed = module(tbptt_steps=2, synthetic_gradients=True, synthetic_check_every=0)

    def window_loss(out, start):
        window = type(batch)(*(t[:, start : start + 2] for t in batch))
        return windowed._window_loss(out, window, batch)[0]

    ends, true = future_gradients(windowed.controller, batch.inputs, 2, window_loss)
    unit = batch.mask.sum() * batch.targets.shape[-1]  # M predicts the summed loss's gradient
    windowed.synthetic = _Oracle(ends, [g * unit for g in true])
    trainer = L.Trainer(max_steps=5, **QUIET)
    trainer.fit(windowed, _OneBatch(batch))
    assert trainer.global_step == 5  # M's optimiser steps are not counted
    for got, want in zip(trainer.optimizers[0].sums, full.trainer.optimizers[0].sums, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    plain = module(tbptt_steps=2)  # plain truncation: the future's share is lost
    L.Trainer(max_steps=5, **QUIET).fit(plain, _OneBatch(batch))
    sums = zip(plain.trainer.optimizers[0].sums, full.trainer.optimizers[0].sums, strict=True)
    assert any(not torch.allclose(a, b) for a, b in sums)


def test_warm_up_trains_the_gradient_model_without_changing_the_controllers_training():
    batch = _batch()
    off = _module(batch, tbptt_steps=3)
    L.Trainer(max_steps=9, **QUIET).fit(off, _OneBatch(batch, repeat=3))
    warm = _module(
        batch,
        tbptt_steps=3,
        synthetic_gradients=True,
        synthetic_warmup=100,
        synthetic_check_every=2,
    )  # at batch 0 M is still zero: no cosine yet
    trainer = L.Trainer(max_steps=9, **QUIET)
    trainer.fit(warm, _OneBatch(batch, repeat=3))
    for (name, a), b in zip(off.controller.state_dict().items(),
                            warm.controller.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15, msg=name)  # summation order
    assert warm.synthetic.net[-1].weight.abs().sum() > 0  # M trained all along
    assert {"train/sg/loss", "train/sg/cosine"} <= set(trainer.callback_metrics)
    on = _module(batch, tbptt_steps=3, synthetic_gradients=True)
    L.Trainer(max_steps=9, **QUIET).fit(on, _OneBatch(batch, repeat=3))
    pairs = zip(off.controller.parameters(), on.controller.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_bad_synthetic_options_are_named():
    batch = _batch()
    with pytest.raises(ValueError, match="synthetic_gradients=True needs tbptt_steps"):
        _module(batch, synthetic_gradients=True)
    with pytest.raises(ValueError, match="synthetic_warmup"):
        _module(batch, tbptt_steps=2, synthetic_gradients=True, synthetic_warmup=-1)
    with pytest.raises(ValueError, match="synthetic_scale"):
        _module(batch, tbptt_steps=2, synthetic_gradients=True, synthetic_scale=-0.5)
    with pytest.raises(ValueError, match="synthetic_lr must be a finite number > 0, got 0.0"):
        _module(batch, tbptt_steps=2, synthetic_gradients=True, synthetic_lr=0.0)
    assert _module(batch, tbptt_steps=2).synthetic is None  # off: no gradient model


def test_checkpoints_round_trip_the_gradient_model_and_its_optimizer(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    batch = _batch(torch.float32)
    module = _module(batch, tbptt_steps=3, synthetic_gradients=True, synthetic_hidden=5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = L.Trainer(max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoint])  # fmt: skip
    trainer.fit(module, _OneBatch(batch, repeat=2))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert len(saved["optimizer_states"]) == 2  # the controller's and M's
    keys = [k for k in saved["state_dict"] if k.startswith("synthetic.")]
    assert keys and all(k in module.state_dict() for k in keys)
    assert saved["optimizer_states"][1]["param_groups"][0]["lr"] == 1e-4  # synthetic_lr
    loaded = TieredModule.load_from_checkpoint(
        tmp_path / "last.ckpt", controller=_module(batch).controller
    )
    for key in keys:
        torch.testing.assert_close(loaded.state_dict()[key], module.state_dict()[key])
    resumed = L.Trainer(max_steps=9, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    resumed.fit(loaded, _OneBatch(batch, repeat=2), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 9


def test_finished_sequences_get_no_synthetic_gradient_and_do_not_train_m():
    controller = _controller()
    model = SyntheticGradient(vector_size(controller)).double()
    torch.nn.init.normal_(model.net[-1].weight)
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        first = controller(x[:, :3])
    alive = torch.tensor([True, False, True])
    state, leaf = start_state(first.state)
    out = controller(x[:, 3:], state)
    term, _, _ = inject(x.new_zeros(()), out.state, leaf, model, 1.0, 1.0, 1.0, alive)
    term.backward()  # the synthetic term alone: its gradient reaches only the live rows
    assert leaf.grad[1].abs().sum() == 0 and leaf.grad[0].abs().sum() > 0
    prediction, goal = torch.randn(3, 4), torch.randn(3, 4)
    kept = predictor_loss(prediction, goal, alive)
    torch.testing.assert_close(kept, (prediction - goal).pow(2).sum(-1)[alive].mean())


def test_unsupported_setups_are_refused():
    from types import SimpleNamespace

    batch = _batch()
    module = _module(batch, tbptt_steps=2, synthetic_gradients=True)
    module._trainer = SimpleNamespace(world_size=2, precision="32-true")
    with pytest.raises(ValueError, match="world_size=2; train with devices=1"):
        module.configure_optimizers()
    module._trainer = SimpleNamespace(world_size=1, precision="16-mixed")
    with pytest.raises(ValueError, match="precision='16-mixed'"):
        module.configure_optimizers()


def test_a_resume_at_an_epoch_end_continues_m_and_its_optimizer_exactly(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    batch = _batch(torch.float32)

    def fit(epochs, folder=None, resume=None):
        module = _module(batch, tbptt_steps=3, synthetic_gradients=True, synthetic_hidden=4)
        callbacks = [ModelCheckpoint(dirpath=folder, save_last=True)] if folder else []
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=callbacks,
                            enable_checkpointing=folder is not None)  # fmt: skip
        trainer.fit(module, _OneBatch(batch, repeat=2), ckpt_path=resume)
        return module, trainer

    straight, s_trainer = fit(4)
    fit(2, folder=tmp_path)
    resumed, r_trainer = fit(4, resume=tmp_path / "last.ckpt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    s_state = s_trainer.optimizers[1].state_dict()["state"]
    r_state = r_trainer.optimizers[1].state_dict()["state"]
    assert s_state and s_state.keys() == r_state.keys()
    for key in s_state:
        torch.testing.assert_close(s_state[key]["exp_avg"], r_state[key]["exp_avg"], rtol=0,
                                   atol=0)  # fmt: skip
