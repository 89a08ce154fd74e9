"""The fused link step against the plain autograd reference, and the buffer pool."""

from __future__ import annotations

import gc
import os
import shutil

import pytest
import torch
from torch.autograd import gradcheck

from tiered.controllers import LSTMController
from tiered.tiers import RAM, Register, link_kernels, linkage

# A machine without a C compiler skips the C cases (the torch path is what it gets).
HAS_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
FAST = (pytest.param("c", marks=needs_compiler), "torch")


@pytest.fixture(autouse=True)
def _restore_kernel():
    previous = link_kernels.set_kernel("auto")
    yield
    link_kernels.set_kernel(previous)


def _inputs(B, H, N, R, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    link = torch.rand(B, H, N, N, generator=g, dtype=dtype) / N
    link.diagonal(dim1=-2, dim2=-1).zero_()
    precedence = torch.rand(B, H, N, generator=g, dtype=dtype) / N
    write = 0.9 * torch.softmax(torch.randn(B, H, N, generator=g, dtype=dtype), -1)
    reads = torch.softmax(torch.randn(B, R, N, generator=g, dtype=dtype), -1)
    tensors = (link, precedence, write, reads)
    return tuple(t.requires_grad_(grad) for t in tensors)


def _reference(link, precedence, write, reads):
    new = linkage.update_link_reference(link, precedence, write)
    return (
        new,
        linkage.directional_read_weights(new, reads, forward=True),
        linkage.directional_read_weights(new, reads, forward=False),
    )


@needs_compiler
def test_with_a_compiler_a_user_gets_the_c_kernels_on_cpu():
    # "auto" must not fall back silently where the kernels can be built.
    assert link_kernels.resolved_kernel(torch.device("cpu"), torch.float32) == "c"
    assert link_kernels.resolved_kernel(torch.device("cpu"), torch.float64) == "c"
    assert link_kernels.resolved_kernel(torch.device("cpu"), torch.bfloat16) == "torch"


@needs_compiler
def test_the_library_is_built_once_per_machine_and_named_by_its_inputs(tmp_path):
    first = link_kernels.build_library(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert link_kernels.build_library(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left


@needs_compiler
def test_a_read_only_cache_folder_builds_in_the_temporary_directory(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder's parent should be
    monkeypatch.setattr(link_kernels, "_cache_dir", lambda: blocked / "kernels")
    monkeypatch.setattr(link_kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    path = link_kernels.build_library()
    assert path.parent == tmp_path / "tmp" / f"tiered-kernels-{os.getuid()}"
    assert path.exists()


def test_a_failed_build_warns_once_and_falls_back_to_torch(monkeypatch, tmp_path):
    bad = tmp_path / "links.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(link_kernels, "SOURCE", bad)
    monkeypatch.setattr(link_kernels, "_cache_dir", lambda: tmp_path / "cache")
    link_kernels._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert link_kernels.resolved_kernel(torch.device("cpu")) == "torch"
        assert not list((tmp_path / "cache").glob("*.so"))
        inputs = _inputs(2, 1, 4, 2)
        out = link_kernels.link_step(*inputs)  # runs, on the torch path
        torch.testing.assert_close(out[0], _reference(*inputs)[0])
        link_kernels.set_kernel("c")
        with pytest.raises(RuntimeError, match="could not be built"):
            link_kernels.link_step(*inputs)
    finally:
        link_kernels._library.cache_clear()


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("B, H, N, R", [(3, 2, 7, 3), (1, 1, 1, 1), (2, 3, 5, 2), (5, 1, 11, 4)])
def test_values_and_gradients_equal_the_reference_in_float64(kernel, B, H, N, R):
    inputs = _inputs(B, H, N, R)
    g = torch.Generator().manual_seed(1)
    grads = [
        torch.randn(B, H, N, N, generator=g, dtype=torch.float64),
        torch.randn(B, R, H, N, generator=g, dtype=torch.float64),
        torch.randn(B, R, H, N, generator=g, dtype=torch.float64),
    ]
    expected = _reference(*inputs)
    expected_grads = torch.autograd.grad(expected, inputs, grads)
    link_kernels.set_kernel(kernel)
    got = link_kernels.link_step(*inputs)
    got_grads = torch.autograd.grad(got, inputs, grads)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", FAST)
def test_gradients_of_the_reads_alone_and_of_the_link_alone(kernel):
    # Backward without a gradient for the new link (the last step) and with only it.
    inputs = _inputs(2, 2, 6, 3, seed=3)
    link_kernels.set_kernel(kernel)
    for pick in ((1, 2), (0,)):
        got = link_kernels.link_step(*inputs)
        expected = _reference(*inputs)
        loss = sum((got[i] * (i + 1.5)).sum() for i in pick)
        loss_ref = sum((expected[i] * (i + 1.5)).sum() for i in pick)
        both = {"allow_unused": True, "materialize_grads": True}
        got_grads = torch.autograd.grad(loss, inputs, **both)
        for a, b in zip(got_grads, torch.autograd.grad(loss_ref, inputs, **both), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", FAST)
def test_gradcheck(kernel):
    link_kernels.set_kernel(kernel)
    assert gradcheck(link_kernels.link_step, _inputs(2, 2, 5, 3, seed=4))


@pytest.mark.parametrize("kernel", FAST)
def test_zero_inputs_give_zero_outputs_and_finite_gradients(kernel):
    link_kernels.set_kernel(kernel)
    inputs = tuple(torch.zeros_like(t).requires_grad_() for t in _inputs(2, 1, 4, 2))
    out = link_kernels.link_step(*inputs)
    assert all(torch.equal(o, torch.zeros_like(o)) for o in out)
    grads = torch.autograd.grad(sum(o.sum() for o in out), inputs)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kernel", FAST)
def test_float32_kernels_match_the_float64_reference(kernel):
    inputs = _inputs(4, 2, 33, 3, seed=5)
    expected = _reference(*inputs)
    link_kernels.set_kernel(kernel)
    got = link_kernels.link_step(*(t.detach().float() for t in inputs))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double(), b.detach(), rtol=0, atol=1e-6)


@needs_compiler
def test_kernel_threads_split_the_batch_without_changing_results(monkeypatch):
    # Force the multi-threaded path on a small problem and compare with one thread.
    inputs = _inputs(5, 2, 9, 3, seed=6)
    link_kernels.set_kernel("c")
    if shutil.which("gcc") or shutil.which("cc"):  # gcc has OpenMP: the split is real
        assert link_kernels.built_with_openmp()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(link_kernels, "PARALLEL_ENTRIES", 1 << 62)
        one = link_kernels.link_step(*inputs)
        one_grads = torch.autograd.grad(sum(o.sum() for o in one), inputs)
        monkeypatch.setattr(link_kernels, "PARALLEL_ENTRIES", 0)
        many = link_kernels.link_step(*inputs)
        many_grads = torch.autograd.grad(sum(o.sum() for o in many), inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one + one_grads, many + many_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def _dense_controller(write_heads=2, period=1):
    torch.manual_seed(0)
    ram = RAM(9, 5, read_heads=3, write_heads=write_heads, sparse=False, period=period)
    return LSTMController(4, 3, Register(7), [ram]).double()


@pytest.mark.parametrize("write_heads, period", [(1, 1), (2, 1), (3, 2)])
def test_a_dense_ram_controller_is_unchanged_against_the_reference(write_heads, period):
    controller = _dense_controller(write_heads, period)
    x = torch.randn(3, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kernels = ("c", "torch") if HAS_COMPILER else ("torch",)
    results = {}
    for kernel in ("reference", *kernels):
        link_kernels.set_kernel(kernel)
        controller.zero_grad(set_to_none=True)
        out = controller(x)
        loss = out.output.pow(2).sum() + out.state.tiers[0].link.sum()
        loss.backward()
        grads = [p.grad.clone() for p in controller.parameters()]
        results[kernel] = (out.output.detach(), out.state.tiers[0].link.detach(), grads)
    for kernel in kernels:
        output, link, grads = results[kernel]
        torch.testing.assert_close(output, results["reference"][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(link, results["reference"][1], rtol=0, atol=1e-12)
        for a, b in zip(grads, results["reference"][2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", FAST)
def test_gradcheck_through_a_dense_ram_sequence(kernel):
    link_kernels.set_kernel(kernel)
    controller = _dense_controller(2, 1)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda inp: controller(inp).output, (x,))


@pytest.mark.parametrize("kernel", FAST)
def test_mixed_dtypes_and_broadcast_shapes_take_the_torch_path(kernel):
    # link_step is public: what the C kernels cannot take must still equal the reference.
    link_kernels.set_kernel(kernel)
    link, precedence, write, reads = _inputs(2, 2, 5, 3, seed=9)
    cases = [
        (link.detach().float(), precedence, write, reads),  # float32 link, float64 rest
        (link, precedence.float(), write.float(), reads.float()),
        (link, precedence[:, :1], write, reads),  # precedence broadcast over heads
    ]
    for inputs in cases:
        got = link_kernels.link_step(*inputs)
        # The reference after promotion to float64 and broadcasting (the reference's reads
        # need one dtype).
        promoted = [t.double() for t in inputs]
        promoted[1] = promoted[1].expand_as(promoted[2])
        expected = _reference(*promoted)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_unknown_kernel_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"'torch'.*'fast'"):
        link_kernels.set_kernel("fast")


# ----------------------------------------------------------------------------- the pool


def _pool():
    return link_kernels.LinkPool()


def test_a_released_buffer_is_reused_and_a_held_one_is_not():
    pool = _pool()
    a = pool.take((2, 3), torch.float32, torch.device("cpu"))
    b = pool.take((2, 3), torch.float32, torch.device("cpu"))
    assert a.data_ptr() != b.data_ptr()  # a is held by this test
    pointer = b.data_ptr()
    del b
    c = pool.take((2, 3), torch.float32, torch.device("cpu"))
    assert c.data_ptr() == pointer
    assert pool.held_bytes() == 2 * 6 * 4


def test_a_buffer_saved_by_an_autograd_graph_or_viewed_is_not_reused():
    pool = _pool()
    cpu = torch.device("cpu")
    saved = pool.take((4,), torch.float64, cpu).fill_(2.0)
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    loss = (x * saved).sum()  # the graph saves the buffer
    pointer = saved.data_ptr()
    del saved
    assert pool.take((4,), torch.float64, cpu).data_ptr() != pointer
    loss.backward()  # frees the saved buffer
    gc.collect()
    assert pool.take((4,), torch.float64, cpu).data_ptr() == pointer

    viewed = pool.take((6,), torch.float64, cpu)
    view = viewed[2:]
    pointer = viewed.data_ptr()
    del viewed
    assert pool.take((6,), torch.float64, cpu).data_ptr() != pointer
    del view


def test_free_buffers_of_another_shape_are_dropped_and_clear_forgets_all():
    pool = _pool()
    cpu = torch.device("cpu")
    pool.take((8,), torch.float32, cpu)  # released at once
    pool.take((3,), torch.float32, cpu)
    assert pool.held_bytes() == 3 * 4
    kept = pool.take((5,), torch.float32, cpu)
    pool.clear()
    assert pool.held_bytes() == 0
    assert kept.shape == (5,)  # still valid for its holder


def test_a_lent_tensor_held_only_by_a_name_is_never_lent_again():
    # "In use" must not depend on Python's reference counts of locals: the pool checks the
    # storage, which the lent tensor holds.
    pool = _pool()
    cpu = torch.device("cpu")
    held = [pool.take((3,), torch.float32, cpu) for _ in range(5)]
    for _ in range(20):
        extra = pool.take((3,), torch.float32, cpu)
        assert extra.data_ptr() not in {t.data_ptr() for t in held}
        del extra


def test_a_long_sequence_keeps_one_buffer_per_step_and_no_more():
    # More steps than the pool's short scan (64): backward must find the free buffers
    # behind the links still saved, and the pool must not grow batch after batch.
    torch.manual_seed(0)
    controller = LSTMController(3, 2, Register(5), [RAM(6, 4, read_heads=2, sparse=False)])
    link_kernels.POOL.clear()
    x = torch.randn(2, 150, 3)
    counts = []
    for _ in range(4):
        controller(x).output.sum().backward()
        counts.append(len(link_kernels.POOL._bases))
    assert counts[0] <= 150 + 4
    assert counts[1:] == counts[:1] * 3


def test_training_steps_reuse_the_same_link_memory():
    # The dense RAM's link matrices come from the pool: a second batch adds nothing.
    torch.manual_seed(0)
    controller = LSTMController(3, 2, Register(5), [RAM(17, 4, read_heads=2, sparse=False)])
    link_kernels.POOL.clear()
    x = torch.randn(2, 5, 3)
    sizes = []
    for _ in range(3):
        controller(x).output.sum().backward()
        sizes.append(link_kernels.POOL.held_bytes())
    assert sizes[0] > 0 and sizes[1] == sizes[0] == sizes[2]
