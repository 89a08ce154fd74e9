"""Sparse RAM: agreement with the dense reference, rollback, saved bytes, kNN backends."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from tiered import detach_state
from tiered.knn import exact_search, load_faiss, resolve_backend
from tiered.knn_faiss import FaissKNN
from tiered.tiers import RAM
from tiered.tiers.ram_sparse import SparseRAMState, unique_rows
from tiered.tiers.ram_sparse_reference import reference_initial_state, reference_step
from tiered.tiers.sparse_links import (
    LinkTables,
    follow_links,
    lazy_zeros,
    merge_entries,
    update_links,
    update_precedence,
)

B, N, W, R = 3, 7, 4, 2
needs_faiss = pytest.mark.skipif(load_faiss() is None, reason="faiss is not installed")


def run_sparse(ram: RAM, interfaces: torch.Tensor):
    state = ram.initial_state(interfaces.shape[0], dtype=interfaces.dtype)
    reads = []
    for t in range(interfaces.shape[1]):
        read, state, _ = ram(interfaces[:, t], state)
        reads.append(read)
    return torch.stack(reads, 1), state


def run_reference(ram: RAM, interfaces: torch.Tensor):
    state = reference_initial_state(
        interfaces.shape[0], ram.slots, ram.width, ram.read_heads, interfaces.dtype
    )
    reads = []
    for t in range(interfaces.shape[1]):
        read, state = reference_step(
            interfaces[:, t],
            state,
            width=ram.width,
            read_heads=ram.read_heads,
            k=ram.k,
            time=t,
            links=ram.links > 0,
        )
        reads.append(read)
    return torch.stack(reads, 1), state


def test_unique_rows_deduplicates_with_fixed_shapes():
    candidates = torch.tensor([[3, 1, 3, 0], [2, 2, 2, 2]])
    rows, inverse, valid = unique_rows(candidates)
    assert valid.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert rows[0, :3].tolist() == [0, 1, 3] and rows[1, 0] == 2
    assert torch.equal(rows.gather(1, inverse), candidates)


@pytest.mark.parametrize("links", [0, N], ids=["sam", "sparse_dnc"])
def test_with_k_equal_to_slots_sparse_matches_the_dense_reference_in_values_and_gradients(links):
    ram = RAM(N, W, read_heads=R, k=N, links=links, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 8, ram.interface_size, dtype=torch.float64, requires_grad=True)
    sparse_reads, sparse_state = run_sparse(ram, interfaces)
    reference_reads, reference_state = run_reference(ram, interfaces)
    torch.testing.assert_close(sparse_reads, reference_reads)
    torch.testing.assert_close(sparse_state.memory, reference_state.memory)
    assert torch.equal(sparse_state.last_access, reference_state.last_access)
    g = torch.randn_like(sparse_reads)
    (grad_sparse,) = torch.autograd.grad(sparse_reads, interfaces, g)
    (grad_reference,) = torch.autograd.grad(reference_reads, interfaces, g)
    torch.testing.assert_close(grad_sparse, grad_reference)


def test_with_small_k_sparse_matches_the_reference_restricted_to_k_rows():
    ram = RAM(11, W, read_heads=R, k=3, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 9, ram.interface_size, dtype=torch.float64, requires_grad=True)
    sparse_reads, _ = run_sparse(ram, interfaces)
    reference_reads, _ = run_reference(ram, interfaces)
    torch.testing.assert_close(sparse_reads, reference_reads)
    g = torch.randn_like(sparse_reads)
    grads = [torch.autograd.grad(r, interfaces, g)[0] for r in (sparse_reads, reference_reads)]
    torch.testing.assert_close(grads[0], grads[1])


def test_merge_entries_sums_equal_rows_keeps_the_largest_and_pads_with_zero():
    rows = torch.tensor([[3, 5, 3, 0, 7], [2, 2, 0, 0, 0]])
    values = torch.tensor([[0.1, 0.3, 0.25, 0.9, 0.0], [0.2, 0.5, 0.0, 0.0, 0.0]])
    ids, summed = merge_entries(rows, values, 3)
    assert ids.tolist() == [[3, 5, 0], [2, 0, 0]]  # row 3: 0.35; row 7 (0.0) and id 0 dropped
    torch.testing.assert_close(summed, torch.tensor([[0.35, 0.3, 0.0], [0.7, 0.0, 0.0]]))
    ids, _ = merge_entries(rows, values, 7)  # wider than the input: padded
    assert ids.shape == (2, 7) and ids[:, 3:].abs().sum() == 0


def _dense_from_tables(rows: torch.Tensor, values: torch.Tensor, transpose: bool):
    """A (B, N, N) matrix from (B, N, KL) lists of (row + 1, value)."""
    dense = torch.zeros(rows.shape[0], rows.shape[1], rows.shape[1] + 1, dtype=values.dtype)
    dense.scatter_add_(2, rows, values)
    dense = dense[..., 1:]
    return dense.transpose(1, 2) if transpose else dense


def test_link_tables_hold_the_dense_link_matrix_when_nothing_is_truncated():
    ram = RAM(N, W, read_heads=R, k=3, links=N, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 9, ram.interface_size, dtype=torch.float64)
    _, state = run_sparse(ram, interfaces)
    _, reference = run_reference(ram, interfaces)
    tables = state.tape.links
    assert reference.link.abs().sum() > 0
    torch.testing.assert_close(_dense_from_tables(tables.pred_rows, tables.pred, False),
                               reference.link)  # fmt: skip  # row i: predecessors j
    torch.testing.assert_close(_dense_from_tables(tables.succ_rows, tables.succ, True),
                               reference.link)  # fmt: skip  # row j: successors i
    precedence = torch.zeros(B, N + 1, dtype=torch.float64)
    precedence.scatter_add_(1, state.precedence_rows, state.precedence)
    torch.testing.assert_close(precedence[:, 1:], reference.precedence)


def test_truncated_link_lists_keep_at_most_links_entries_of_written_rows():
    ram = RAM(13, W, read_heads=R, k=3, links=2, sparse=True, index="exact").double()
    _, state = run_sparse(ram, torch.randn(B, 12, ram.interface_size, dtype=torch.float64))
    tables = state.tape.links
    for ids, values in ((tables.pred_rows, tables.pred), (tables.succ_rows, tables.succ)):
        assert ids.shape == (B, 13, 2) and ((ids > 0) == (values > 0)).all()
        linked = ids[ids > 0] - 1
        assert state.tape.written.any() and (values <= 1).all()
        assert all(state.tape.written[b, ids[b][ids[b] > 0] - 1].all() for b in range(B))
        assert linked.numel() > 0


def test_a_link_one_table_dropped_is_not_followed_after_its_row_is_rewritten():
    """KL = 1: write row 0, then rows 1 and 2 (0.6, 0.4), then row 0 again. The dense L has
    L[2, 0] = 0, but row 2's predecessor list still holds row 0 (the successor list of row 0
    kept only row 1, so rewriting row 0 could not reach it): it must not be followed."""
    tables = LinkTables.empty(1, 4, 1, torch.float64, "cpu")
    prec_rows, prec = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.float64)
    for rows, weights in (([0], [1.0]), ([1, 2], [0.6, 0.4]), ([0], [1.0])):
        rows, weights = torch.tensor([rows]), torch.tensor([weights], dtype=torch.float64)
        update_links(tables, prec_rows, prec, rows, weights)
        prec_rows, prec = update_precedence(prec_rows, prec, rows, weights, 1)
    assert tables.pred_rows[0, 2, 0] == 1  # the stale entry (row 0 + 1) is still stored
    read = torch.ones(1, 1, 1, dtype=torch.float64)
    rows, weights = follow_links(tables, torch.tensor([[[2]]]), read, forward=False)
    assert weights.sum() == 0 and (rows < 0).all()
    rows, weights = follow_links(tables, torch.tensor([[[1]]]), read, forward=False)
    assert weights.sum() == 0  # row 1's predecessor, row 0, was rewritten too


def test_cloned_link_tables_copy_only_rows_with_links():
    ram = RAM(64, 4, read_heads=1, k=2, links=3, sparse=True, index="exact").double()
    _, state = run_sparse(ram, torch.randn(2, 5, ram.interface_size, dtype=torch.float64))
    copy = state.links.clone()
    for a, b in zip(state.links, copy, strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with pytest.raises(ValueError, match="made with links=3, this RAM has links=0"):
        RAM(64, 4, read_heads=1, k=2, links=0, sparse=True, index="exact").rebuild_state(state)


def test_forward_and_backward_reads_follow_the_order_of_writes():
    """Write e0, e1, e2, e3 into fresh rows, find e1 by content, then step along the links."""
    ram = RAM(7, 4, read_heads=1, k=1, links=2, sparse=True, index="exact").double()
    big = 30.0

    def interface(key, write, add, mode):  # mode: 0 backward, 1 content, 2 forward
        modes = torch.full((3,), -big)
        modes[mode] = big
        parts = [key, torch.tensor([big]), torch.full((4,), big), add,
                 torch.tensor([big if write else -big]), torch.tensor([-big]), modes]  # fmt: skip
        return torch.cat(parts).double().unsqueeze(0)

    eye = torch.eye(4, dtype=torch.float64)
    state = ram.initial_state(1, dtype=torch.float64)
    for t in range(4):
        _, state, _ = ram(interface(eye[t], True, eye[t], 1), state)
    read, state_found, _ = ram(interface(eye[1], False, eye[0], 1), state)
    torch.testing.assert_close(read[0], eye[1], atol=1e-6, rtol=0)
    forward, _, _ = ram(interface(eye[1], False, eye[0], 2), state_found)
    torch.testing.assert_close(forward[0], eye[2], atol=1e-6, rtol=0)
    state_found = ram.rebuild_state(state_found)  # branch: read backward from the same place
    backward, _, _ = ram(interface(eye[1], False, eye[0], 0), state_found)
    torch.testing.assert_close(backward[0], eye[0], atol=1e-6, rtol=0)


def test_gradcheck_sparse_steps_with_writes():
    # Without links: with them the link values are built from detached write weights, so
    # finite differences see a dependence that backward deliberately leaves out; the
    # reference comparisons above and below check the links' gradients instead.
    ram = RAM(5, 3, read_heads=2, k=3, links=0, sparse=True, index="exact").double()
    interfaces = torch.randn(2, 4, ram.interface_size, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: run_sparse(ram, x)[0], (interfaces,))


def test_after_backward_the_buffer_holds_the_last_memory_again():
    ram = RAM(N, W, read_heads=R, k=3, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 6, ram.interface_size, dtype=torch.float64, requires_grad=True)
    reads, state = run_sparse(ram, interfaces)
    before = state.memory.clone()
    reads[:, :3].sum().backward()  # later steps unused: the rollback must still be right
    assert torch.equal(state.memory, before)
    reference_reads, _ = run_reference(ram, interfaces.detach().requires_grad_())
    torch.testing.assert_close(reads, reference_reads)


def test_truncated_windows_continue_the_sequence_and_backpropagate_per_window():
    ram = RAM(N, W, read_heads=R, k=N, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 6, ram.interface_size, dtype=torch.float64)
    whole, _ = run_sparse(ram, interfaces)
    state = ram.initial_state(B, dtype=torch.float64)
    outputs = []
    for start in (0, 3):
        x = interfaces[:, start : start + 3].clone().requires_grad_()
        reads = []
        for t in range(3):
            read, state, _ = ram(x[:, t], state)
            reads.append(read)
        window = torch.stack(reads, 1)
        window.sum().backward()
        assert torch.isfinite(x.grad).all()
        outputs.append(window.detach())
        state = detach_state(state)
    torch.testing.assert_close(torch.cat(outputs, 1), whole.detach())


def _saved_bytes(slots: int) -> int:
    ram = RAM(slots, 16, read_heads=2, k=4, sparse=True, index="exact")
    interfaces = torch.randn(2, 6, ram.interface_size)
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _reads, _ = run_sparse(ram, interfaces.requires_grad_())
    return total


def test_bytes_saved_for_backward_do_not_grow_with_slots():
    small, large = _saved_bytes(1024), _saved_bytes(65536)
    assert abs(large - small) / small < 0.10, (small, large)
    assert large < 64 * 1024 * 16 * 4  # far below one copy of the large memory


def test_period_two_leaves_memory_unchanged_off_ticks():
    ram = RAM(N, W, read_heads=R, k=3, sparse=True, index="exact", period=2).double()
    state = ram.initial_state(B, dtype=torch.float64)
    for t in range(5):
        before = state.memory.clone()
        _, state, stats = ram(torch.randn(B, ram.interface_size, dtype=torch.float64), state)
        assert torch.equal(state.memory, before) == (t % 2 == 1)
        assert stats.wrote[0].item() == (1.0 if t % 2 == 0 else 0.0)
        if t % 2 == 1:  # off ticks: no write weight at all
            assert stats.write_mass.abs().max() == 0 and stats.wrote.abs().max() == 0


def test_zero_interface_gives_finite_reads_gradients_and_stats():
    ram = RAM(N, W, read_heads=R, k=3, sparse=True, index="exact").double()
    interfaces = torch.zeros(B, 4, ram.interface_size, dtype=torch.float64, requires_grad=True)
    reads, _ = run_sparse(ram, interfaces)
    reads.sum().backward()
    assert torch.isfinite(reads).all() and torch.isfinite(interfaces.grad).all()
    state = ram.initial_state(B, dtype=torch.float64)
    for t in range(4):
        _, state, stats = ram(interfaces[:, t].detach(), state)
        assert all(torch.isfinite(field).all() for field in stats)


def test_stats_on_hand_built_writes_and_reads_over_the_k_rows_retrieved():
    """Write e0, e1, e2, e3 into fresh rows (the LRU row, write gate open), reading e_t back
    one-hot, then e3 with a zero key: uniform over the K = 3 rows retrieved."""
    ram = RAM(N, 4, read_heads=1, k=3, links=0, sparse=True, index="exact").double()
    big = 30.0

    def interface(key, add):  # key, strength, erase, add, write gate, interpolation (LRU)
        parts = [key, torch.tensor([big]), torch.full((4,), big), add, torch.tensor([big]),
                 torch.tensor([-big])]  # fmt: skip
        return torch.cat(parts).double().unsqueeze(0)

    eye = torch.eye(4, dtype=torch.float64)
    state = ram.initial_state(1, dtype=torch.float64)
    used, entropy, mass, wrote = [], [], [], []
    for key, add in [(eye[0], eye[0]), (eye[1], eye[1]), (eye[2], eye[2]), (0 * eye[0], eye[3])]:
        _, state, stats = ram(interface(key, add), state)
        used.append(stats.slots_used.item())
        entropy.append(stats.read_entropy.item())
        mass.append(stats.write_mass.item())
        wrote.append(stats.wrote.item())
    assert used == [1.0, 2.0, 3.0, 4.0]  # rows ever written, counted as they are written
    assert wrote == [1.0] * 4
    np.testing.assert_allclose(mass, [1.0] * 4, atol=1e-9)
    np.testing.assert_allclose(entropy, [0.0, 0.0, 0.0, np.log(3)], atol=1e-9)


def test_batch_elements_do_not_leak_into_each_other():
    ram = RAM(N, W, read_heads=R, k=3, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 5, ram.interface_size, dtype=torch.float64)
    changed = interfaces.clone()
    changed[0] += torch.randn_like(changed[0])
    a, _ = run_sparse(ram, interfaces)
    b, _ = run_sparse(ram, changed)
    assert torch.equal(a[1:], b[1:]) and not torch.equal(a[0], b[0])


def test_auto_mode_and_sizes():
    assert RAM(1024, 8).sparse is False and RAM(1025, 8).sparse is True
    ram = RAM(2048, 8, read_heads=3)
    assert ram.interface_size == 3 * 9 + 2 * 8 + 2 + 3 * 3  # + read modes of the links
    assert RAM(2048, 8, read_heads=3, links=0).interface_size == 3 * 9 + 2 * 8 + 2
    with pytest.raises(
        ValueError, match="RAM: links must be a non-negative integer \\(>= 0\\), got -1"
    ):
        RAM(2048, 8, links=-1)
    with pytest.raises(ValueError, match="sparse mode has one write head"):
        RAM(2048, 8, write_heads=2)
    with pytest.raises(ValueError, match="RAM: index must be one of"):
        RAM(8, 8, index="annoy")


def test_auto_index_is_exact_on_cuda_at_any_size():
    # resolve_backend only reads the device type: no GPU is needed to check the choice
    assert resolve_backend("auto", 1 << 24, torch.device("cuda")) == "exact"
    assert resolve_backend("auto", (1 << 16) - 1, torch.device("cpu")) == "exact"


def test_faiss_requested_without_faiss_falls_back_to_exact_with_a_warning(monkeypatch):
    import tiered.knn as knn

    monkeypatch.setattr(knn, "load_faiss", lambda: None)
    monkeypatch.setattr(knn, "_warned_missing_faiss", False)
    ram = RAM(64, 8, sparse=True, index="faiss")
    with pytest.warns(UserWarning, match="FAISS is not installed"):
        state = ram.initial_state(2)
    assert type(state.tape.index).__name__ == "ExactKNN"


@needs_faiss
def test_faiss_finds_the_exact_neighbours_on_well_separated_data():
    rng = np.random.default_rng(0)
    slots, width = 512, 32
    memory = torch.from_numpy(rng.standard_normal((2, slots, width)).astype(np.float32))
    written = torch.ones(2, slots, dtype=torch.bool)
    index = FaissKNN(load_faiss(), 2, slots, width, nprobe=slots)  # visit every list
    index.rebuild(memory, written)
    queries = memory[:, [3, 100, 400]] + 0.01 * torch.randn(2, 3, width)
    found = index.search(memory, written, queries, 4)
    expected = exact_search(memory, written, queries, 4)
    assert torch.equal(found, expected)
    assert found[:, :, 0].tolist() == [[3, 100, 400]] * 2


@needs_faiss
def test_faiss_searches_a_sparsely_written_memory_exactly_until_it_fills():
    torch.manual_seed(0)
    slots, width = 4096, 8  # 64 inverted lists
    memory = torch.randn(2, slots, width)
    written = torch.zeros(2, slots, dtype=torch.bool)
    written[:, torch.randperm(slots)[:30]] = True  # 30 rows in 64 lists
    queries = torch.randn(2, 5, width)
    index = FaissKNN(load_faiss(), 2, slots, width, nprobe=1)
    index.rebuild(memory, written)
    assert torch.equal(
        index.search(memory, written, queries, 8), exact_search(memory, written, queries, 8)
    )
    index.exhaustive_rows = 16  # now 30 rows are "many": one list per query is visited
    approximate = index.search(memory, written, queries, 8)
    assert (approximate < 0).any()  # one list of ~0.5 rows cannot hold 8 neighbours


@needs_faiss
def test_faiss_after_many_incremental_updates_agrees_with_a_fresh_index():
    torch.manual_seed(0)
    ram = RAM(4096, 16, read_heads=2, k=4, sparse=True, index="faiss", nprobe=4096)
    state = ram.initial_state(2)
    with torch.no_grad():
        for _ in range(40):
            _, state, _ = ram(torch.randn(2, ram.interface_size), state)
    fresh = ram.rebuild_state(state)
    queries = torch.randn(2, 5, 16)
    exact = exact_search(state.memory, state.tape.written, queries, 4)
    for exhaustive_rows in (0, 4096):  # the IVF lists (all visited), the held rows
        found = []
        for s in (state, fresh):
            s.tape.index.exhaustive_rows = exhaustive_rows
            found.append(s.tape.index.search(s.memory, s.tape.written, queries, 4))
        assert torch.equal(found[0], found[1]), exhaustive_rows
        assert torch.equal(found[0], exact), exhaustive_rows
    assert isinstance(fresh, SparseRAMState) and int(state.tape.in_use[0]) > 1


@needs_faiss
def test_faiss_lists_exactly_the_rows_its_indexes_hold():
    torch.manual_seed(0)
    ram = RAM(2048, 8, read_heads=2, k=3, sparse=True, index="faiss")
    state = ram.initial_state(3)
    with torch.no_grad():
        for _ in range(25):
            _, state, _ = ram(torch.randn(3, ram.interface_size), state)
    index = state.tape.index
    for b in range(3):
        rows = set(torch.nonzero(state.tape.written[b]).flatten().tolist())
        assert index.count[b] == index.indexes[b].ntotal == len(rows) > 1
        assert set(index.held[b, : index.count[b]].tolist()) == rows
        assert (index.held[b, index.count[b] :] == -1).all()
    index.capacity = index.exhaustive_rows = 2  # more rows than listed: the IVF answers
    queries = torch.randn(3, 4, 8)
    index.nprobe = index.nlist
    assert torch.equal(
        index.search(state.memory, state.tape.written, queries, 3),
        exact_search(state.memory, state.tape.written, queries, 3),
    )


@needs_faiss
def test_faiss_edge_settings_stay_exact_or_padded():
    torch.manual_seed(0)
    slots, width = 256, 6  # 16 lists
    memory = torch.randn(2, slots, width)
    written = torch.zeros(2, slots, dtype=torch.bool)
    queries = torch.randn(2, 3, width)
    # nothing listed (exhaustive_rows=0): an empty index gives -1, a filled one the IVF
    index = FaissKNN(load_faiss(), 2, slots, width, nprobe=16, exhaustive_rows=0)
    index.rebuild(memory, written)
    assert (index.search(memory, written, queries, 4) == -1).all()
    rows = torch.tensor([[3, 3, 9, 200], [7, 8, 8, 1]])  # a repeat in each batch element
    valid = torch.ones_like(rows, dtype=torch.bool)
    written.scatter_(1, rows, True)
    index.update(memory, rows, valid)
    assert [index.indexes[b].ntotal for b in range(2)] == index.count.tolist() == [3, 3]
    expected = exact_search(memory, written, queries, 4)
    assert torch.equal(index.search(memory, written, queries, 4), expected)
    # more rows than listed, but exhaustive_rows raised after construction: still exact
    index = FaissKNN(load_faiss(), 2, slots, width, nprobe=1, exhaustive_rows=4)
    written[:, :40] = True
    index.rebuild(memory, written)
    index.exhaustive_rows = slots
    expected = exact_search(memory, written, queries, 5)
    assert torch.equal(index.search(memory, written, queries, 5), expected)


def test_backward_over_two_segments_leaves_the_buffer_and_matches_the_reference():
    ram = RAM(N, W, read_heads=R, k=N, sparse=True, index="exact").double()
    interfaces = torch.randn(B, 8, ram.interface_size, dtype=torch.float64, requires_grad=True)
    state = ram.initial_state(B, dtype=torch.float64)
    reference = reference_initial_state(B, N, W, R, torch.float64)
    sparse_reads, reference_reads = [], []
    for t in range(8):
        if t == 4:  # truncate both the same way
            state = detach_state(state)
            reference = reference._replace(
                memory=reference.memory.detach(), read_weights=reference.read_weights.detach()
            )
        read, state, _ = ram(interfaces[:, t], state)
        sparse_reads.append(read)
        read, reference = reference_step(
            interfaces[:, t], reference, width=W, read_heads=R, k=N, time=t, links=True
        )
        reference_reads.append(read)
    before = state.memory.clone()
    g = torch.randn(B, 8, R * W, dtype=torch.float64)
    (grad_sparse,) = torch.autograd.grad(torch.stack(sparse_reads, 1), interfaces, g)
    (grad_reference,) = torch.autograd.grad(torch.stack(reference_reads, 1), interfaces, g)
    assert torch.equal(state.memory, before)
    torch.testing.assert_close(grad_sparse, grad_reference)
    assert state.tape.grad.abs().max() == 0  # the accumulator is clean for the next pass


def test_the_lru_heap_stays_bounded_over_long_sequences():
    ram = RAM(4096, 4, read_heads=2, k=4, sparse=True, index="exact")
    state = ram.initial_state(1)
    with torch.no_grad():
        for _ in range(150):
            _, state, _ = ram(torch.randn(1, ram.interface_size), state)
    usage = state.tape.usage
    assert len(usage.heaps[0]) <= 4 * len(usage.last[0]) + 64 + 16


def _resident_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize("dtype", [torch.long, torch.float32, torch.float64, torch.bfloat16])
def test_lazy_zeros_are_writable_zeros_of_the_asked_shape_and_dtype(dtype):
    table = lazy_zeros((3, 5, 7), dtype, torch.device("cpu"))
    assert table.shape == (3, 5, 7) and table.dtype == dtype and table.is_contiguous()
    assert not table.any()
    table[2, 4, 6] = 3
    table.view(-1)[0] = 1
    assert table.sum().item() == 4 and table[2, 4, 6].item() == 3
    assert lazy_zeros((2, 0), dtype, torch.device("cpu")).shape == (2, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_lazy_zeros_make_only_the_touched_pages_resident():
    # 512 MiB, 200 rows touched all over: 4 KiB pages make ~1 MiB resident; the huge pages
    # numpy asks for made 285 MiB resident here.
    rows = torch.randperm(1 << 21)[:200]
    before = _resident_mib()
    table = lazy_zeros((1 << 21, 64), torch.float32, torch.device("cpu"))
    table[rows] = 1.0
    assert _resident_mib() - before < 64
    assert table.sum().item() == 200 * 64


def test_a_step_from_an_older_state_raises_and_the_newest_still_continues():
    ram = RAM(N, W, read_heads=R, k=3, sparse=True, index="exact").double()
    x = torch.randn(B, 3, ram.interface_size, dtype=torch.float64)
    first = ram.initial_state(B, dtype=torch.float64)
    _, second, _ = ram(x[:, 0], first)
    with pytest.raises(RuntimeError, match=r"RAM 'ram': this state is not the newest"):
        ram(x[:, 1], first)  # the buffer already holds the memory after step 0
    _, third, _ = ram(x[:, 1], detach_state(second))  # a detached newest state is the newest
    branch = ram.rebuild_state(third)  # a copy steps on its own buffers
    read_a, _, _ = ram(x[:, 2], third)
    read_b, _, _ = ram(x[:, 2], branch)
    torch.testing.assert_close(read_a, read_b)
    with pytest.raises(RuntimeError, match="not the newest"):
        ram(x[:, 2], second)


@pytest.mark.parametrize("links", [0, N], ids=["sam", "sparse_dnc"])
def test_a_backward_pass_that_stops_early_does_not_leak_into_the_next(links):
    # A pass asked only for step 3's input stops there, before the segment's first step,
    # leaving rows in the gradient accumulator; a later full pass must not add them in.
    ram = RAM(N, W, read_heads=R, k=3, links=links, sparse=True, index="exact").double()
    inputs = [
        torch.randn(B, ram.interface_size, dtype=torch.float64, requires_grad=True)
        for _ in range(6)
    ]

    def run():
        state = ram.initial_state(B, dtype=torch.float64)
        reads = []
        for x in inputs:
            read, state, _ = ram(x, state)
            reads.append(read)
        return torch.stack(reads, 1)

    g = torch.randn(B, 6, R * W, dtype=torch.float64)
    clean = torch.autograd.grad(run(), inputs, g)
    reads = run()
    torch.autograd.grad(reads, inputs[3], g, retain_graph=True)  # a partial pass
    after_partial = torch.autograd.grad(reads, inputs, g)
    for a, b in zip(after_partial, clean, strict=True):
        torch.testing.assert_close(a, b)


def _stats_over(ram: RAM, steps: int, batch: int = 3, seed: int = 0) -> list:
    """The TierStats of ``steps`` forward steps on random interfaces."""
    g = torch.Generator().manual_seed(seed)
    state = ram.initial_state(batch, torch.device("cpu"), torch.float64)
    stats = []
    for _ in range(steps):
        out = ram(torch.randn(batch, ram.interface_size, generator=g, dtype=torch.float64), state)
        state = out.state
        stats.append(out.stats)
    return stats


def test_recall_is_checked_every_recall_every_steps_and_is_exact_for_the_exact_index():
    ram = RAM(64, 5, read_heads=2, k=3, links=0, sparse=True, index="exact",
              recall_every=3).double()  # fmt: skip
    assert ram.samples_recall
    stats = _stats_over(ram, 7)
    checked = [float(s.recall_checked.sum()) for s in stats]
    hits = [float(s.recall_hits.sum()) for s in stats]
    # steps 0, 3 and 6 (a step writes before it reads: step 0 has one row to find)
    assert [c > 0 for c in checked] == [True, False, False, True, False, False, True]
    assert checked[0] == 3 * 2 * 1  # batch 3, 2 heads, 1 written row each
    assert hits == checked  # exact search finds every exact neighbour
    assert checked[3] == 3 * 2 * 3  # batch 3, 2 heads, k 3: enough rows written by step 3
    assert not RAM(64, 5, sparse=True, index="exact").samples_recall  # recall_every 0
    assert not RAM(64, 5, sparse=False, recall_every=3).samples_recall  # dense: no index


def test_index_recall_counts_the_exact_neighbours_the_index_missed():
    from tiered.tiers.ram_sparse import index_recall

    ram = RAM(32, 4, read_heads=1, k=2, links=0, sparse=True, index="exact").double()
    g = torch.Generator().manual_seed(3)
    state = ram.initial_state(2, torch.device("cpu"), torch.float64)
    for _ in range(6):
        state = ram(torch.randn(2, ram.interface_size, generator=g, dtype=torch.float64),
                    state).state  # fmt: skip
    tape = state.tape
    queries = torch.randn(2, 1, 4, generator=g, dtype=torch.float64)
    exact = exact_search(tape.memory, tape.written, queries, 2)
    checked, hits = index_recall(tape, queries, exact, 2)
    assert torch.equal(hits, checked) and torch.equal(checked, (exact >= 0).sum(dim=(1, 2)))
    wrong = torch.full_like(exact, -1)  # an index that returns nothing
    assert torch.equal(index_recall(tape, queries, wrong, 2)[1], torch.zeros(2, dtype=torch.long))
    half = exact.clone()
    half[..., 1] = -1  # the second neighbour missed
    assert torch.equal(index_recall(tape, queries, half, 2)[1], (exact[..., 0] >= 0).sum(dim=1))


def test_sampled_recall_shows_a_lossy_index():
    pytest.importorskip("faiss")
    ram = RAM(4096, 8, read_heads=2, k=4, links=0, sparse=True, index="faiss", nprobe=1,
              recall_every=1).double()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    state = ram.initial_state(2, torch.device("cpu"), torch.float64)
    state.tape.index.exhaustive_rows = 0  # the IVF lists answer from the first row on
    state.tape.index.capacity = 0
    checked = hits = 0.0
    for _ in range(200):
        out = ram(torch.randn(2, ram.interface_size, generator=g, dtype=torch.float64), state)
        state = out.state
        checked += float(out.stats.recall_checked.sum())
        hits += float(out.stats.recall_hits.sum())
    assert checked == 200 * 2 * 2 * 4 - 2 * 2 * (3 + 2 + 1)  # all but the first 3 steps' gaps
    assert 0 < hits < checked  # 1 of 64 lists visited per query: some neighbours missed


def test_auto_picks_faiss_on_the_cpu_from_65536_slots_and_searches_with_torch_threads():
    pytest.importorskip("faiss")
    assert resolve_backend("auto", 1 << 16, torch.device("cpu")) == "faiss"
    ram = RAM(1 << 16, 4, read_heads=1, sparse=True)
    assert ram.nprobe == 64  # found >= 99% of stored rows from noisy copies up to 2^20
    index = ram.initial_state(2).tape.index
    assert index.search_threads == torch.get_num_threads() and index.nprobe == 64
    again = RAM(1 << 16, 4, read_heads=1, sparse=True, search_threads=3, nprobe=5)
    index = again.initial_state(2).tape.index
    assert index.search_threads == 3 and index.nprobe == 5
