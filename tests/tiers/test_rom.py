"""ROM: exact reads, FAISS agreement, gradients to the query only, checkpoints of the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiered.controllers import LSTMController
from tiered.knn import load_faiss
from tiered.storage import KVStore, StoreError
from tiered.tiers import ROM, Register

R, DK, DV = 2, 6, 3


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((257, DK)).astype(np.float32)
    values = rng.standard_normal((257, DV)).astype(np.float32)
    kv = KVStore.create(tmp_path / "rom", DK, DV, chunk_rows=64)
    kv.append(keys, values)
    return tmp_path / "rom", keys, values


def _interface(queries: np.ndarray, strength: float) -> torch.Tensor:
    q = torch.from_numpy(queries).double()  # (B, R, Dk)
    return torch.cat([q.reshape(q.shape[0], -1), torch.full((q.shape[0], R), strength).double()], 1)


def test_a_query_equal_to_a_key_reads_its_value(store):
    path, keys, values = store
    rom = ROM(str(path), k=4, read_heads=R, index="exact").double()
    rows = np.array([[3, 200], [17, 0], [256, 5]])
    interface = _interface(keys[rows], strength=5000.0)
    read, state, stats = rom(interface, rom.initial_state(3))
    np.testing.assert_allclose(read.reshape(3, R, DV).numpy(), values[rows], atol=1e-4)
    assert stats.write_mass.sum() == 0 and stats.wrote.sum() == 0
    assert stats.slots_used.tolist() == [257.0] * 3
    # strength 5000 on a query equal to a key: every head reads one row, entropy ~0
    assert (stats.read_entropy.abs() < 1e-9).all()
    assert stats.value_reads.tolist() == [R * 4.0] * 3  # K = 4 rows per head
    assert rom.query_slices == [slice(0, DK), slice(DK, 2 * DK)]  # where an input skip lands
    assert state.clock.tolist() == [1, 1, 1]


def test_values_in_memory_and_through_the_lru_cache_agree(store):
    path, _keys, _ = store
    cached = ROM(str(path), k=5, read_heads=R, index="exact", cache_rows=16).double()
    in_memory = ROM(str(path), k=5, read_heads=R, index="exact", values_in_memory=True).double()
    interface = torch.randn(4, cached.interface_size, dtype=torch.float64)
    for _ in range(2):
        a, _, _ = cached(interface, cached.initial_state(4))
        b, _, _ = in_memory(interface, in_memory.initial_state(4))
        torch.testing.assert_close(a, b)
    assert cached.cache.hits > 0 and 0 < cached.cache.hit_rate < 1
    assert len(cached.cache.rows) <= 16


def test_a_repeated_query_is_served_from_the_value_cache(store):
    path, keys, _ = store
    rom = ROM(str(path), k=3, read_heads=R, index="exact", cache_rows=64).double()
    assert rom.has_value_cache
    rows = np.array([[3, 200], [17, 0], [40, 41], [3, 200], [5, 6]])  # element 3 repeats 0
    interface = _interface(keys[rows], strength=10.0)
    _, state, first = rom(interface, rom.initial_state(5))
    # first step: nothing was held before it, so every row is a miss, even element 3's
    assert first.value_reads.tolist() == [R * 3.0] * 5
    assert first.cache_hits.tolist() == [0.0] * 5
    _, _, second = rom(interface, state)  # the same queries again: all held
    assert second.cache_hits.tolist() == second.value_reads.tolist() == [R * 3.0] * 5
    assert rom.cache.hits == 5 * R * 3 and rom.cache.misses == 5 * R * 3
    # a new query: only the rows it shares with earlier reads hit
    fresh = _interface(keys[np.array([[3, 100], [3, 100], [3, 100], [3, 100], [3, 100]])], 10.0)
    _, _, third = rom(fresh, state)
    assert ((third.cache_hits >= 1) & (third.cache_hits < third.value_reads)).all()


def test_values_in_memory_are_all_hits_and_no_cache_is_logged(store):
    path, keys, _ = store
    rom = ROM(str(path), k=3, read_heads=R, index="exact", values_in_memory=True).double()
    assert not rom.has_value_cache
    _, _, stats = rom(_interface(keys[np.array([[1, 2]])], 10.0), rom.initial_state(1))
    assert stats.cache_hits.tolist() == stats.value_reads.tolist() == [R * 3.0]


def test_gradients_reach_the_query_and_projection_never_the_store(store):
    path, _, _ = store
    before = sorted((p.name, p.stat().st_mtime_ns) for p in path.rglob("*"))
    rom = ROM(str(path), k=4, read_heads=R, index="exact", read_width=5).double()
    assert rom.kv.read_only
    assert [name for name, _ in rom.named_parameters()] == ["projection.weight", "projection.bias"]
    interface = torch.randn(3, rom.interface_size, dtype=torch.float64, requires_grad=True)
    read, _, _ = rom(interface, rom.initial_state(3))
    assert read.shape == (3, R * 5)
    read.pow(2).sum().backward()
    assert torch.isfinite(interface.grad).all() and interface.grad.abs().sum() > 0
    assert rom.projection.weight.grad is not None
    assert sorted((p.name, p.stat().st_mtime_ns) for p in path.rglob("*")) == before
    assert torch.autograd.gradcheck(
        lambda x: rom(x, rom.initial_state(3))[0], (interface.detach().requires_grad_(),)
    )


@pytest.mark.skipif(load_faiss() is None, reason="faiss is not installed")
def test_faiss_index_finds_the_same_rows_as_exact_search(store, tmp_path):
    from tiered.rom_cli import main as rom_main

    _path, keys, values = store
    np.save(tmp_path / "k.npy", keys)
    np.save(tmp_path / "v.npy", values)
    built = tmp_path / "built"
    rom_main(["build", "--keys", str(tmp_path / "k.npy"), "--values", str(tmp_path / "v.npy"),
              "--out", str(built), "--index", "faiss"])  # fmt: skip
    fast = ROM(str(built), k=3, read_heads=R, index="faiss", nprobe=10_000)
    exact = ROM(str(built), k=3, read_heads=R, index="exact")
    assert fast.faiss_index is not None and exact.faiss_index is None
    queries = torch.from_numpy(keys[[[1, 2], [50, 60]]]) + 0.01 * torch.randn(2, R, DK)
    assert torch.equal(fast.search(queries), exact.search(queries))


@pytest.mark.skipif(load_faiss() is None, reason="faiss is not installed")
def test_rows_faiss_did_not_find_are_masked_not_read_as_row_zero(store):
    path, keys, values = store
    # 257 rows in 6 inverted lists; one probed list holds fewer than k = 100 rows.
    rom = ROM(str(path), k=100, read_heads=R, index="faiss", nprobe=1).double()
    interface = _interface(keys[[[1, 2]]], strength=3.0)
    found = rom.search(interface[:, : R * DK].reshape(1, R, DK))
    assert (found < 0).any() and (found >= 0).any()
    read, _, _ = rom(interface, rom.initial_state(1))
    for head in range(R):
        rows = found[0, head][found[0, head] >= 0].numpy()
        unit = keys[rows] / np.linalg.norm(keys[rows], axis=1, keepdims=True)
        query = keys[[1, 2][head]] / np.linalg.norm(keys[[1, 2][head]])
        weights = np.exp((1 + np.log1p(np.exp(3.0))) * unit @ query)  # oneplus(3)
        expected = (weights / weights.sum()) @ values[rows]
        np.testing.assert_allclose(read[0, head * DV : (head + 1) * DV].numpy(), expected,
                                   rtol=1e-5)  # fmt: skip


def test_checkpoints_record_the_store_and_reject_a_changed_one(store, tmp_path):
    path, _keys, _values = store
    controller = LSTMController(4, 2, Register(8), [ROM(str(path), k=3, read_heads=R)])
    saved = controller.state_dict()
    assert saved["tiers.0._extra_state"] == {"store": str(path), "rows": 257, "key_width": DK,
                                             "value_width": DV}  # fmt: skip
    controller.load_state_dict(saved)  # the same store: fine
    shorter = dict(saved, **{"tiers.0._extra_state": dict(saved["tiers.0._extra_state"], rows=999)})
    with pytest.raises(StoreError, match="trained on 999 rows .* has only 257"):
        controller.load_state_dict(shorter)
    wide = dict(saved, **{"tiers.0._extra_state": dict(saved["tiers.0._extra_state"], key_width=7)})
    with pytest.raises(StoreError, match=r"expects key/value widths \(7, 3\)"):
        controller.load_state_dict(wide)
    with pytest.raises(StoreError, match="does not exist"):
        ROM(str(tmp_path / "gone"))  # a checkpoint's config naming a missing store fails here


def test_rom_in_a_controller_trains_end_to_end(store):
    path, _, _ = store
    controller = LSTMController(4, 2, Register(8), [ROM(str(path), k=3, read_heads=R)]).double()
    out = controller(torch.randn(3, 5, 4, dtype=torch.float64))
    out.output.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in controller.parameters())
    assert (out.aux["rom"].write_mass == 0).all() and (out.aux["rom"].wrote == 0).all()


def test_a_rom_stack_with_input_skip_learns_to_look_up_values_by_key(store):
    """Each input is a stored key, the target its value's signs: the stack must read it."""
    import torch.nn.functional as F

    from tiered.metrics import bit_errors

    path, keys, values = store
    torch.manual_seed(0)
    rom = ROM(str(path), k=4, read_heads=1, index="exact")
    controller = LSTMController(DK, DV, Register(16), [rom], input_skip=True)
    optimizer = torch.optim.Adam(controller.parameters(), lr=1e-2)
    generator = np.random.default_rng(0)
    errors = []
    for _ in range(150):
        rows = generator.integers(0, len(keys), size=(16, 4))  # 16 sequences of 4 queries
        x, y = torch.from_numpy(keys[rows]), torch.from_numpy((values[rows] > 0).astype("f4"))
        logits = controller(x).output
        loss = F.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(bit_errors(logits.detach(), y, torch.ones(16, 4, dtype=torch.bool)).mean())
    assert errors[0] > 3  # chance is 6 of 12 bits
    # Keys of width 6 have close neighbours that blend into the read: not 0, but far below.
    assert torch.stack(errors[-10:]).mean() < 1.2
