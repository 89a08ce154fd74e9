"""Sparse RAM: agreement with the dense reference, rollback, saved bytes, kNN backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from tiered import detach_state
from tiered.knn import FaissKNN, exact_search, load_faiss
from tiered.tiers import RAM
from tiered.tiers.ram_sparse import SparseRAMState, unique_rows
from tiered.tiers.ram_sparse_reference import reference_initial_state, reference_step

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
            interfaces[:, t], state, width=ram.width, read_heads=ram.read_heads, k=ram.k, time=t
        )
        reads.append(read)
    return torch.stack(reads, 1), state


def test_unique_rows_deduplicates_with_fixed_shapes():
    candidates = torch.tensor([[3, 1, 3, 0], [2, 2, 2, 2]])
    rows, inverse, valid = unique_rows(candidates)
    assert valid.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert rows[0, :3].tolist() == [0, 1, 3] and rows[1, 0] == 2
    assert torch.equal(rows.gather(1, inverse), candidates)


def test_with_k_equal_to_slots_sparse_matches_the_dense_reference_in_values_and_gradients():
    ram = RAM(N, W, read_heads=R, k=N, sparse=True, index="exact").double()
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


def test_gradcheck_sparse_steps_with_writes():
    ram = RAM(5, 3, read_heads=2, k=3, sparse=True, index="exact").double()
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
        assert stats.writes[0].item() == (1.0 if t % 2 == 0 else 0.0)


def test_zero_interface_gives_finite_reads_and_gradients():
    ram = RAM(N, W, read_heads=R, k=3, sparse=True, index="exact").double()
    interfaces = torch.zeros(B, 4, ram.interface_size, dtype=torch.float64, requires_grad=True)
    reads, _ = run_sparse(ram, interfaces)
    reads.sum().backward()
    assert torch.isfinite(reads).all() and torch.isfinite(interfaces.grad).all()


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
    assert ram.interface_size == 3 * 9 + 2 * 8 + 2
    with pytest.raises(ValueError, match="sparse mode has one write head"):
        RAM(2048, 8, write_heads=2)
    with pytest.raises(ValueError, match="RAM: index must be one of"):
        RAM(8, 8, index="annoy")


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
def test_faiss_after_many_incremental_updates_agrees_with_a_fresh_index():
    torch.manual_seed(0)
    ram = RAM(4096, 16, read_heads=2, k=4, sparse=True, index="faiss", nprobe=4096)
    state = ram.initial_state(2)
    with torch.no_grad():
        for _ in range(40):
            _, state, _ = ram(torch.randn(2, ram.interface_size), state)
    fresh = ram.rebuild_state(state)
    queries = torch.randn(2, 5, 16)
    incremental = state.tape.index.search(state.memory, state.tape.written, queries, 4)
    rebuilt = fresh.tape.index.search(fresh.memory, fresh.tape.written, queries, 4)
    exact = exact_search(state.memory, state.tape.written, queries, 4)
    assert torch.equal(incremental, rebuilt)
    assert torch.equal(incremental, exact)
    assert isinstance(fresh, SparseRAMState) and int(state.tape.in_use[0]) > 1


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
            interfaces[:, t], reference, width=W, read_heads=R, k=N, time=t
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
