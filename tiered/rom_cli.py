"""``tiered rom build`` and ``tiered rom info``: make and inspect key/value stores."""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tiered.config_errors import OneLineArgumentParser
from tiered.storage import DTYPES, ROM_CHUNK_ROWS, KVStore, StoreError

KINDS = ".npy, .npz or .pt file or a zarr array"


def load_array(path: str, name: str) -> np.ndarray:
    """A 2-D array from .npy, .npz (the array called ``name``, or the only one), .pt, or
    a zarr array (a path or URL). Every failure is a ``StoreError`` naming ``--<name>``."""
    where = f"rom build: --{name} {path!r}"
    if "://" not in path and not Path(path).exists():
        raise StoreError(f"{where}: no such file or folder (expected a {KINDS})")
    try:
        array = _read_array(path, name, where)
    except StoreError:
        raise
    except Exception as error:  # numpy, torch and zarr each raise their own kinds
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StoreError(f"{where}: cannot be read as a {KINDS}: {detail}") from error
    if len(array.shape) != 2:
        raise StoreError(f"{where}: must be 2-D (rows, width), got shape {tuple(array.shape)}")
    return array  # type: ignore[return-value]


def _read_array(path: str, name: str, where: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    if path.endswith(".npz"):
        with np.load(path) as archive:
            names = list(archive.keys())
            if name in names:
                return archive[name]
            if len(names) == 1:
                return archive[names[0]]
            raise StoreError(f"{where}: holds arrays {names}; name one {name!r}")
    if path.endswith(".pt"):
        import torch

        return torch.load(path, map_location="cpu", weights_only=True).numpy()
    import zarr

    return zarr.open_array(path, mode="r")  # type: ignore[return-value]


def _progress(done: int, total: int, start: float) -> None:
    rate = done / max(time.perf_counter() - start, 1e-9)
    print(f"\r  {done}/{total} rows ({100 * done / total:.0f}%, {rate:,.0f} rows/s)", end="",
          file=sys.stderr, flush=True)  # fmt: skip


def build(args: argparse.Namespace) -> int:
    keys = load_array(args.keys, "keys")
    values = load_array(args.values, "values")
    if keys.shape[0] != values.shape[0]:
        raise StoreError(
            f"rom build: --keys {args.keys!r} has {keys.shape[0]} rows but --values "
            f"{args.values!r} has {values.shape[0]}; give one value row per key row"
        )
    out = str(args.out)
    local = "://" not in out
    if local:
        out = str(Path(out))  # no trailing slash: the temporary names sit beside the target
        recover_interrupted_builds(out)
    if not args.overwrite and _exists(out):
        raise StoreError(f"rom build: {out!r} exists; pass --overwrite to replace it")
    # Local stores are built beside the target and renamed into place when complete, so an
    # interrupted build never leaves a half-written store under the target's name.
    target = f"{out}.building-{os.getpid()}" if local else out
    try:
        store = KVStore.create(target, keys.shape[1], values.shape[1], dtype=args.dtype,
                               chunk_rows=args.chunk_rows, overwrite=not local)  # fmt: skip
    except OSError as error:
        if local:
            shutil.rmtree(target, ignore_errors=True)
        raise StoreError(f"rom build: --out {out!r} cannot be written: {error}") from error
    # Appends of whole chunks: a batch that started mid-chunk would make zarr rewrite it.
    step = args.chunk_rows * max(1, 65536 // args.chunk_rows)
    total, start = keys.shape[0], time.perf_counter()
    try:
        for begin in range(0, total, step):
            end = min(total, begin + step)
            store.append(np.asarray(keys[begin:end]), np.asarray(values[begin:end]))
            _progress(end, total, start)
        print(file=sys.stderr)
        from tiered.knn import load_faiss, normalize_rows

        faiss = load_faiss() if args.index != "none" else None
        if args.index == "faiss" or (args.index == "auto" and faiss is not None):
            if faiss is None:
                raise StoreError("rom build: --index faiss needs FAISS (pip install tiered[faiss])")
            import torch

            from tiered.tiers.rom import build_faiss_index

            unit = normalize_rows(torch.from_numpy(store.read_keys())).numpy()
            index = build_faiss_index(faiss, unit)
            store.save_index(faiss.serialize_index(index))
        if local:
            # Move the old store aside, the new one in, then delete the old: a kill between
            # the two renames leaves the old store whole under .old-<pid>, and the next
            # build puts it back (recover_interrupted_builds).
            old = f"{out}.old-{os.getpid()}"
            if Path(out).exists():
                os.replace(out, old)
            os.replace(target, out)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if local:
            shutil.rmtree(target, ignore_errors=True)
        raise
    print(f"built {out}: {total} rows in {time.perf_counter() - start:.1f} s")
    info(argparse.Namespace(store=out))
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def recover_interrupted_builds(out: str) -> None:
    """Tidy what killed builds of ``out`` left beside it: remove their unfinished
    ``.building-<pid>`` stores, and put back an ``.old-<pid>`` store that was moved aside
    for ``--overwrite`` when no new store replaced it. Leaves the files of live builds."""
    path = Path(out)
    for kind in ("building", "old"):
        for leftover in sorted(path.parent.glob(f"{glob.escape(path.name)}.{kind}-*")):
            pid = leftover.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not path.exists():
                os.replace(leftover, path)
                print(f"rom build: restored {out} from an interrupted --overwrite", file=sys.stderr)
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def _exists(url: str) -> bool:
    if "://" not in url:
        return Path(url).exists()
    try:
        KVStore.open(url)
    except StoreError:
        return False
    return True


def _size_on_disk(url: str) -> str:
    if "://" in url:
        return "n/a (remote store)"
    total = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())
    return f"{total / 2**20:.1f} MiB"


def info(args: argparse.Namespace) -> int:
    store = KVStore.open(str(args.store), mode="r")
    details = store.info()
    for field, value in details.__dict__.items():
        print(f"{field:12s} {value}")
    print(f"{'size':12s} {_size_on_disk(str(args.store))}")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(
        prog="tiered rom", description="Key/value stores for the ROM and Disk tiers."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=OneLineArgumentParser
    )
    b = commands.add_parser("build", help="write a store from key and value arrays")
    b.add_argument("--keys", required=True, help=".npy, .npz, .pt or a zarr array")
    b.add_argument("--values", required=True, help=".npy, .npz, .pt or a zarr array")
    b.add_argument("--out", required=True, help="store path or fsspec URL")
    b.add_argument("--dtype", choices=DTYPES, default="float32")
    b.add_argument("--chunk-rows", type=positive_int, default=ROM_CHUNK_ROWS)
    b.add_argument("--index", choices=("auto", "faiss", "none"), default="auto")
    b.add_argument("--overwrite", action="store_true")
    i = commands.add_parser("info", help="rows, widths, index and size of a store")
    i.add_argument("store")
    args = parser.parse_args(argv)
    try:
        return build(args) if args.command == "build" else info(args)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file system refusal the checks above did not foresee
        print(f"error: rom {args.command}: {error}", file=sys.stderr)
        return 2
