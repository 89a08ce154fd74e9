"""PonderNetController: the halting distribution, the KL to the geometric prior, the expected
loss, the unrolling limit, and equality with the LSTMController at one step."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from tiered import TieredModule
from tiered.controllers import LSTMController, PonderNetController
from tiered.controllers.ponder_net import geometric_kl, halting_distribution
from tiered.module import expected_loss_sum, masked_loss_sum
from tiered.tasks import Parity
from tiered.tiers import RAM, Cache, Register

D = torch.float64


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_the_halting_distribution_is_the_paper_s_and_sums_to_one():
    lambdas = [[0.5, 0.4, 0.9, 0.3], [0.2, 0.2, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1]]
    logits = torch.tensor([[_logit(v) for v in row] for row in lambdas], dtype=D)
    last = torch.tensor([2, 3, 0])  # N = 3, 4, 1
    weights, log_weights = halting_distribution(logits, last)
    expected = [
        [0.5, 0.5 * 0.4, 0.5 * 0.6, 0.0],  # the last step takes the mass left: 0.3
        [0.2, 0.8 * 0.2, 0.64 * 0.2, 0.8**3],
        [1.0, 0.0, 0.0, 0.0],  # one step: all the mass
    ]
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=D))
    taken = torch.arange(4)[None, :] <= last[:, None]
    torch.testing.assert_close(log_weights[taken], weights[taken].log())
    assert (log_weights[~taken] == 0).all() and (weights[~taken] == 0).all()


def test_the_kl_to_the_truncated_geometric_prior():
    logits = torch.tensor([[_logit(0.5), _logit(0.4), _logit(0.9)]], dtype=D)
    last = torch.tensor([2])
    weights, log_weights = halting_distribution(logits, last)
    prior = 0.25
    q = [prior, (1 - prior) * prior, (1 - prior) ** 2]  # truncated at N = 3 as p is
    p = [0.5, 0.2, 0.3]
    by_hand = sum(pn * math.log(pn / qn) for pn, qn in zip(p, q, strict=True))
    kl = geometric_kl(weights, log_weights, last, prior)
    assert kl.item() == pytest.approx(by_hand, rel=1e-12)
    # halting chances equal to the prior's at every step: p is the prior, the KL is zero
    same = torch.full((2, 5), _logit(prior), dtype=D)
    w, lw = halting_distribution(same, torch.tensor([4, 2]))
    torch.testing.assert_close(geometric_kl(w, lw, torch.tensor([4, 2]), prior),
                               torch.zeros(2, dtype=D), rtol=0, atol=1e-14)  # fmt: skip
    # and never negative
    torch.manual_seed(0)
    random = torch.randn(6, 5, dtype=D) * 3
    last = torch.tensor([0, 1, 2, 3, 4, 4])
    w, lw = halting_distribution(random, last)
    assert (geometric_kl(w, lw, last, 0.1) >= -1e-12).all()


def test_the_expected_loss_weights_each_step_s_loss_and_is_the_plain_loss_at_one_step():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, dtype=D)  # B T M O
    weights = torch.softmax(torch.randn(2, 3, 4, dtype=D), -1)
    bits = torch.randint(0, 2, (2, 3, 5)).to(D)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    by_hand = sum(
        weights[b, t, n] * masked_loss_sum(logits[b : b + 1, t : t + 1, n], bits[b : b + 1,
                                           t : t + 1], mask[b : b + 1, t : t + 1], "bits")
        for b in range(2) for t in range(3) for n in range(4)
    )  # fmt: skip
    ours = expected_loss_sum(logits, weights, bits, mask, "bits")
    assert ours.item() == pytest.approx(by_hand.item(), rel=1e-12)
    classes = torch.randint(0, 5, (2, 3))
    one = torch.ones(2, 3, 1, dtype=D)
    for kind, targets in (("bits", bits), ("tokens", classes)):
        torch.testing.assert_close(
            expected_loss_sum(logits[:, :, :1], one, targets, mask, kind),
            masked_loss_sum(logits[:, :, 0], targets, mask, kind), rtol=1e-14, atol=0,
        )  # fmt: skip
    tokens = expected_loss_sum(logits, weights, classes, mask, "tokens")
    by_hand = sum(
        weights[b, t, n] * torch.nn.functional.cross_entropy(logits[b, t, n], classes[b, t])
        for b in range(2) for t in range(3) for n in range(4) if mask[b, t]
    )  # fmt: skip
    assert tokens.item() == pytest.approx(by_hand.item(), rel=1e-12)


def _net(max_steps=4, bias=0.0, tiers=(), seed=0, epsilon=0.01):
    torch.manual_seed(seed)
    net = PonderNetController(5, 3, Register(7), list(tiers), max_steps=max_steps,
                              halting_bias=bias, epsilon=epsilon)  # fmt: skip
    return net.double()


def test_unrolling_stops_when_the_chance_of_going_on_is_below_epsilon():
    x = torch.randn(2, 4, 5, dtype=D)
    sure = _net(max_steps=6, bias=20.0)(x)  # lambda ~ 1: halts at the first step
    torch.testing.assert_close(sure.aux["ponder"].write_mass, torch.ones(2, 4, dtype=D))
    never = _net(max_steps=6, bias=-20.0)(x)  # lambda ~ 0: the limit, the mass at step 6
    torch.testing.assert_close(never.ponder.weights[..., -1], torch.ones(2, 4, dtype=D))
    # lambda = 1/2 everywhere (zero weights): (1/2)^n <= 0.1 first at n = 4
    half = _net(max_steps=9, epsilon=0.1)
    with torch.no_grad():
        half.halt.weight.zero_()
    out = half(x)
    expected = torch.tensor([0.5, 0.25, 0.125, 0.125] + [0.0] * 5, dtype=D)
    torch.testing.assert_close(out.ponder.weights, expected.expand(2, 4, 9))
    torch.testing.assert_close(out.aux["ponder"].write_mass,
                               torch.full((2, 4), 0.5 + 0.5 + 0.375 + 0.5, dtype=D))  # fmt: skip
    assert out.state.register.clock.tolist() == [16, 16]  # 4 inputs of 4 internal steps
    # the output is y at the median halting step (the first: p^1 = 1/2), not a mean
    torch.testing.assert_close(out.output, out.ponder.outputs[:, :, 0])


def test_one_step_equals_an_lstm_controller_with_the_first_step_flag_as_input():
    net = _net(max_steps=1, tiers=[Cache(3, 4), RAM(5, 4, sparse=False)])
    torch.manual_seed(1)
    plain = LSTMController(6, 3, Register(7), [Cache(3, 4), RAM(5, 4, sparse=False)]).double()
    plain.load_state_dict(net.core.state_dict())
    x = torch.randn(3, 5, 5, dtype=D, requires_grad=True)
    ours = net(x)
    theirs = plain(torch.cat([x, torch.ones(3, 5, 1, dtype=D)], dim=-1))
    torch.testing.assert_close(ours.output, theirs.output, rtol=0, atol=0)
    torch.testing.assert_close(ours.ponder.outputs[:, :, 0], theirs.output, rtol=0, atol=0)
    torch.testing.assert_close(ours.state.tiers[1].memory, theirs.state.tiers[1].memory,
                               rtol=0, atol=0)  # fmt: skip
    assert (ours.aux["ponder"].rewrite == 0).all()  # one step: p = q = [1], no KL
    targets = torch.randint(0, 2, (3, 5, 3)).to(D)
    mask = torch.ones(3, 5, dtype=torch.bool)
    expected = expected_loss_sum(ours.ponder.outputs, ours.ponder.weights, targets, mask, "bits")
    plain_loss = masked_loss_sum(theirs.output, targets, mask, "bits")
    torch.testing.assert_close(expected, plain_loss, rtol=1e-15, atol=0)
    (g_ours,) = torch.autograd.grad(expected, x)
    (g_theirs,) = torch.autograd.grad(plain_loss, x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-13, atol=0)


def test_ponder_net_gradients_in_float64():
    net = _net(max_steps=3, tiers=[RAM(4, 3, sparse=False)], seed=2, epsilon=1e-12)
    x = torch.randn(2, 3, 5, dtype=D, requires_grad=True)
    targets = torch.randint(0, 2, (2, 3, 3)).to(D)
    mask = torch.ones(2, 3, dtype=torch.bool)

    def run(inputs):  # every sequence takes the 3 steps: no unrolling decision to cross
        out = net(inputs)
        loss = expected_loss_sum(out.ponder.outputs, out.ponder.weights, targets, mask, "bits")
        return loss, out.aux["ponder"].penalty

    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-6)


def test_a_batch_ponders_each_sequence_as_it_would_alone():
    net = _net(max_steps=5, tiers=[Cache(3, 4), RAM(5, 4, sparse=False)], seed=4, epsilon=0.05)
    with torch.no_grad():
        net.halt.weight.mul_(8.0)  # sequences halt at different steps
    x = torch.randn(4, 3, 5, dtype=D)
    together = net(x)
    taken = (together.ponder.weights > 0).sum(-1)
    assert len(set(taken.flatten().tolist())) >= 2
    for b in range(4):
        alone = net(x[b : b + 1])
        torch.testing.assert_close(alone.output[0], together.output[b], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(alone.ponder.weights[0], together.ponder.weights[b])
        torch.testing.assert_close(alone.state.tiers[1].memory[0],
                                   together.state.tiers[1].memory[b], rtol=1e-12,
                                   atol=1e-12)  # fmt: skip


def test_a_module_trains_ponder_net_on_parity_with_the_expected_loss_and_the_kl():
    task = Parity(size=8, nonzero=(1, 8), eval_nonzero=(1, 8), batch_size=4, train_batches=3,
                  val_batches=1)  # fmt: skip
    torch.manual_seed(0)
    controller = PonderNetController(task.input_size, task.output_size, Register(6),
                                     max_steps=3, beta=0.5)  # fmt: skip
    module = TieredModule(controller)
    batch = task.make_batch("val", 0)
    out = controller(batch.inputs)
    total, _, penalties = module._losses(out, batch)
    by_hand = expected_loss_sum(out.ponder.outputs, out.ponder.weights, batch.targets,
                                batch.mask, "bits")  # fmt: skip
    torch.testing.assert_close(total, by_hand)
    assert total != masked_loss_sum(out.output, batch.targets, batch.mask, "bits")
    torch.testing.assert_close(penalties["ponder"], 0.5 * out.aux["ponder"].rewrite.sum())
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, task)
    metrics = trainer.callback_metrics
    assert 1.0 <= float(metrics["val/ponder_steps"]) <= 3.0
    assert float(metrics["val/penalty/ponder"]) >= 0.0 and "val/bit_errors" in metrics


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"prior must be in \(0, 1\).*got 1"):
        PonderNetController(5, 3, Register(7), prior=1)
    with pytest.raises(ValueError, match=r"prior must be in \(0, 1\).*got 0.0"):
        PonderNetController(5, 3, Register(7), prior=0.0)
    with pytest.raises(ValueError, match="beta"):
        PonderNetController(5, 3, Register(7), beta=-1.0)
    with pytest.raises(ValueError, match="epsilon must be above 0"):
        PonderNetController(5, 3, Register(7), epsilon=0.0)


def test_diagnostics_name_ponder_net():
    from tiered.diagnostics import draw, summary, trace

    record = trace(_net(max_steps=3, tiers=[RAM(5, 4, sparse=False)]),
                   torch.randn(2, 4, 5, dtype=D))[0]  # fmt: skip
    assert record["ponder"].kind == "PonderNet"
    assert "ponder (PonderNet): internal steps per input" in summary(record)
    titles = [ax.get_title() for ax in draw(record).axes]
    assert "PonderNet: internal steps pondered per input (expected)" in titles
