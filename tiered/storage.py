"""Key/value memory stores on zarr v3: the format behind the ROM and Disk tiers.

A store is one zarr v3 group (a local directory by default; any fsspec URL works, e.g.
``memory://name`` or ``s3://bucket/path`` with s3fs installed) holding

    keys    (rows, key_width)    float16 or float32, chunked by rows
    values  (rows, value_width)  float16 or float32, chunked by rows
    attributes: format "tiered-kv", format_version, metric ("cosine"), committed_rows

and optionally ``faiss_index``, a uint8 array with a serialised FAISS index of the keys.

Crash safety: an append first grows the arrays and writes the new rows, and only then
advances ``committed_rows`` (each metadata and chunk write is atomic: zarr writes to a
temporary file and renames it). Readers only ever see rows below ``committed_rows``, so a
writer killed mid-append leaves a store that opens, reads and appends again, with no
partial row visible: the next append overwrites the uncommitted tail.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import zarr

FORMAT = "tiered-kv"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
# Rows per chunk: zarr pays a fixed cost for every chunk a read touches, and an append
# rewrites the last, partial chunk. Measured with experiments/benchmarks/rom_read.py (batch
# 32, 4 heads, k 8, widths 32/16; experiments/results/rom_read.md): a read step's random rows
# took 2-3x less time with 4096-row chunks than with 1024, and 1.4-2x less again with 16384,
# at 2^16..2^22 rows. Stores that are appended to a few rows at a time (the Disk tier) keep
# DEFAULT_CHUNK_ROWS; stores built once for reading (``tiered rom build``) use ROM_CHUNK_ROWS.
DEFAULT_CHUNK_ROWS = 4096
ROM_CHUNK_ROWS = 16384


class StoreError(ValueError):
    """A store that is missing, malformed, or used in a way it does not allow."""


class StoreNotFoundError(StoreError):
    """No store at the URL."""


class IncompleteStoreError(StoreError):
    """A store whose creation has not finished: another process is creating it, or a
    creation was interrupted. Creation writes the attributes last, so a store without them
    holds no committed rows."""


class StoreLockedError(StoreError):
    """Another writer holds the store's writer lock."""


def lock_path(url: str) -> Path:
    """The writer lock beside a local store: ``<parent>/.<name>.lock``."""
    path = Path(url)
    return path.parent / f".{path.name}.lock"


class WriterLock:
    """One writer per store: an advisory ``flock`` on a file beside it.

    The kernel drops the lock when the holder closes it or its process ends in any way
    (SIGKILL included), so a crashed writer never leaves a store locked. The file keeps the
    holder's process id and host, to name it in the error another writer gets. Stores
    behind a URL (``memory://``, object storage) have no such lock: one writer per store
    is then the caller's to arrange.
    """

    def __init__(self, file: IO[str], path: Path) -> None:
        self.file: IO[str] | None = file
        self.path = path
        self.pid = os.getpid()

    @classmethod
    def acquire(cls, url: str) -> WriterLock | None:
        """Take the lock of the store (or folder) at ``url`` now, or raise
        ``StoreLockedError`` naming the holder and the lock file; None behind a URL."""
        if "://" in url:
            return None
        import fcntl

        path = lock_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another writer"
            file.close()
            raise StoreLockedError(f"{holder} holds the writer lock {str(path)!r}") from None
        except OSError as error:  # a filesystem without flock (some NFS and FUSE mounts)
            file.close()
            warnings.warn(
                f"no writer lock for {url!r}: {path.parent} does not support file locks "
                f"({error}); one writer at a time is then yours to arrange",
                stacklevel=2,
            )
            return None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on host {socket.gethostname()}")
        file.flush()
        return cls(file, path)

    @property
    def held_here(self) -> bool:
        """Whether this process took the lock (a forked child inherits the file, not the
        right to write: it must take a lock of its own)."""
        return self.file is not None and self.pid == os.getpid()

    def release(self) -> None:
        """Give the lock up (closing the file drops it)."""
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass(frozen=True)
class StoreInfo:
    """What ``tiered rom info`` prints."""

    url: str
    rows: int
    key_width: int
    value_width: int
    dtype: str
    chunk_rows: int
    metric: str
    index: str


