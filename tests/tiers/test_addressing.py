"""Property tests for the addressing steps, in the style of DeepMind's addressing_test."""

from __future__ import annotations

import torch
from torch.autograd import gradcheck

from tiered.tiers import addressing

B, N, W, R, H = 7, 13, 5, 3, 2


def test_cosine_similarity_matches_hand_computed_and_is_zero_for_zero_vectors():
    memory = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    keys = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)
    sim = addressing.cosine_similarity(memory, keys)
    expected = torch.tensor([[[1.0, 2.0**-0.5, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=0)


def test_content_weights_are_a_softmax_over_slots():
    memory = torch.randn(B, N, W, dtype=torch.float64)
    keys = torch.randn(B, H, W, dtype=torch.float64)
    strengths = addressing.oneplus(torch.randn(B, H, dtype=torch.float64))
    weights = addressing.content_weights(memory, keys, strengths)
    assert weights.shape == (B, H, N)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, dtype=torch.float64))
    sim = addressing.cosine_similarity(memory, keys)
    expected = torch.softmax(strengths.unsqueeze(-1) * sim, dim=-1)
    torch.testing.assert_close(weights, expected)


def test_larger_strength_sharpens_content_weights_towards_the_best_match():
    memory = torch.randn(B, N, W, dtype=torch.float64)
    keys = memory[:, :1] + 0.1 * torch.randn(B, 1, W, dtype=torch.float64)  # near slot 0
    weak = addressing.content_weights(memory, keys, torch.full((B, 1), 1.0, dtype=torch.float64))
    strong = addressing.content_weights(memory, keys, torch.full((B, 1), 50.0, dtype=torch.float64))
    best = addressing.cosine_similarity(memory, keys).argmax(-1, keepdim=True)  # (B, 1, 1)
    assert (strong.gather(-1, best) > weak.gather(-1, best)).all()

    def entropy(p):
        return -(p * p.clamp_min(1e-300).log()).sum(-1)

    assert (entropy(strong) < entropy(weak)).all()


def test_oneplus_is_at_least_one():
    x = torch.linspace(-50, 50, 101)
    assert (addressing.oneplus(x) >= 1.0).all()


def test_erase_and_write_matches_a_hand_computed_case():
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)  # (1, 2, 2)
    w = torch.tensor([[[0.5, 0.0]]], dtype=torch.float64)  # (1, 1, 2): half of slot 0
    erase = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # erase column 0 only
    add = torch.tensor([[[10.0, 20.0]]], dtype=torch.float64)
    new, erased = addressing.erase_and_write(memory, w, erase, add)
    # slot 0: [1 * (1 - 0.5), 2 * 1] + 0.5 * [10, 20] = [5.5, 12]; slot 1 untouched.
    expected = torch.tensor([[[5.5, 12.0], [3.0, 4.0]]], dtype=torch.float64)
    torch.testing.assert_close(new, expected)
    torch.testing.assert_close(erased, torch.tensor([0.5], dtype=torch.float64))


def test_erase_and_write_with_two_heads_multiplies_the_erasures():
    memory = torch.ones(1, 1, 1, dtype=torch.float64)
    w = torch.tensor([[[0.5], [0.5]]], dtype=torch.float64)  # (1, 2, 1)
    erase = torch.ones(1, 2, 1, dtype=torch.float64)
    add = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    new, erased = addressing.erase_and_write(memory, w, erase, add)
    # keep (1 - .5)(1 - .5) = .25, then add .5 * 1 + .5 * 2 = 1.5
    torch.testing.assert_close(new, torch.tensor([[[1.75]]], dtype=torch.float64))
    torch.testing.assert_close(erased, torch.tensor([0.75], dtype=torch.float64))


def test_no_write_leaves_memory_unchanged_and_erases_nothing():
    memory = torch.randn(B, N, W, dtype=torch.float64)
    new, erased = addressing.erase_and_write(
        memory,
        torch.zeros(B, H, N, dtype=torch.float64),
        torch.rand(B, H, W, dtype=torch.float64),
        torch.randn(B, H, W, dtype=torch.float64),
    )
    assert torch.equal(new, memory)
    assert torch.equal(erased, torch.zeros(B, dtype=torch.float64))


