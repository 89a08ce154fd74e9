"""Exact kNN search: the blocked, norm-cached fast path against a plain float64 reference."""

from __future__ import annotations

import torch

from tiered.knn import ExactKNN, exact_search, normalize_rows


def reference_search(memory, written, queries, k):
    """Cosine top-k over the written rows in float64, all at once; -1 pads missing ones."""
    memory, queries = memory.double(), queries.double()
    scores = torch.einsum("bnw,bhw->bhn", normalize_rows(memory), normalize_rows(queries))
    scores = scores.masked_fill(~written.unsqueeze(1), float("-inf"))
    top, index = torch.topk(scores, min(k, memory.shape[1]), dim=-1)
    index = index.masked_fill(torch.isinf(top), -1)
    pad = index.new_full((*index.shape[:-1], k - index.shape[-1]), -1)
    return torch.cat([index, pad], dim=-1)


def random_memory(batch=3, slots=37, width=5, written_fraction=0.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    memory = torch.randn(batch, slots, width, generator=generator)
    written = torch.rand(batch, slots, generator=generator) < written_fraction
    queries = torch.randn(batch, 4, width, generator=generator)
    return memory, written, queries


def test_blocked_search_equals_the_float64_reference_for_every_block_size():
    memory, written, queries = random_memory()
    expected = reference_search(memory, written, queries, 6)
    for block_scores in (1, 7, 12, 13, 100, 1 << 22):  # 1 row per block up to all rows
        got = exact_search(memory, written, queries, 6, block_scores=block_scores)
        assert torch.equal(got, expected), block_scores


def test_search_pads_with_minus_one_when_fewer_rows_are_written_than_k():
    memory, written, queries = random_memory(slots=11)
    written[:] = False
    written[0, [2, 9]] = True
    got = exact_search(memory, written, queries, 5, block_scores=13)
    assert torch.equal(got, reference_search(memory, written, queries, 5))
    assert (got[0, :, :2] >= 0).all() and (got[0, :, 2:] == -1).all()
    assert (got[1:] == -1).all()
    # k above the slot count
    assert got.shape == (3, 4, 5)
    assert exact_search(memory, written, queries, 20).shape == (3, 4, 20)


def test_zero_memory_and_zero_queries_give_no_nan_and_valid_rows():
    memory = torch.zeros(2, 9, 3)
    written = torch.ones(2, 9, dtype=torch.bool)
    got = exact_search(memory, written, torch.zeros(2, 1, 3), 4, block_scores=3)
    assert ((got >= 0) & (got < 9)).all()


def test_cached_norms_follow_the_rows_that_change():
    memory, written, queries = random_memory(slots=41, width=7)
    index = ExactKNN()
    index.rebuild(memory, written)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        rows = torch.randint(0, 41, (3, 6), generator=generator)
        valid = torch.rand(3, 6, generator=generator) < 0.7
        # a row listed twice, once invalid (as write_weights_over pads): the valid one counts
        rows[:, -1], valid[:, -1] = rows[:, 0], False
        valid[:, 0] = True
        flat = rows + torch.arange(3)[:, None] * 41
        new = 3 * torch.randn(3, 6, 7, generator=generator)
        memory.view(-1, 7)[flat[valid]] = new[valid]
        written.view(-1)[flat[valid]] = True
        index.update(memory, rows, valid)
        assert torch.allclose(index.norms[written], memory.norm(dim=-1)[written])
        assert torch.equal(
            index.search(memory, written, queries, 8), reference_search(memory, written, queries, 8)
        )