class KVStore:
    """An open key/value store. Use ``KVStore.create`` or ``KVStore.open``."""

    def __init__(self, group: zarr.Group, url: str, read_only: bool) -> None:
        self.group = group
        self.url = url
        self.read_only = read_only
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT or "keys" not in group or "values" not in group:
            raise StoreError(f"store {url!r} is not a tiered key/value store (format {FORMAT!r})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"store {url!r} has format_version {attrs.get('format_version')!r}; this "
                f"tiered reads version {FORMAT_VERSION}"
            )
        self.keys: Any = group["keys"]
        self.values: Any = group["values"]

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        url: str | Path,
        key_width: int,
        value_width: int,
        dtype: str = "float32",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
    ) -> KVStore:
        """Create an empty store; refuses to replace an existing one unless ``overwrite``."""
        if dtype not in DTYPES:
            raise StoreError(f"store: dtype must be one of {DTYPES}, got {dtype!r}")
        for name, value in (("key_width", key_width), ("value_width", value_width),
                            ("chunk_rows", chunk_rows)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StoreError(f"store: {name} must be a positive integer, got {value!r}")
        url = str(url)
        try:
            group = zarr.open_group(url, mode="w" if overwrite else "w-")
        except (
            FileExistsError,
            zarr.errors.ContainsGroupError,
            zarr.errors.ContainsArrayError,
        ) as error:
            raise StoreError(
                f"store {url!r} already exists; pass overwrite to replace it"
            ) from error
        group.create_array(
            "keys", shape=(0, key_width), chunks=(chunk_rows, key_width), dtype=dtype
        )
        group.create_array(
            "values", shape=(0, value_width), chunks=(chunk_rows, value_width), dtype=dtype
        )
        # One metadata write: ``group.attrs.update`` would write once per key, and a reader
        # in another process could see the format without ``committed_rows``.
        group.update_attributes(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "metric": "cosine",
                "committed_rows": 0,
            }
        )
        return cls(group, url, read_only=False)

    @classmethod
    def open(cls, url: str | Path, mode: str = "r") -> KVStore:
        """Open a store read-only (``"r"``) or for appending (``"a"``)."""
        if mode not in ("r", "a"):
            raise StoreError(f"store: mode must be 'r' (read-only) or 'a' (append), got {mode!r}")
        url = str(url)
        if "://" not in url and not Path(url).exists():
            raise StoreNotFoundError(f"store {url!r} does not exist")
        try:
            group = zarr.open_group(url, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
            raise StoreNotFoundError(
                f"store {url!r} does not exist or is not a zarr group"
            ) from error
        attrs = dict(group.attrs)
        unfinished = not attrs or (attrs.get("format") == FORMAT and "committed_rows" not in attrs)
        if unfinished and set(group.keys()) <= {"keys", "values"}:
            # No attributes yet (or, from a writer that set them one at a time, our format
            # without committed_rows) and nothing but our arrays: a creation not finished.
            # Any other group fails the format check in __init__ (never mistaken for ours).
            raise IncompleteStoreError(
                f"store {url!r} is incomplete (no committed_rows attribute yet): another "
                f"process is creating it, or its creation was interrupted; it holds no rows"
            )
        return cls(group, url, read_only=mode == "r")

    # --------------------------------------------------------------- properties
    @property
    def rows(self) -> int:
        """Committed rows: the only rows readers see."""
        return int(self.group.attrs["committed_rows"])

    @property
    def key_width(self) -> int:
        return int(self.keys.shape[1])

    @property
    def value_width(self) -> int:
        return int(self.values.shape[1])

    def info(self) -> StoreInfo:
        index = (
            "faiss (saved)"
            if "faiss_index" in self.group
            else "none saved (exact or built on open)"
        )
        return StoreInfo(
            url=self.url,
            rows=self.rows,
            key_width=self.key_width,
            value_width=self.value_width,
            dtype=str(self.keys.dtype),
            chunk_rows=int(self.keys.chunks[0]),
            metric=str(self.group.attrs.get("metric")),
            index=index,
        )

    # ------------------------------------------------------------------- reads
    def _read(self, array: Any, start: int, stop: int | None) -> np.ndarray:
        stop = self.rows if stop is None else min(stop, self.rows)
        return np.asarray(array[start:stop], dtype=np.float32)

    def _take(self, array: Any, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise StoreError(f"store {self.url!r}: rows must lie in [0, {self.rows})")
        unique, inverse = np.unique(rows, return_inverse=True)  # zarr reads sorted, once
        fetched = np.asarray(array.get_orthogonal_selection((unique, slice(None))))
        return fetched.astype(np.float32)[inverse.reshape(-1)]

    def read_keys(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Keys of committed rows [start, stop) as float32 (rows, key_width)."""
        return self._read(self.keys, start, stop)

    def read_values(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Values of committed rows [start, stop) as float32 (rows, value_width)."""
        return self._read(self.values, start, stop)

    def take_keys(self, rows: np.ndarray) -> np.ndarray:
        """Keys of the given committed rows (any order, repeats allowed): (n, key_width)."""
        return self._take(self.keys, rows)

    def take_values(self, rows: np.ndarray) -> np.ndarray:
        """Values of the given committed rows (any order, repeats allowed): (n, value_width)."""
        return self._take(self.values, rows)

    # ------------------------------------------------------------------ writes
    def append(self, keys: np.ndarray, values: np.ndarray) -> int:
        """Append rows, crash-safely; returns the new committed row count."""
        if self.read_only:
            raise StoreError(f"store {self.url!r} is open read-only; open it with mode='a'")
        keys = np.asarray(keys)
        values = np.asarray(values)
        if keys.ndim != 2 or keys.shape[1] != self.key_width:
            raise StoreError(
                f"store {self.url!r}: keys must have shape (rows, {self.key_width}), "
                f"got {keys.shape}"
            )
        if values.ndim != 2 or values.shape[1] != self.value_width:
            raise StoreError(
                f"store {self.url!r}: values must have shape (rows, {self.value_width}), "
                f"got {values.shape}"
            )
        if len(keys) != len(values):
            raise StoreError(f"store: {len(keys)} keys but {len(values)} values")
        start = self.rows
        stop = start + len(keys)
        # Grow (or cut back an uncommitted tail left by a crash), write, then commit.
        self.keys.resize((stop, self.key_width))
        self.values.resize((stop, self.value_width))
        self.keys[start:stop] = keys.astype(self.keys.dtype)
        self.values[start:stop] = values.astype(self.values.dtype)
        self.group.attrs["committed_rows"] = stop
        return stop

    def save_index(self, blob: np.ndarray) -> None:
        """Store a serialised FAISS index (uint8) beside the arrays."""
        if self.read_only:
            raise StoreError(f"store {self.url!r} is open read-only")
        if "faiss_index" in self.group:
            del self.group["faiss_index"]
        array = self.group.create_array(
            "faiss_index",
            shape=blob.shape,
            chunks=(max(1, min(len(blob), 1 << 24)),),
            dtype="uint8",
        )
        array[:] = blob
        array.attrs["rows"] = self.rows

    def load_index(self) -> tuple[np.ndarray, int] | None:
        """The saved FAISS index and the row count it covers, or None."""
        if "faiss_index" not in self.group:
            return None
        array = self.group["faiss_index"]
        return np.asarray(array[:], dtype=np.uint8), int(array.attrs.get("rows", -1))


def open_store(owner: str, url: str, mode: str = "r") -> KVStore:
    """``KVStore.open`` for ``owner`` (a tier or task): its errors name the owner too."""
    try:
        return KVStore.open(url, mode=mode)
    except StoreError as error:
        raise type(error)(f"{owner}: {error}") from None