def test_retention_is_one_without_free_gates_and_frees_read_slots():
    prev_read = torch.zeros(1, 1, 3, dtype=torch.float64)
    prev_read[0, 0, 1] = 1.0
    kept = addressing.retention(prev_read, torch.zeros(1, 1, dtype=torch.float64))
    torch.testing.assert_close(kept, torch.ones(1, 3, dtype=torch.float64))
    freed = addressing.retention(prev_read, torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(freed, torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64))


def test_update_usage_matches_hand_computed_case_and_stays_in_unit_interval():
    prev_usage = torch.tensor([[0.5, 0.0, 1.0]], dtype=torch.float64)
    prev_write = torch.tensor([[[0.5, 1.0, 0.0]]], dtype=torch.float64)
    prev_read = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64)
    free = torch.tensor([[0.5]], dtype=torch.float64)
    usage = addressing.update_usage(prev_usage, prev_write, prev_read, free)
    # slot 0: .5 + .5 - .25 = .75; slot 1: 1; slot 2: 1 * (1 - .5) = .5
    torch.testing.assert_close(usage, torch.tensor([[0.75, 1.0, 0.5]], dtype=torch.float64))
    random_usage = addressing.update_usage(
        torch.rand(B, N, dtype=torch.float64),
        torch.rand(B, H, N, dtype=torch.float64).softmax(-1),
        torch.rand(B, R, N, dtype=torch.float64).softmax(-1),
        torch.rand(B, R, dtype=torch.float64),
    )
    assert ((random_usage >= 0) & (random_usage <= 1)).all()


def test_allocation_gives_the_least_used_slot_the_most_weight():
    usage = torch.rand(B, N, dtype=torch.float64)
    allocation = addressing.allocation_weights(usage)
    assert allocation.shape == (B, N)
    assert (allocation >= 0).all()
    assert (allocation.sum(-1) <= 1 + 1e-12).all()
    assert torch.equal(allocation.argmax(-1), usage.argmin(-1))
    # weight falls as usage rises: order by usage and the allocation is non-increasing
    order = usage.argsort(-1)
    assert (allocation.gather(-1, order).diff(dim=-1) <= 1e-12).all()


def test_allocation_matches_a_loop_over_sorted_slots():
    usage = torch.tensor([[0.4, 0.1, 0.9, 0.6]], dtype=torch.float64)
    u = addressing.EPSILON + (1 - addressing.EPSILON) * usage[0]
    expected = torch.zeros(4, dtype=torch.float64)
    prod = 1.0
    for j in u.argsort().tolist():
        expected[j] = (1 - u[j]) * prod
        prod = prod * u[j]
    torch.testing.assert_close(addressing.allocation_weights(usage)[0], expected)


