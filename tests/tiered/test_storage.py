"""Key/value stores: format, appends, crash safety with a killed writer, concurrent readers."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tiered.rom_cli import main as rom_main
from tiered.storage import KVStore, StoreError


def test_create_append_and_read_back(tmp_path):
    store = KVStore.create(tmp_path / "s", key_width=5, value_width=3, chunk_rows=4)
    keys = np.arange(35, dtype=np.float32).reshape(7, 5)
    values = np.arange(21, dtype=np.float32).reshape(7, 3)
    assert store.append(keys, values) == 7
    assert store.append(keys[:2], values[:2]) == 9
    reader = KVStore.open(tmp_path / "s")
    assert reader.rows == 9 and reader.key_width == 5 and reader.value_width == 3
    np.testing.assert_array_equal(reader.read_keys(0, 7), keys)
    np.testing.assert_array_equal(reader.take_values(np.array([8, 0, 8])), values[[1, 0, 1]])
    assert reader.info().chunk_rows == 4


def test_float16_stores_and_memory_urls(tmp_path):
    store = KVStore.create("memory://tiered-test-fp16", 2, 2, dtype="float16", overwrite=True)
    store.append(np.ones((3, 2)), np.full((3, 2), 0.5))
    reader = KVStore.open("memory://tiered-test-fp16")
    assert reader.rows == 3 and str(reader.keys.dtype) == "float16"
    assert reader.read_values().dtype == np.float32


def test_bad_uses_fail_with_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        KVStore.open(tmp_path / "missing")
    store = KVStore.create(tmp_path / "s", 4, 2)
    with pytest.raises(StoreError, match="already exists"):
        KVStore.create(tmp_path / "s", 4, 2)
    with pytest.raises(StoreError, match=r"keys must have shape \(rows, 4\), got \(3, 5\)"):
        store.append(np.ones((3, 5)), np.ones((3, 2)))
    with pytest.raises(StoreError, match="open read-only"):
        KVStore.open(tmp_path / "s").append(np.ones((1, 4)), np.ones((1, 2)))
    with pytest.raises(StoreError, match="mode must be 'r'"):
        KVStore.open(tmp_path / "s", mode="w")
    with pytest.raises(StoreError, match="dtype must be one of"):
        KVStore.create(tmp_path / "t", 4, 2, dtype="int8")


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from tiered.storage import KVStore
    store = KVStore.open(sys.argv[1], mode="a")
    while True:
        start = store.rows
        rows = np.arange(start, start + 5000, dtype=np.float32)
        keys = np.repeat(rows[:, None], 8, axis=1)
        values = np.repeat(-rows[:, None], 4, axis=1)
        store.append(keys, values)
        print(store.rows, flush=True)
    """
)
READER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from tiered.storage import KVStore
    deadline = time.time() + float(sys.argv[2])
    checks = 0
    while time.time() < deadline:
        store = KVStore.open(sys.argv[1])
        n = store.rows
        if n:
            rows = np.unique(np.random.randint(0, n, size=50))
            keys = store.read_keys()[rows]
            assert (keys == rows[:, None]).all(), "a committed key is wrong"
            assert (store.take_values(rows) == -rows[:, None]).all(), "a committed value is wrong"
            checks += 1
    print(checks)
    """
)


def _consistent(path) -> int:
    store = KVStore.open(path)
    n = store.rows
    keys, values = store.read_keys(), store.read_values()
    assert keys.shape == (n, 8) and values.shape == (n, 4)
    expected = np.arange(n, dtype=np.float32)[:, None]
    assert (keys == expected).all() and (values == -expected).all()
    return n


def test_a_killed_writer_leaves_a_store_that_opens_reads_and_appends(tmp_path):
    path = tmp_path / "store"
    KVStore.create(path, 8, 4, chunk_rows=512)
    counts = []
    for _attempt in range(3):  # kill mid-append several times, at different moments
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        writer.stdout.readline()  # it has committed at least once and is appending again
        time.sleep(0.05 + 0.11 * _attempt)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        counts.append(_consistent(path))
    assert counts[0] > 0 and counts == sorted(counts)
    # one more append after the crashes goes on from the committed rows
    store = KVStore.open(path, mode="a")
    n = store.rows
    rows = np.arange(n, n + 10, dtype=np.float32)[:, None]
    store.append(np.repeat(rows, 8, 1), np.repeat(-rows, 4, 1))
    assert _consistent(path) == n + 10


def test_readers_see_only_committed_rows_while_a_writer_appends(tmp_path):
    path = tmp_path / "store"
    KVStore.create(path, 8, 4, chunk_rows=512)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path), "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [reader.communicate(timeout=120) for reader in readers]
    writer.kill()
    writer.wait()
    for reader, (out, err) in zip(readers, results, strict=True):
        assert reader.returncode == 0, err
        assert int(out) > 0


def test_rom_build_and_info_from_npz_and_pt(tmp_path, capsys):
    import torch

    keys = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    values = np.random.default_rng(1).standard_normal((300, 2)).astype(np.float32)
    np.savez(tmp_path / "kv.npz", keys=keys, values=values)
    torch.save(torch.from_numpy(values), tmp_path / "v.pt")
    out = tmp_path / "store"
    npz, pt = str(tmp_path / "kv.npz"), str(tmp_path / "v.pt")
    assert (
        rom_main(["build", "--keys", npz, "--values", pt, "--out", str(out), "--dtype", "float16"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "rows         300" in printed and "faiss (saved)" in printed
    store = KVStore.open(out)
    np.testing.assert_allclose(store.read_values(), values, atol=1e-2)
    assert rom_main(["build", "--keys", str(tmp_path / "kv.npz"), "--values",
                     str(tmp_path / "v.pt"), "--out", str(out)]) == 2  # exists  # fmt: skip
    assert "exists; pass --overwrite" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", values[:10])
    assert rom_main(["build", "--keys", str(tmp_path / "kv.npz"), "--values",
                     str(tmp_path / "short.npy"), "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "has 300 rows but --values" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("x.building-*"))


def test_rom_build_refuses_to_replace_a_remote_store_without_overwrite(tmp_path, capsys):
    keys = np.ones((4, 3), dtype=np.float32)
    np.save(tmp_path / "k.npy", keys)
    url = "memory://tiered-test-remote-build"
    args = ["build", "--keys", str(tmp_path / "k.npy"), "--values", str(tmp_path / "k.npy"),
            "--out", url, "--index", "none"]  # fmt: skip
    assert rom_main([*args, "--overwrite"]) == 0
    assert rom_main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert KVStore.open(url).rows == 4


def test_create_writes_all_attributes_in_one_metadata_write(tmp_path, monkeypatch):
    """A reader in another process must never see the format without committed_rows."""
    import json

    import zarr.storage

    seen = []
    original = zarr.storage.LocalStore.set

    async def recording_set(self, key, value):
        if key == "zarr.json":
            seen.append(json.loads(value.to_bytes()).get("attributes", {}))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", recording_set)
    KVStore.create(tmp_path / "kv", 4, 3)
    assert seen and seen[-1]["committed_rows"] == 0
    assert all(not attrs or "committed_rows" in attrs for attrs in seen), seen


def test_a_store_with_our_format_but_no_committed_rows_is_incomplete(tmp_path):
    import zarr

    from tiered.storage import IncompleteStoreError

    group = zarr.open_group(str(tmp_path / "kv"), mode="w-")
    group.create_array("keys", shape=(0, 4), chunks=(8, 4), dtype="float32")
    group.create_array("values", shape=(0, 3), chunks=(8, 3), dtype="float32")
    group.attrs["format"] = "tiered-kv"  # as a writer setting attributes one at a time
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        KVStore.open(str(tmp_path / "kv"))


def test_a_chunk_write_that_fails_midway_leaves_the_old_chunk_whole(tmp_path, monkeypatch):
    # Crash safety rests on zarr's local store writing each file to a temporary name and
    # renaming it (zarr >= 3.1.3). A rename that never happens, as when the writer dies
    # just before it, must leave the committed chunk as it was, not a torn one.
    import pathlib

    store = KVStore.create(tmp_path / "s", 3, 2, chunk_rows=4)
    store.append(np.ones((4, 3)), np.ones((4, 2)))
    chunk = next(p for p in (tmp_path / "s" / "keys").rglob("*") if p.is_file() and "c" in p.parts)
    before = chunk.read_bytes()

    def no_rename(self, target):
        raise OSError("killed before the rename")

    monkeypatch.setattr(pathlib.Path, "replace", no_rename)
    with pytest.raises(OSError, match="killed before the rename"):
        store.keys[0:4] = np.full((4, 3), 7.0, dtype=np.float32)
    monkeypatch.undo()
    assert chunk.read_bytes() == before
    assert (KVStore.open(tmp_path / "s").read_keys() == 1).all()


def test_the_zarr_requirement_admits_only_releases_that_write_atomically():
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.version import Version

    (zarr,) = [Requirement(r) for r in requires("tiered") if Requirement(r).name == "zarr"]
    assert not zarr.specifier.contains(Version("3.1.2"))
    assert zarr.specifier.contains(Version("3.1.3"))


def test_rom_build_tidies_what_killed_builds_left_and_restores_a_store_moved_aside(
    tmp_path, capsys
):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    keys = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    np.save(tmp_path / "k.npy", keys)
    np.save(tmp_path / "v.npy", keys[:, :2])
    out = tmp_path / "store"
    # An --overwrite killed between its two renames: the old store aside, no new one yet.
    old = KVStore.create(tmp_path / f"store.old-{dead.pid}", 3, 2)
    old.append(np.ones((5, 3)), np.ones((5, 2)))
    KVStore.create(tmp_path / f"store.building-{dead.pid}", 3, 2)  # a killed build's tail
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f"store.building-{running.pid}"  # a build still running: kept
    live.mkdir()
    args = ["build", "--keys", str(tmp_path / "k.npy"), "--values", str(tmp_path / "v.npy"),
            "--out", str(out), "--index", "none"]  # fmt: skip
    assert rom_main(args) == 2  # the restored store exists: no --overwrite, no build
    assert "restored" in capsys.readouterr().err and KVStore.open(out).rows == 5
    assert not (tmp_path / f"store.building-{dead.pid}").exists()
    assert rom_main([*args, "--overwrite"]) == 0
    assert KVStore.open(out).rows == 40
    running.kill()
    running.wait()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("store."))
    assert leftovers == [live.name]
