"""Property tests for the temporal link matrix and precedence."""

from __future__ import annotations

import torch
from torch.autograd import gradcheck

from tiered.tiers import linkage

B, N, R, H = 7, 13, 3, 2


def _random_write_weights(*shape: int) -> torch.Tensor:
    weights = torch.rand(*shape, dtype=torch.float64)
    return 0.9 * weights / weights.sum(-1, keepdim=True)


def _run_links(steps: int = 6) -> torch.Tensor:
    link = torch.zeros(B, H, N, N, dtype=torch.float64)
    precedence = torch.zeros(B, H, N, dtype=torch.float64)
    for _ in range(steps):
        w = _random_write_weights(B, H, N)
        link = linkage.update_link(link, precedence, w)
        precedence = linkage.update_precedence(precedence, w)
    return link


def test_link_entries_lie_in_unit_interval_with_zero_diagonal():
    link = _run_links()
    assert ((link >= 0) & (link <= 1)).all()
    diagonal = torch.diagonal(link, dim1=-2, dim2=-1)
    assert torch.equal(diagonal, torch.zeros_like(diagonal))


def test_link_rows_and_columns_sum_to_at_most_one():
    link = _run_links()
    assert (link.sum(-1) <= 1 + 1e-12).all()
    assert (link.sum(-2) <= 1 + 1e-12).all()


def test_precedence_sums_to_at_most_one_and_follows_a_full_write():
    precedence = torch.zeros(1, 1, 4, dtype=torch.float64)
    for _ in range(3):
        precedence = linkage.update_precedence(precedence, _random_write_weights(1, 1, 4))
        assert (precedence.sum(-1) <= 1 + 1e-12).all()
    one_hot = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(linkage.update_precedence(precedence, one_hot), one_hot)


def test_hard_writes_in_order_are_followed_forward_and_backward():
    # Write slots 0, 2, 1 in that order with one-hot weights: 2 follows 0, 1 follows 2.
    n = 4
    link = torch.zeros(1, 1, n, n, dtype=torch.float64)
    precedence = torch.zeros(1, 1, n, dtype=torch.float64)
    for slot in (0, 2, 1):
        w = torch.zeros(1, 1, n, dtype=torch.float64)
        w[0, 0, slot] = 1.0
        link = linkage.update_link(link, precedence, w)
        precedence = linkage.update_precedence(precedence, w)
    assert link[0, 0, 2, 0] == 1.0 and link[0, 0, 1, 2] == 1.0
    at_slot_0 = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)  # (1, R=1, N)
    forward = linkage.directional_read_weights(link, at_slot_0, forward=True)
    assert forward.shape == (1, 1, 1, n)
    assert forward[0, 0, 0].argmax() == 2
    at_slot_1 = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
    backward = linkage.directional_read_weights(link, at_slot_1, forward=False)
    assert backward[0, 0, 0].argmax() == 2


def test_directional_read_weights_shapes_and_sums():
    link = _run_links()
    prev_read = torch.rand(B, R, N, dtype=torch.float64).softmax(-1)
    for forward in (True, False):
        weights = linkage.directional_read_weights(link, prev_read, forward=forward)
        assert weights.shape == (B, R, H, N)
        assert (weights >= 0).all() and (weights.sum(-1) <= 1 + 1e-12).all()


def test_gradcheck_link_update():
    link = _run_links(3)[:2, :, :5, :5].clone().requires_grad_()
    precedence = _random_write_weights(2, H, 5).requires_grad_()
    w = _random_write_weights(2, H, 5).requires_grad_()
    assert gradcheck(linkage.update_link, (link, precedence, w))
    prev_read = torch.rand(2, R, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    assert gradcheck(lambda L, r: linkage.directional_read_weights(L, r, True), (link, prev_read))
    assert gradcheck(lambda L, r: linkage.directional_read_weights(L, r, False), (link, prev_read))


def test_fast_link_update_matches_the_reference_in_values_and_gradients():
    link = _run_links(4).requires_grad_()
    precedence = _random_write_weights(B, H, N).requires_grad_()
    w = _random_write_weights(B, H, N).requires_grad_()
    fast = linkage.update_link(link, precedence, w)
    reference = linkage.update_link_reference(link, precedence, w)
    torch.testing.assert_close(fast, reference)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, (link, precedence, w), g)
    grads_reference = torch.autograd.grad(reference, (link, precedence, w), g)
    for a, b in zip(grads_fast, grads_reference, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_reference_link_update():
    link = _run_links(3)[:2, :, :5, :5].clone().requires_grad_()
    precedence = _random_write_weights(2, H, 5).requires_grad_()
    w = _random_write_weights(2, H, 5).requires_grad_()
    assert gradcheck(linkage.update_link_reference, (link, precedence, w))
