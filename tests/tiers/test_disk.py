"""Disk: appends on ticks, reads by kNN, persists across runs, one shard per rank."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from copy import deepcopy

import pytest
import torch

from tiered.controllers import LSTMController
from tiered.storage import KVStore, StoreError
from tiered.tiers import Disk, Register

DK, DV, R = 4, 3, 2


def _interface(disk: Disk, queries, strength, keys, values) -> torch.Tensor:
    B = keys.shape[0]
    return torch.cat(
        [queries.reshape(B, -1), torch.full((B, R), float(strength)), keys, values], dim=1
    ).double()


def test_appends_on_ticks_and_reads_back_by_key(tmp_path):
    disk = Disk(str(tmp_path / "disk"), DK, DV, k=4, read_heads=R, period=2).double()
    state = disk.initial_state(3)
    keys = torch.eye(DK)[:3].double() * 5  # three distinct directions
    values = torch.arange(9, dtype=torch.float64).reshape(3, DV)
    queries = keys.unsqueeze(1).expand(3, R, DK)
    writes = []
    for _ in range(4):  # ticks at steps 0 and 2: 6 rows
        read, state, stats = disk(_interface(disk, queries, 5000.0, keys, values), state)
        writes.append(stats.write_mass[0].item())
        assert torch.equal(stats.wrote, stats.write_mass)  # 1 row of weight 1, or none
    assert writes == [1.0, 0.0, 1.0, 0.0] and disk.rows == 6
    torch.testing.assert_close(read.reshape(3, R, DV), values.unsqueeze(1).expand(3, R, DV))
    assert (stats.rewrite == 0).all() and stats.slots_used.tolist() == [6.0] * 3
    # strength 5000 on stored keys: each head reads one row (twice stored), entropy log 2
    torch.testing.assert_close(stats.read_entropy, torch.full((3,), 0.6931471805599453).double())


def test_the_value_cache_serves_a_repeated_read(tmp_path):
    disk = Disk(str(tmp_path / "disk"), DK, DV, k=2, read_heads=R, period=1).double()
    assert disk.has_value_cache
    keys = torch.eye(DK)[:3].double() * 5
    values = torch.arange(9, dtype=torch.float64).reshape(3, DV)
    queries = keys.unsqueeze(1).expand(3, R, DK)
    disk.eval()  # read only: no appends
    state = disk.initial_state(3)
    _, state, empty = disk(_interface(disk, queries, 5.0, keys, values), state)
    assert empty.value_reads.tolist() == empty.cache_hits.tolist() == [0.0] * 3  # no rows
    assert all(torch.isfinite(field).all() for field in empty)
    disk.train()  # one append of 3 rows, then the read sees them, all misses
    _, state, first = disk(_interface(disk, queries, 5.0, keys, values), state)
    assert first.value_reads.tolist() == [R * 2.0] * 3 and first.cache_hits.tolist() == [0.0] * 3
    disk.eval()
    _, _, second = disk(_interface(disk, queries, 5.0, keys, values), state)
    assert second.cache_hits.tolist() == second.value_reads.tolist() == [R * 2.0] * 3


def test_a_new_run_sees_what_the_last_one_wrote(tmp_path):
    first = Disk(str(tmp_path / "disk"), DK, DV, period=1)
    first(torch.randn(5, first.interface_size), first.initial_state(5))
    second = Disk(str(tmp_path / "disk"), DK, DV, period=1)
    assert second.rows == 5
    with pytest.raises(StoreError, match=r"widths \(4, 3\), the tier was given \(4, 2\)"):
        _ = Disk(str(tmp_path / "disk"), DK, 2).rows


def test_gradients_reach_the_queries_not_the_written_rows(tmp_path):
    disk = Disk(str(tmp_path / "disk"), DK, DV, k=3, read_heads=R, period=1).double()
    interface = torch.randn(4, disk.interface_size, dtype=torch.float64, requires_grad=True)
    read, _, _ = disk(interface, disk.initial_state(4))
    read.sum().backward()
    written = interface.grad[:, R * (DK + 1) :]
    assert written.abs().max() == 0
    assert interface.grad[:, : R * DK].abs().sum() > 0


WRITER = textwrap.dedent(
    """
    import sys, torch
    from tiered.tiers import Disk
    disk = Disk(sys.argv[1], 4, 3, period=1, rank=int(sys.argv[2]))
    state = disk.initial_state(2)
    for _ in range(25):
        _, state, _ = disk(torch.full((2, disk.interface_size), float(sys.argv[2]) + 1), state)
    print(disk.own.rows)
    """
)


def test_each_rank_appends_to_its_own_shard_and_everyone_reads_all(tmp_path):
    store = str(tmp_path / "disk")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store, str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert all(w.returncode == 0 for w in writers), outputs
    assert [int(out) for out, _ in outputs] == [50, 50]
    for rank in (0, 1):
        shard = KVStore.open(f"{store}/rank-{rank}")
        assert shard.rows == 50 and (shard.read_values() == rank + 1).all()
    assert Disk(store, 4, 3).rows == 100


def test_checkpoints_record_the_rows_and_reject_a_shorter_store(tmp_path):
    disk = Disk(str(tmp_path / "disk"), DK, DV, period=1)
    controller = LSTMController(3, 2, Register(5), [disk])
    controller(torch.randn(2, 3, 3))
    saved = controller.state_dict()
    assert saved["tiers.0._extra_state"]["rows"] == 6
    fresh = LSTMController(3, 2, Register(5), [Disk(str(tmp_path / "other"), DK, DV)])
    with pytest.raises(StoreError, match="saw 6 rows .* has only 0"):
        fresh.load_state_dict(saved)
    out = controller(torch.randn(2, 4, 3))
    out.output.sum().backward()
    assert (out.aux["disk"].wrote == 1).all()


def test_a_shard_another_rank_is_still_creating_is_skipped_not_fatal(tmp_path):
    import zarr

    from tiered.storage import IncompleteStoreError

    store = tmp_path / "disk"
    writer = Disk(str(store), DK, DV, read_heads=R, rank=0)
    interface = _interface(writer, torch.randn(2, R, DK), 1.0, torch.randn(2, DK),
                           torch.randn(2, DV))  # fmt: skip
    writer(interface, writer.initial_state(2))  # appends 2 rows on its first tick
    half = zarr.open_group(str(store / "rank-1"), mode="w-")  # as mid-way through create
    half.create_array("keys", shape=(0, DK), chunks=(8, DK), dtype="float32")
    with pytest.raises(IncompleteStoreError, match="rank-1' is incomplete"):
        KVStore.open(str(store / "rank-1"))
    reader = Disk(str(store), DK, DV, rank=2)
    assert reader.rows == 2  # rank 0's rows; rank 1's shard is not ready yet
    own = Disk(str(store), DK, DV, rank=1)  # its own interrupted creation: remade, empty
    assert own.rows == 2 and KVStore.open(str(store / "rank-1")).rows == 0
    other = zarr.open_group(str(store / "rank-3"), mode="w-")  # someone else's group
    other.attrs["note"] = "not a tiered store"
    with pytest.raises(StoreError, match="is not a tiered key/value store"):
        _ = Disk(str(store), DK, DV, rank=3).rows  # refused, never overwritten
    assert dict(zarr.open_group(str(store / "rank-3"), mode="r").attrs) == {
        "note": "not a tiered store"
    }


def test_under_real_ddp_each_rank_fills_its_own_shard_and_a_new_run_reads_both(tmp_path):
    """`tiered fit` with a Disk on 2 gloo processes: two shards, every row visible after."""
    store = tmp_path / "disk"
    stack = tmp_path / "disk_stack.yaml"
    stack.write_text(textwrap.dedent(f"""\
        model:
          class_path: tiered.TieredModule
          init_args:
            controller:
              class_path: tiered.controllers.LSTMController
              init_args:
                register: {{class_path: tiered.tiers.Register, init_args: {{hidden_size: 8}}}}
                tiers:
                  - class_path: tiered.tiers.Disk
                    init_args: {{store: {store}, key_width: 4, value_width: 3, period: 2}}
        data:
          class_path: tiered.tasks.Copy
          init_args: {{lengths: [1, 4], batch_size: 4, train_batches: 4, val_batches: 1}}
        """))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "tiered.cli", "fit", "--config", str(stack),
         "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    shards = sorted(p.name for p in store.iterdir() if p.is_dir())
    assert shards == ["rank-0", "rank-1"]
    assert sorted(p.name for p in store.glob(".*.lock")) == [".rank-0.lock", ".rank-1.lock"]
    rows = [KVStore.open(str(store / name)).rows for name in shards]
    assert all(n > 0 for n in rows)
    reader = Disk(str(store), 4, 3, rank=0)
    assert reader.rows == sum(rows)


def test_appends_only_in_the_stages_it_names(tmp_path):
    disk = Disk(str(tmp_path / "disk"), DK, DV, period=1)
    interface = torch.randn(3, disk.interface_size)
    disk.eval()  # outside Lightning, eval mode is the "validate" stage
    _, _, stats = disk(interface, disk.initial_state(3))
    assert disk.rows == 0 and (stats.wrote == 0).all() and (stats.write_mass == 0).all()
    for stage in ("sanity_check", "validate", "test", "predict"):
        disk.stage = stage
        disk(interface, disk.initial_state(3))
    assert disk.rows == 0
    disk.stage = "train"
    disk(interface, disk.initial_state(3))
    assert disk.rows == 3
    tester = Disk(str(tmp_path / "other"), DK, DV, period=1, append_stages=["test"])
    tester.stage = "test"
    tester(interface, tester.initial_state(3))
    assert tester.rows == 3
    with pytest.raises(ValueError, match=r"append_stages must be .*'predict'\], got \['eval'\]"):
        Disk(str(tmp_path / "x"), DK, DV, append_stages=["eval"])
    with pytest.raises(ValueError, match=r"append_stages must be .*, got \[3\]"):
        Disk(str(tmp_path / "x"), DK, DV, append_stages=[3])
    with pytest.raises(ValueError, match=r"append_stages must be .*, got 'train'"):
        Disk(str(tmp_path / "x"), DK, DV, append_stages="train")


def _disk_stack(store, task) -> LSTMController:
    return LSTMController(
        input_size=task.input_size, output_size=task.output_size, register=Register(8),
        tiers=[Disk(str(store), 4, 3, period=2)],
    )  # fmt: skip


def _trainer(tmp_path, **kwargs):
    import lightning as L

    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), **kwargs,
    )  # fmt: skip


def test_under_lightning_validation_sanity_check_and_test_leave_the_disk_unchanged(tmp_path):
    from tiered import TieredModule
    from tiered.tasks import Copy

    def fit(store, **kwargs):
        torch.manual_seed(0)
        task = Copy(bits=4, lengths=(2, 3), batch_size=2, train_batches=3, val_batches=2)
        model = TieredModule(_disk_stack(store, task))
        _trainer(tmp_path, max_steps=3, **kwargs).fit(model, datamodule=task)
        return KVStore.open(str(store / "rank-0")).rows, model, task

    rows, model, task = fit(tmp_path / "with_val", num_sanity_val_steps=2, val_check_interval=1)
    alone, _, _ = fit(tmp_path / "no_val", limit_val_batches=0, num_sanity_val_steps=0)
    assert rows == alone > 0  # only the training steps appended
    _trainer(tmp_path).validate(model, datamodule=task)
    _trainer(tmp_path).test(model, datamodule=task)
    _trainer(tmp_path).predict(model, datamodule=task)
    assert KVStore.open(str(tmp_path / "with_val" / "rank-0")).rows == rows
    model.controller.tiers[0].append_stages = ("test",)
    _trainer(tmp_path).test(model, datamodule=task)
    assert KVStore.open(str(tmp_path / "with_val" / "rank-0")).rows > rows


HOLDER = textwrap.dedent(
    """
    import sys, torch
    from tiered.tiers import Disk
    disk = Disk(sys.argv[1], 4, 3, rank=0)
    for i in range(10):
        disk.append(torch.full((2, 4), 1.0), torch.full((2, 3), float(i)))
        if i == 4:
            print("holding", flush=True)
            sys.stdin.readline()  # the second writer tries now
    print(disk.own.rows, flush=True)
    """
)
INTRUDER = textwrap.dedent(
    """
    import sys, torch
    from tiered.tiers import Disk
    disk = Disk(sys.argv[1], 4, 3, rank=0)
    disk.append(torch.full((2, 4), 2.0), torch.full((2, 3), -1.0))
    print(disk.own.rows)
    """
)


def test_a_second_writer_on_a_shard_fails_at_once_and_no_row_is_lost(tmp_path):
    store = str(tmp_path / "disk")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
    intruder = subprocess.run(
        [sys.executable, "-c", INTRUDER, store], capture_output=True, text=True, timeout=300
    )
    assert intruder.returncode != 0
    message = intruder.stderr.strip().splitlines()[-1]
    assert "StoreLockedError: Disk 'disk': shard" in message and "rank-0" in message
    assert f"process {holder.pid} on host" in message
    out, err = holder.communicate("go\n", timeout=300)
    assert holder.returncode == 0, err
    assert int(out) == 20
    shard = KVStore.open(f"{store}/rank-0")
    assert shard.rows == 20
    assert (shard.read_values()[:, 0] == torch.arange(10).repeat_interleave(2).numpy()).all()
    # the holder has exited, so its lock is gone: the next writer appends after its rows
    again = subprocess.run(
        [sys.executable, "-c", INTRUDER, store], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert int(again.stdout) == 22
    assert (KVStore.open(f"{store}/rank-0").read_values()[20:] == -1).all()


def test_close_hands_the_lock_to_the_next_writer_in_the_same_process(tmp_path):
    first = Disk(str(tmp_path / "disk"), DK, DV, rank=0)
    first.append(torch.ones(2, DK), torch.ones(2, DV))
    second = Disk(str(tmp_path / "disk"), DK, DV, rank=0)
    assert second.rows == 2
    with pytest.raises(StoreError, match=f"already has a writer: .*process {os.getpid()}"):
        second.append(torch.ones(1, DK), torch.zeros(1, DV))
    copy = deepcopy(first)  # a copy does not share the lock
    with pytest.raises(StoreError, match="already has a writer"):
        copy.append(torch.ones(1, DK), torch.zeros(1, DV))
    first.close()
    first_rows = KVStore.open(str(tmp_path / "disk" / "rank-0")).rows
    second.append(torch.ones(1, DK), torch.zeros(1, DV))
    assert first_rows == 2 and KVStore.open(str(tmp_path / "disk" / "rank-0")).rows == 3