def test_allocation_of_fully_used_memory_is_near_zero_and_of_empty_memory_picks_one_slot():
    full = addressing.allocation_weights(torch.ones(B, N, dtype=torch.float64))
    assert (full.sum(-1) < 1e-5).all()
    empty = addressing.allocation_weights(torch.zeros(B, N, dtype=torch.float64))
    torch.testing.assert_close(
        empty.max(-1).values, torch.ones(B, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_several_write_heads_allocate_different_slots():
    usage = torch.rand(B, N, dtype=torch.float64)
    gates = torch.ones(B, H, dtype=torch.float64)
    allocation = addressing.write_allocation_weights(usage, gates)
    assert allocation.shape == (B, H, N)
    first, second = allocation[:, 0].argmax(-1), allocation[:, 1].argmax(-1)
    assert (first != second).all()
    assert torch.equal(first, usage.argmin(-1))


def test_write_weights_sum_to_at_most_one_and_vanish_with_a_closed_gate():
    allocation = addressing.allocation_weights(torch.rand(B, N, dtype=torch.float64))
    allocation = allocation.unsqueeze(1).expand(B, H, N)
    content = torch.randn(B, H, N, dtype=torch.float64).softmax(-1)
    gates = torch.rand(B, H, dtype=torch.float64)
    w = addressing.write_weights(allocation, content, gates, torch.rand(B, H, dtype=torch.float64))
    assert (w >= 0).all() and (w.sum(-1) <= 1 + 1e-12).all()
    closed = addressing.write_weights(allocation, content, gates, torch.zeros(B, H).double())
    assert torch.equal(closed, torch.zeros_like(closed))


def test_zero_memory_and_zero_keys_give_finite_outputs_and_gradients():
    memory = torch.zeros(B, N, W, dtype=torch.float64, requires_grad=True)
    keys = torch.zeros(B, R, W, dtype=torch.float64, requires_grad=True)
    strengths = torch.ones(B, R, dtype=torch.float64, requires_grad=True)
    weights = addressing.content_weights(memory, keys, strengths)
    new, erased = addressing.erase_and_write(
        memory, weights[:, :H], keys[:, :H].sigmoid(), keys[:, :H]
    )
    allocation = addressing.allocation_weights(torch.zeros(B, N, dtype=torch.float64))
    loss = weights.sum() + new.sum() + erased.sum() + allocation.sum()
    loss.backward()
    for tensor in (weights, new, erased, allocation, memory.grad, keys.grad, strengths.grad):
        assert torch.isfinite(tensor).all()


def test_gradcheck_content_weights_and_erase_and_write():
    memory = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    strengths = (1 + torch.rand(3, 2, dtype=torch.float64)).requires_grad_()
    assert gradcheck(addressing.content_weights, (memory, keys, strengths))
    w = torch.rand(3, 2, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    erase = torch.rand(3, 2, 4, dtype=torch.float64, requires_grad=True)
    add = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(addressing.erase_and_write, (memory, w, erase, add))


def test_gradcheck_usage_and_allocation_away_from_ties():
    usage = torch.tensor([[0.1, 0.5, 0.3, 0.8, 0.65]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(addressing.allocation_weights, (usage,))
    gates = torch.rand(1, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(addressing.write_allocation_weights, (usage, gates))
    prev_write = torch.rand(1, 2, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    prev_read = torch.rand(1, 3, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    free = torch.rand(1, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(addressing.update_usage, (usage, prev_write, prev_read, free))


# The hand-written backward passes against their autograd references.


def _grads(fn, inputs, grads):
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    both = {"allow_unused": True, "materialize_grads": True}
    return out, torch.autograd.grad(out, inputs, grads[: len(out)], **both)


def test_overwrite_equals_its_reference_in_values_and_gradients():
    g = torch.Generator().manual_seed(7)
    for heads in (1, 2, 3):
        memory = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
        weights = (torch.rand(3, heads, 7, generator=g, dtype=torch.float64) / 7).requires_grad_()
        erase = torch.rand(3, heads, 5, generator=g, dtype=torch.float64, requires_grad=True)
        add = torch.randn(3, heads, 5, generator=g, dtype=torch.float64, requires_grad=True)
        inputs = (memory, weights, erase, add)
        grads = [torch.randn(3, 7, 5, generator=g, dtype=torch.float64) for _ in range(2)]
        got, got_grads = _grads(addressing.overwrite, inputs, grads)
        ref, ref_grads = _grads(addressing.overwrite_reference, inputs, grads)
        for a, b in zip(got + got_grads, ref + ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
        assert gradcheck(addressing.overwrite, inputs)
        # Only one of the two outputs used (the other's gradient is None in backward).
        both = {"allow_unused": True, "materialize_grads": True}
        for pick in (0, 1):
            got_one = torch.autograd.grad(addressing.overwrite(*inputs)[pick].sum(), inputs, **both)
            ref = addressing.overwrite_reference(*inputs)[pick].sum()
            ref_one = torch.autograd.grad(ref, inputs, **both)
            for a, b in zip(got_one, ref_one, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_content_weights_equal_their_reference_in_values_and_gradients():
    g = torch.Generator().manual_seed(8)
    memory = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(3, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    strengths = (1 + 3 * torch.rand(3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    inputs = (memory, keys, strengths)
    grads = [torch.randn(3, 2, 7, generator=g, dtype=torch.float64)]
    got, got_grads = _grads(addressing.content_weights, inputs, grads)
    ref, ref_grads = _grads(addressing.content_weights_reference, inputs, grads)
    for a, b in zip(got + got_grads, ref + ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    assert gradcheck(addressing.content_weights, inputs)
    # A zero memory and zero keys: uniform weights and finite gradients, as the reference.
    zeros = (torch.zeros_like(memory).requires_grad_(), torch.zeros_like(keys).requires_grad_(),
             strengths)  # fmt: skip
    got, got_grads = _grads(addressing.content_weights, zeros, grads)
    ref, ref_grads = _grads(addressing.content_weights_reference, zeros, grads)
    torch.testing.assert_close(got[0], torch.full_like(got[0], 1 / 7))
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
