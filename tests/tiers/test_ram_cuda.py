"""The RAM on a CUDA device against the same RAM on the CPU (float64).

Skipped without CUDA: CI has no GPU. ``experiments/benchmarks/gpu_check.sh`` runs these on a
lent GPU machine, with the GPU column of the scaling benchmark.
"""

from __future__ import annotations

import pytest
import torch

from tiered import detach_state
from tiered.knn import resolve_backend
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


@pytest.mark.parametrize("links", [0, 3], ids=["sam", "sparse_dnc"])
def test_sparse_ram_on_cuda_matches_the_cpu_in_values_gradients_and_memory(links):
    ram = RAM(13, 5, read_heads=2, k=4, links=links, sparse=True, index="exact").double()
    interfaces = torch.randn(3, 9, ram.interface_size, dtype=torch.float64)
    outputs = {}
    for device in ("cpu", "cuda"):
        x = interfaces.to(device).requires_grad_()
        reads, state = run(ram.to(device), x)
        g = torch.linspace(-1, 1, reads.numel(), dtype=torch.float64).view_as(reads).to(device)
        (grad,) = torch.autograd.grad(reads, x, g)
        outputs[device] = [reads.detach(), grad, state.memory, state.read_indices, state.clock]
        assert state.memory.device.type == device
    for cpu, cuda in zip(outputs["cpu"], outputs["cuda"], strict=True):
        torch.testing.assert_close(cuda.cpu(), cpu)


def test_sparse_ram_on_cuda_backpropagates_over_truncated_windows():
    ram = RAM(64, 8, read_heads=2, k=4, sparse=True, index="exact").to(CUDA)
    x = torch.randn(2, 12, ram.interface_size, device=CUDA, requires_grad=True)
    reads, state = run(ram, x, windows=3)
    reads.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert state.tape.memory.is_cuda and state.tape.index.norms.is_cuda


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


def test_auto_index_is_exact_on_cuda_at_any_size():
    assert resolve_backend("auto", 1 << 24, CUDA) == "exact"
