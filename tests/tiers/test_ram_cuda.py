"""The RAM on a CUDA device against the same RAM on the CPU (float64).

Skipped without CUDA: CI has no GPU. ``experiments/benchmarks/gpu_check.sh`` runs these on a
lent GPU machine, with the GPU column of the scaling benchmark.
"""

from __future__ import annotations

import pytest
import torch

from tiered import detach_state, map_state
from tiered.knn import ExactKNN, exact_search
from tiered.tiers import RAM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def run(ram: RAM, interfaces: torch.Tensor, windows: int = 1):
    """Reads (B, T, R W) and the final state, detaching the state between ``windows``."""
    state = ram.initial_state(interfaces.shape[0], device=interfaces.device, dtype=interfaces.dtype)
    reads = []
    T = interfaces.shape[1]
    for t in range(T):
        if t and t % (T // windows) == 0:
            state = detach_state(state)
        read, state, _ = ram(interfaces[:, t], state)
        reads.append(read)
    return torch.stack(reads, 1), state


@pytest.mark.parametrize("windows", [1, 3], ids=["whole", "truncated"])
@pytest.mark.parametrize("links", [0, 3], ids=["sam", "sparse_dnc"])
def test_sparse_ram_on_cuda_matches_the_cpu_in_values_gradients_and_memory(links, windows):
    ram = RAM(13, 5, read_heads=2, k=4, links=links, sparse=True, index="exact").double()
    interfaces = torch.randn(3, 9, ram.interface_size, dtype=torch.float64)
    outputs = {}
    for device in ("cpu", "cuda"):
        x = interfaces.to(device).requires_grad_()
        reads, state = run(ram.to(device), x, windows)
        g = torch.linspace(-1, 1, reads.numel(), dtype=torch.float64).view_as(reads).to(device)
        (grad,) = torch.autograd.grad(reads, x, g)
        outputs[device] = [reads.detach(), grad, state.memory, state.read_indices, state.clock]
        assert state.memory.device.type == device
    for cpu, cuda in zip(outputs["cpu"], outputs["cuda"], strict=True):
        torch.testing.assert_close(cuda.cpu(), cpu)


def test_a_cpu_state_moved_to_cuda_and_rebuilt_continues_like_the_cpu():
    ram = RAM(17, 4, read_heads=2, k=3, links=2, sparse=True, index="exact").double()
    interfaces = torch.randn(2, 8, ram.interface_size, dtype=torch.float64)
    expected, _ = run(ram, interfaces)
    state = ram.initial_state(2, dtype=torch.float64)
    reads = []
    for t in range(4):
        read, state, _ = ram(interfaces[:, t], state)
        reads.append(read)
    state = ram.rebuild_state(map_state(lambda t: t.to(CUDA), state))
    assert state.tape.written.is_cuda and state.links.pred.is_cuda
    for t in range(4, 8):
        read, state, _ = ram(interfaces[:, t].to(CUDA), state)
        reads.append(read.cpu())
    torch.testing.assert_close(torch.stack(reads, 1), expected)


def test_blocked_exact_search_and_cached_norms_on_cuda_match_the_cpu():
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(3, 50, 6, generator=generator, dtype=torch.float64)
    written = torch.rand(3, 50, generator=generator) < 0.5
    queries = torch.randn(3, 4, 6, generator=generator, dtype=torch.float64)
    expected = exact_search(memory, written, queries, 7)
    got = exact_search(memory.cuda(), written.cuda(), queries.cuda(), 7, block_scores=20)
    assert torch.equal(got.cpu(), expected)
    index = ExactKNN()
    index.rebuild(memory.cuda(), written.cuda())
    rows = torch.tensor([[1, 2, 1], [4, 4, 4], [0, 9, 0]], device=CUDA)
    valid = torch.tensor([[True, True, False], [True, False, False], [True, True, False]])
    memory[:, :10] *= 3
    written[:, :10] = True
    index.update(memory.cuda(), rows, valid.cuda())
    touched = torch.zeros(3, 50, dtype=torch.bool)
    touched[0, [1, 2]] = touched[1, 4] = touched[2, [0, 9]] = True
    torch.testing.assert_close(index.norms.cpu()[touched], memory.norm(dim=-1)[touched])


def test_dense_ram_on_cuda_matches_the_cpu():
    ram = RAM(9, 4, read_heads=2, sparse=False).double()
    interfaces = torch.randn(3, 6, ram.interface_size, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        x = interfaces.to(device).requires_grad_()
        reads, _ = run(ram.to(device), x)
        (grad,) = torch.autograd.grad(reads.sum(), x)
        results.append((reads.detach().cpu(), grad.cpu()))
    torch.testing.assert_close(results[1], results[0])
