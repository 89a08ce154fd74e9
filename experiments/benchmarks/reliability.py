"""Reliability: faults injected and survived, bad inputs tried, concurrent readers and writers.

Three measurements of the library's reliability claims (docs/storage.md, docs/sweeps.md):

1. Faults. SIGKILL at a random moment (seeded) during
   - ``tiered rom build`` (the real CLI, a subprocess) on keys/values it writes, into a new
     target and over an existing store (``--overwrite``), with and without a FAISS index;
   - a Disk append loop: a process that opens ``tiered.tiers.Disk`` on one store folder and
     appends rows that are a function of their index, printing the committed row count
     after each ``Disk.append`` returns; the same folder is reused by every trial;
   - checkpoint saves: a process that fits a small ``TieredModule`` for one step, then calls
     ``trainer.save_checkpoint`` to one file over and over (the weights set to a function of
     the save number), printing after each save returns; once with TMPDIR on the checkpoint's
     filesystem and once with TMPDIR on another one (/dev/shm), since Lightning's save
     writes a temporary file in TMPDIR and moves it into place;
   - ``tiered sweep run`` of a one-run sweep (the sweep process and its ``tiered fit`` child
     killed together); the sweep is then run again, resumed, killed again, and finally run
     to completion; and, a few times, the sweep process alone (its training child lives on).
   After each kill the store or checkpoint must open and hold every row (save, step) the
   child reported as committed, with the content that was written.
   The Disk and checkpoint children are forked from a process that imported torch and
   Lightning once (a SIGKILL of a forked child is a SIGKILL like any other); the ROM build
   and the sweeps are fresh ``tiered`` processes.
2. Bad inputs. For every constructor argument of every tier, task (SequenceTask subclass)
   and controller, found by walking ``tiered.tiers``, ``tiered.tasks`` and
   ``tiered.controllers``: a value of the wrong type and an out-of-range value, the other
   arguments valid. Recorded: raised or not, the exception type, whether the message names
   the class, the argument and the value, and whether anything was written to disk. Then
   malformed YAML to ``tiered fit --config F --print_config`` and malformed sweep files to
   ``tiered sweep run F --dry-run``: exit code, whether the error names the file, the
   field and the value, whether a traceback was printed, and whether anything was written.
3. Concurrency. One writer process per shard and N reader processes on one Disk-style store
   folder for a fixed time: the writers append rows that are a function of their index; the
   readers open the shards again and again and check every row they read.

Writes reliability.md, reliability.csv (summary), reliability_faults.csv,
reliability_inputs.csv and reliability_concurrency.csv under experiments/results/.

    .venv/bin/python experiments/benchmarks/reliability.py [--trials 20] [--readers 4]
        [--shards 2] [--seconds 20] [--seed 0] [--parts faults inputs concurrency]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "experiments" / "results"
PYTHON = sys.executable
TIERED = str(Path(sys.executable).parent / "tiered")

KW, VW = 32, 16  # key and value widths of every store written here
ROM_ROWS = 98304  # two appends of `tiered rom build` (it appends 65536 rows at a time)
SWEEP_STEPS, SWEEP_VAL_EVERY = 200, 40
CKPT_HIDDEN = 384  # register hidden size of the checkpointed model (about 9 MB with Adam)
RUN_NAME = "base,seed=0"  # the one run of the sweep written here
# Kill windows measured once, before the jobs start: sweep (whole run, after the training
# set-up) and rom build (index none, index auto).
_calibration: dict[str, tuple[float, float]] = {}
_calibration_lock = threading.Lock()
_observed: dict[str, tuple[int, int]] = {}  # last.ckpt writes and validations, clean sweep


# ---------------------------------------------------------------------------------------
# Rows that are a function of their index: every check compares against these.


def row_content(start: int, stop: int, width: int, salt: int) -> np.ndarray:
    """Rows [start, stop) of a deterministic float32 table: column 0 is the row index, the
    others a hash of (row, column, salt) on a 1/256 grid (exact in float16 and float32)."""
    i = np.arange(start, stop, dtype=np.int64)[:, None]
    j = np.arange(width, dtype=np.int64)[None, :]
    h = (i * 2654435761 + j * 40503 + salt * 7919) % 4096
    out = ((h - 2048) / 256.0).astype(np.float32)
    out[:, 0] = (i[:, 0] % (1 << 24)).astype(np.float32)
    return out


def bad_rows(keys: np.ndarray, values: np.ndarray, start: int, salts: tuple[int, int]) -> int:
    """How many rows of (keys, values), which start at row ``start``, differ from the table."""
    n = len(keys)
    if n == 0:
        return 0
    want_k = row_content(start, start + n, keys.shape[1], salts[0])
    want_v = row_content(start, start + n, values.shape[1], salts[1])
    wrong = ~(np.all(keys == want_k, axis=1) & np.all(values == want_v, axis=1))
    return int(wrong.sum())


def check_store(url: str, salts: tuple[int, int], block: int = 1 << 16) -> tuple[int, int]:
    """(committed rows, rows whose content is wrong) of the store at ``url``."""
    from tiered.storage import KVStore

    store = KVStore.open(url, mode="r")
    rows, wrong = store.rows, 0
    for begin in range(0, rows, block):
        stop = min(rows, begin + block)
        wrong += bad_rows(
            store.read_keys(begin, stop), store.read_values(begin, stop), begin, salts
        )
    return rows, wrong


def count_files(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern)) if folder.exists() else 0


# ---------------------------------------------------------------------------------------
# Children: the processes that get killed or that read and write concurrently. They run
# this file with --child and import only what they need.


def emit(line: str) -> None:
    """One line to stdout in one write: a child killed mid-line (PYTHONUNBUFFERED makes
    print() write each piece separately) must not leave half a line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def numbers(lines: list[str], word: str) -> list[int]:
    """N of every complete line "word N"."""
    found = (re.fullmatch(rf"{word} (\d+)", line) for line in lines)
    return [int(m.group(1)) for m in found if m]


def _child_disk(cmd: dict[str, Any]) -> None:
    """Open a Disk on the folder and append rows until killed, printing the committed count."""
    import torch

    from tiered.tiers import Disk

    torch.set_num_threads(1)
    disk = Disk(cmd["store"], key_width=KW, value_width=VW, rank=0)
    _ = disk.rows  # opens the shards (creating rank-0 when missing) and loads the keys
    n = disk.own.rows
    rng = np.random.default_rng(cmd["seed"])
    emit(f"ready {n}")
    while True:
        m = int(rng.integers(1, 257))
        keys = torch.from_numpy(row_content(n, n + m, KW, 1))
        values = torch.from_numpy(row_content(n, n + m, VW, 2))
        disk.append(keys, values)
        n += m
        emit(f"committed {n}")


def _ckpt_model(hidden: int) -> tuple[Any, Any]:
    from tiered import TieredModule
    from tiered.controllers import LSTMController
    from tiered.tasks import Copy
    from tiered.tiers import Register

    task = Copy(
        bits=4,
        lengths=(1, 3),
        eval_lengths=(4, 5),
        batch_size=4,
        train_batches=1,
        val_batches=1,
        test_batches=1,
    )
    controller = LSTMController(task.input_size, task.output_size, Register(hidden_size=hidden))
    return TieredModule(controller, loss=task.loss), task


def ckpt_pattern(param: Any, index: int) -> Any:
    """The weights of save number ``index``: index + (position mod 251) / 256, exact."""
    import torch

    flat = (torch.arange(param.numel()) % 251).float() / 256.0 + float(index)
    return flat.reshape(param.shape)


def _child_ckpt(cmd: dict[str, Any]) -> None:
    """Fit one step, then save a checkpoint to one file over and over until killed."""
    import lightning as L
    import torch

    torch.set_num_threads(1)
    model, task = _ckpt_model(cmd["hidden"])
    plugins = []
    if cmd.get("atomic"):  # what the tiered command installs
        from tiered.checkpoint import AtomicCheckpointIO

        plugins = [AtomicCheckpointIO()]
    trainer = L.Trainer(
        plugins=plugins,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=task)
    emit("ready")
    index = cmd["start"]
    while True:
        index += 1
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(ckpt_pattern(param, index))
        trainer.save_checkpoint(cmd["path"])
        emit(f"saved {index}")


def _child_zygote(kind: str) -> None:
    """Import once, then fork one worker per command line on stdin and report its exit."""
    import torch  # noqa: F401

    if kind == "ckpt":
        import lightning  # noqa: F401

        import tiered.module
    import tiered.tiers  # noqa: F401

    work = {"disk": _child_disk, "ckpt": _child_ckpt}[kind]
    emit("zygote-ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.environ.update(cmd.get("env", {}))
                tempfile.tempdir = None  # read TMPDIR again
                work(cmd)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        emit(f"forked {pid}")
        _, status = os.waitpid(pid, 0)
        emit(f"exited {pid} {status}")


def _child_writer(url: str, salts: tuple[int, int], seconds: float, seed: int) -> None:
    from tiered.storage import KVStore

    store = KVStore.open(url, mode="a")
    rng = np.random.default_rng(seed)
    emit("ready")
    sys.stdin.readline()  # "go"
    n, appends, deadline = store.rows, 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = int(rng.integers(1, 257))
        store.append(row_content(n, n + m, KW, salts[0]), row_content(n, n + m, VW, salts[1]))
        n += m
        appends += 1
    print(json.dumps({"role": "writer", "store": url, "appends": appends, "rows": n}), flush=True)


def _child_reader(urls: list[str], salts: list[tuple[int, int]], seconds: float, seed: int) -> None:
    from tiered.storage import KVStore

    rng = np.random.default_rng(seed)
    emit("ready")
    sys.stdin.readline()  # "go"
    reads = checked = wrong = beyond = errors = 0
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        shard = int(rng.integers(len(urls)))
        try:
            store = KVStore.open(urls[shard], mode="r")
            n = store.rows
            mode = ("all", "range", "take")[int(rng.integers(3))]
            if n == 0:
                mode = "all"
            if mode == "all":
                start, stop = 0, n
                keys, values = store.read_keys(), store.read_values()
            elif mode == "range":  # may ask for rows past the committed ones
                start = int(rng.integers(n))
                stop = start + int(rng.integers(1, 2048))
                keys, values = store.read_keys(start, stop), store.read_values(start, stop)
                stop = min(stop, n)
            else:
                rows = np.sort(rng.integers(0, n, size=64))
                keys, values = store.take_keys(rows), store.take_values(rows)
                start, stop = 0, 0
                got = keys[:, 0].astype(np.int64)
                wrong += int((got != rows).sum())
                for r in range(len(rows)):
                    wrong += bad_rows(
                        keys[r : r + 1], values[r : r + 1], int(rows[r]), salts[shard]
                    )
                checked += len(rows)
            if mode != "take":
                if len(keys) != stop - start or len(values) != stop - start:
                    beyond += 1  # more (or fewer) rows than committed_rows allows
                wrong += bad_rows(keys, values, start, salts[shard])
                checked += len(keys)
            if len(store.read_keys(n, n + 4096)):  # nothing past committed_rows
                beyond += 1
            reads += 1
        except Exception as error:  # recorded, not raised: the count is the result
            errors += 1
            if len(messages) < 3:
                messages.append(f"{type(error).__name__}: {error}"[:300])
    print(
        json.dumps(
            {
                "role": "reader",
                "reads": reads,
                "rows_checked": checked,
                "bad_rows": wrong,
                "past_committed": beyond,
                "errors": errors,
                "messages": messages,
            }
        ),
        flush=True,
    )


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--kind")
    parser.add_argument("--stores", nargs="+")
    parser.add_argument("--salts", type=int, nargs="+")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.child == "zygote":
        _child_zygote(args.kind)
    elif args.child == "writer":
        _child_writer(args.stores[0], (args.salts[0], args.salts[1]), args.seconds, args.seed)
    elif args.child == "reader":
        pairs = [(args.salts[2 * i], args.salts[2 * i + 1]) for i in range(len(args.stores))]
        _child_reader(args.stores, pairs, args.seconds, args.seed)


# ---------------------------------------------------------------------------------------
# Process helpers


class Lines:
    """The stdout lines of a child, read by a thread, with the time each arrived."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.queue.put((time.monotonic(), line.rstrip("\n")))
        self.queue.put((time.monotonic(), None))

    def until(self, predicate: Any, timeout: float) -> tuple[str | None, list[str]]:
        """Lines up to and including the first for which ``predicate`` holds (None at EOF
        or timeout)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None, seen
            if line is None:
                return None, seen
            seen.append(line)
            if predicate(line):
                return line, seen


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(pid: int) -> list[int]:
    """Freeze ``pid`` and all its descendants, then SIGKILL them all at once."""
    frozen: list[int] = []
    for _ in range(10):
        new = [p for p in [pid, *descendants(pid)] if p not in frozen]
        if not new:
            break
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        frozen += new
    for p in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return frozen


def wait_gone(pids: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    env.pop("PYTHONPATH", None)
    return env


class Zygote:
    """A child that imported torch (and Lightning) once and forks one worker per trial."""

    def __init__(self, kind: str, log: Path) -> None:
        self.log = log
        self.err = open(log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--child", "zygote", "--kind", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env=child_env(),
            cwd=log.parent,
        )
        self.lines = Lines(self.proc.stdout)
        ready, seen = self.lines.until(lambda s: s == "zygote-ready", 180)
        if ready is None:
            raise RuntimeError(f"zygote {kind} did not start: {seen} {self.stderr_tail()}")

    def stderr_tail(self, chars: int = 600) -> str:
        self.err.flush()
        return self.log.read_text()[-chars:]

    def trial(self, cmd: dict[str, Any], ready_prefix: str, delay: float) -> dict[str, Any]:
        """Fork a worker, wait for its ready line, SIGKILL it ``delay`` s later; returns
        the lines it printed and whether it was still working when killed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        forked, _ = self.lines.until(lambda s: s.startswith("forked"), 60)
        if forked is None:
            raise RuntimeError(f"zygote did not fork: {self.stderr_tail()}")
        pid = int(forked.split()[1])
        ready, _ = self.lines.until(
            lambda s: s.startswith(ready_prefix) or f"exited {pid} " in s, 120
        )
        result: dict[str, Any] = {"pid": pid, "ready_line": ready, "lines": []}
        if ready is None or not ready.startswith(ready_prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.lines.until(lambda s: f"exited {pid} " in s, 60)
            result["error"] = f"worker failed before it was ready: {self.stderr_tail()}"
            return result
        time.sleep(delay)
        working = alive(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        exited, lines = self.lines.until(lambda s: f"exited {pid} " in s, 60)
        result.update(lines=lines, working=working)
        if exited is None:
            result["error"] = "worker did not exit after SIGKILL"
        elif not working:
            result["error"] = f"worker exited on its own before the kill: {self.stderr_tail()}"
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()


# ---------------------------------------------------------------------------------------
# 1. Faults


@dataclass
class Trial:
    """One fault injected and what was found afterwards."""

    fault: str
    trial: int
    delay_s: float
    killed_while_working: bool
    reported: int  # rows / saves / steps the child reported as committed
    found: int  # rows / the save / the step the store or checkpoint holds
    opened: bool
    lost: int  # committed units missing or wrong
    bad_rows: int  # rows present with the wrong content
    completed: str = ""  # sweeps: whether the resumed sweep completed ("" when n/a)
    detail: str = ""


def disk_trials(scratch: Path, trials: int, rng: random.Random, say: Any) -> list[Trial]:
    """SIGKILL a Disk append loop; one store folder for all trials."""
    folder = scratch / "disk_store"
    zygote = Zygote("disk", scratch / "disk_zygote.log")
    out: list[Trial] = []
    try:
        for t in range(trials):
            delay = rng.uniform(0.0, 1.5)
            res = zygote.trial(
                {"store": str(folder), "seed": rng.randrange(1 << 30)}, "ready", delay
            )
            committed = numbers(res["lines"], "committed")
            start = int(res["ready_line"].split()[1]) if res.get("ready_line") else 0
            reported = max(committed, default=start)
            trial = Trial(
                "disk",
                t,
                delay,
                res.get("working", False),
                reported,
                0,
                False,
                0,
                0,
                detail=res.get("error", ""),
            )
            try:
                rows, wrong = check_store(f"{folder}/rank-0", (1, 2))
                trial.opened, trial.found, trial.bad_rows = True, rows, wrong
                trial.lost = max(0, reported - rows) + wrong
                appends = len(committed)
                trial.detail = trial.detail or f"{appends} appends before the kill"
            except Exception as error:
                trial.detail = f"store did not open: {type(error).__name__}: {error}"
                trial.lost = reported
            out.append(trial)
            say(f"disk {t}: {asdict(trial)}")
    finally:
        zygote.close()
    leftovers = count_files(folder, "*.partial")
    if out:
        out[-1].detail += f"; zarr .partial files left in the store: {leftovers}"
    return out


def ckpt_trials(
    scratch: Path,
    trials: int,
    rng: random.Random,
    say: Any,
    name: str,
    tmpdir: Path,
    atomic: bool = False,
) -> list[Trial]:
    """SIGKILL a loop of trainer.save_checkpoint to one file; check the file after each.
    ``atomic``: save through tiered's AtomicCheckpointIO (what ``tiered fit`` uses) instead
    of Lightning's own TorchCheckpointIO."""
    import torch
    from lightning.fabric.utilities.cloud_io import _load as pl_load

    from tiered import TieredModule

    work = scratch / name
    work.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(parents=True, exist_ok=True)
    path = work / "model.ckpt"
    zygote = Zygote("ckpt", work / "zygote.log")
    model, _ = _ckpt_model(CKPT_HIDDEN)
    names = [n for n, _ in model.named_parameters()]
    size_mb = 0.0
    last = 0  # the save number the file held after the previous trial
    out: list[Trial] = []
    try:
        for t in range(trials):
            delay = rng.uniform(0.0, 1.0)
            cmd = {
                "path": str(path),
                "start": last,
                "hidden": CKPT_HIDDEN,
                "atomic": atomic,
                "env": {"TMPDIR": str(tmpdir)},
            }
            res = zygote.trial(cmd, "ready", delay)
            saves = numbers(res["lines"], "saved")
            reported = max(saves, default=last)
            trial = Trial(
                name,
                t,
                delay,
                res.get("working", False),
                reported,
                0,
                False,
                0,
                0,
                detail=res.get("error", ""),
            )
            if not path.exists():
                trial.opened = reported == 0
                trial.detail = trial.detail or "no checkpoint yet (killed before the first save)"
                trial.lost = reported
            else:
                try:
                    size_mb = path.stat().st_size / 2**20
                    ckpt = pl_load(str(path), map_location="cpu")
                    state = ckpt["state_dict"]
                    index = round(float(state[names[0]].reshape(-1)[0]))
                    wrong = sum(
                        not torch.equal(state[n], ckpt_pattern(state[n], index)) for n in names
                    )
                    loaded = TieredModule.load_from_checkpoint(
                        str(path),
                        controller=_ckpt_model(CKPT_HIDDEN)[0].controller,
                        map_location="cpu",
                    )
                    got = next(loaded.parameters()).reshape(-1)[0].item()
                    trial.opened = True
                    trial.found = index
                    trial.bad_rows = wrong + (0 if got == index else 1)
                    trial.lost = max(0, reported - index) + trial.bad_rows
                    last = max(last, index)
                    trial.detail = trial.detail or (
                        f"{len(saves)} saves; file holds save {index} "
                        f"({'the one in flight' if index > reported else 'the last reported'})"
                    )
                except Exception as error:
                    trial.detail = f"checkpoint did not load: {type(error).__name__}: {error}"[:400]
                    trial.lost = reported
                    with contextlib.suppress(OSError):
                        path.unlink()  # start the next trial from no file
            out.append(trial)
            say(f"{name} {t}: {asdict(trial)}")
    finally:
        zygote.close()
    leftovers = sum(1 for p in tmpdir.iterdir())
    if out:
        out[
            -1
        ].detail += f"; checkpoint {size_mb:.1f} MB; temporary files left in TMPDIR: {leftovers}"
    return out


def rom_trials(scratch: Path, trials: int, rng: random.Random, say: Any) -> list[Trial]:
    """SIGKILL ``tiered rom build``; the target must be absent, or a complete store (the new
    one, or for --overwrite the old one)."""
    from tiered.rom_cli import main as rom_main
    from tiered.storage import KVStore

    work = scratch / "rom"
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "keys.npy", row_content(0, ROM_ROWS, KW, 1))
    np.save(work / "values.npy", row_content(0, ROM_ROWS, VW, 2))
    old_rows = ROM_ROWS // 2
    np.save(work / "old_keys.npy", row_content(0, old_rows, KW, 3))
    np.save(work / "old_values.npy", row_content(0, old_rows, VW, 4))

    def command(out: Path, index: str, overwrite: bool) -> list[str]:
        cmd = [
            TIERED,
            "rom",
            "build",
            "--keys",
            str(work / "keys.npy"),
            "--values",
            str(work / "values.npy"),
            "--out",
            str(out),
            "--chunk-rows",
            "4096",
            "--index",
            index,
        ]
        return [*cmd, "--overwrite"] if overwrite else cmd

    def start(out: Path, index: str, overwrite: bool) -> tuple[subprocess.Popen, float | None]:
        """Start a build; returns it and when its temporary store appeared (None: never)."""
        log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            command(out, index, overwrite),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=work,
        )
        log.close()
        while proc.poll() is None:
            if list(out.parent.glob(f"{out.name}.building-*")):
                return proc, time.monotonic()
            time.sleep(0.002)
        return proc, None

    # Calibration: how long the writing part of a build takes, from the moment its
    # temporary store appears to its exit, with and without the FAISS index.
    # Measured once (main() calls this with trials=0 before the jobs start).
    with _calibration_lock:
        if "rom" not in _calibration:
            measured = []
            for index in ("none", "auto"):
                target = work / f"calibrate_{index}"
                proc, began = start(target, index, False)
                proc.wait()
                if began is None or proc.returncode != 0:
                    log = (work / f"{target.name}.log").read_text()[-1000:]
                    raise RuntimeError(f"rom build calibration failed ({proc.returncode}): {log}")
                measured.append(time.monotonic() - began)
                shutil.rmtree(target)
            _calibration["rom"] = (measured[0], measured[1])
            say(f"rom: a clean build takes {measured} s (index none, auto) after it writes")
    window = dict(zip(("none", "auto"), _calibration["rom"], strict=True))
    out: list[Trial] = []
    for t in range(trials):
        index = ("none", "auto")[t % 2]
        overwrite = (t // 2) % 2 == 1
        target = work / f"store_{t}"
        if overwrite:  # an existing, complete store that the build replaces
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                rom_main(
                    [
                        "build",
                        "--keys",
                        str(work / "old_keys.npy"),
                        "--values",
                        str(work / "old_values.npy"),
                        "--out",
                        str(target),
                        "--index",
                        "none",
                    ]
                )
        delay = rng.uniform(0.0, window[index])
        proc, began = start(target, index, overwrite)
        working = False
        if began is not None:
            time.sleep(max(0.0, began + delay - time.monotonic()))
            working = proc.poll() is None
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        proc.wait()
        log = (work / f"{target.name}.log").read_text()
        built = f"built {target}" in log
        mode = f"index {index}, {'over an existing store' if overwrite else 'new target'}"
        trial = Trial(
            "rom build", t, delay, working, ROM_ROWS if built else 0, 0, True, 0, 0, detail=mode
        )
        if began is None:
            trial.detail += f"; the build never started writing: {log[-300:]}"
        leftovers = len(list(work.glob(f"{target.name}.building-*")))
        if not target.exists():
            trial.found = 0
            trial.lost = old_rows if overwrite else trial.reported
            if overwrite:
                trial.detail += "; the old store is gone and no new one is in its place"
        else:
            try:
                store = KVStore.open(str(target))
                first = store.read_keys(0, 1)
                new = len(first) == 0 or bool(np.all(first == row_content(0, 1, KW, 1)))
                salts = (1, 2) if new else (3, 4)
                rows, wrong = check_store(str(target), salts)
                trial.found, trial.bad_rows = rows, wrong
                if new:  # a store under the target's name must be complete
                    trial.lost = (ROM_ROWS - rows) + wrong
                else:  # the old one: complete, and not there if the CLI said it built
                    trial.lost = (old_rows - rows) + wrong + trial.reported
                    if not overwrite:
                        trial.detail += "; an old store where none was"
                has_index = store.load_index() is not None
                which = "new" if new else "old"
                trial.detail += f"; target holds the {which} store ({rows} rows"
                trial.detail += ", FAISS index)" if has_index else ")"
                if which == "new" and index == "auto" and not has_index and built:
                    trial.detail += "; FAISS index missing"
            except Exception as error:
                trial.opened = False
                trial.lost = old_rows if overwrite else ROM_ROWS
                trial.detail += f"; target does not open: {type(error).__name__}: {error}"
        if leftovers:
            trial.detail += f"; {leftovers} temporary '.building-<pid>' folder left behind"
        out.append(trial)
        say(f"rom {t}: {asdict(trial)}")
    return out


def write_sweep_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(
        "seed_everything: 0\n"
        "trainer:\n"
        f"  max_steps: {SWEEP_STEPS}\n"
        f"  val_check_interval: {SWEEP_VAL_EVERY}\n"
        "  check_val_every_n_epoch: null\n"
        "  log_every_n_steps: 5\n"
        "  enable_model_summary: false\n"
        "  logger:  # metrics.csv written every 5 steps, so a kill finds what was validated\n"
        "    class_path: lightning.pytorch.loggers.CSVLogger\n"
        "    init_args: {save_dir: runs, flush_logs_every_n_steps: 5}\n"
        "data:\n"
        "  class_path: tiered.tasks.Copy\n"
        "  init_args: {bits: 4, lengths: [1, 4], eval_lengths: [5, 6], batch_size: 8,\n"
        "              train_batches: 100000, val_batches: 2, test_batches: 2}\n"
    )
    (folder / "stack.yaml").write_text(
        "model:\n"
        "  class_path: tiered.TieredModule\n"
        "  init_args:\n"
        "    controller:\n"
        "      class_path: tiered.controllers.LSTMController\n"
        "      init_args:\n"
        "        register: {class_path: tiered.tiers.Register, init_args: {hidden_size: 16}}\n"
        "        tiers: []\n"
        "    optimizer:\n"
        "      class_path: torch.optim.Adam\n"
        "      init_args: {lr: 3.0e-3}\n"
    )
    sweep = folder / "sweep.yaml"
    sweep.write_text(
        "base: [task.yaml, stack.yaml]\nseeds: [0]\nmetric: {name: val/bit_errors, mode: min}\n"
    )
    return sweep


def ckpt_step(path: Path) -> int:
    from lightning.fabric.utilities.cloud_io import _load as pl_load

    return int(pl_load(str(path), map_location="cpu")["global_step"])


def sweep_files_state(out: Path) -> dict[str, Any]:
    """What a sweep folder holds: each file parsed, the checkpoint loaded."""
    import yaml

    run = out / RUN_NAME
    state: dict[str, Any] = {"errors": []}
    for name, parse in (
        ("sweep.yaml", yaml.safe_load),
        ("runs.json", json.loads),
        (f"{RUN_NAME}/status.json", json.loads),
    ):
        path = out / name
        if path.exists():
            try:
                state[name] = parse(path.read_text())
            except Exception as error:
                state["errors"].append(f"{name} does not parse: {type(error).__name__}: {error}")
    last = run / "checkpoints" / "last.ckpt"
    state["ckpt_step"] = None
    if last.exists():
        try:
            state["ckpt_step"] = ckpt_step(last)
        except Exception as error:
            state["errors"].append(f"last.ckpt does not load: {type(error).__name__}: {error}")
    state["tmp"] = count_files(run, "status.json.tmp")
    return state


def newest_min_step(out: Path) -> int | None:
    """The first step logged by the newest attempt (logs/version_*/metrics.csv)."""
    versions = sorted(
        (out / RUN_NAME / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[-1])
    )
    if not versions or not (versions[-1] / "metrics.csv").exists():
        return None
    with open(versions[-1] / "metrics.csv", newline="") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("step")]
    return min(steps) if steps else None


def versions(out: Path) -> set[Path]:
    return set((out / RUN_NAME / "logs").glob("version_*"))


def validated_step(out: Path, before: set[Path]) -> int:
    """The last step the attempts since ``before`` validated, from their metrics.csv (written
    every 5 steps here). docs/sweeps.md says last.ckpt is written at every validation, so a
    checkpoint at least this far should exist."""
    best = 0
    for version in versions(out) - before:
        path = version / "metrics.csv"
        if not path.exists():
            continue
        try:
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("val/loss") and row.get("step"):
                        best = max(best, int(row["step"]) + 1)
        except (ValueError, csv.Error):
            continue  # a line cut by the kill
    return best


class SweepRun:
    """One ``tiered sweep run`` process (its own process group)."""

    def __init__(self, sweep: Path, out: Path) -> None:
        self.out = out
        self.configs_before = self.configs()
        self.proc = subprocess.Popen(
            [TIERED, "sweep", "run", str(sweep), "--out", str(out), "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
            cwd=sweep.parent,
            start_new_session=True,
        )
        self.lines = Lines(self.proc.stdout)
        self.ready, self.head = self.lines.until(lambda s: s.startswith("sweep: 1 runs"), 120)
        self.began = time.monotonic()

    def configs(self) -> set[Path]:
        return set((self.out / RUN_NAME / "logs").glob("version_*/config.yaml"))

    def training_started(self, timeout: float = 180) -> float | None:
        """When this run's ``tiered fit`` wrote its config.yaml (set up, about to train);
        None if the sweep ended first."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.configs() - self.configs_before:
                return time.monotonic()
            time.sleep(0.01)
        return None

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        _, rest = self.lines.until(lambda s: False, timeout)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            code = self.proc.wait()
        return code, "\n".join(self.head + rest)


def sweep_calibrate(scratch: Path) -> tuple[Path, tuple[float, float]]:
    """The sweep file, and how long a clean run takes after its first line and after its
    training process is set up (measured once, shared by both sweep fault kinds)."""
    work = scratch / "sweep"
    with _calibration_lock:
        if "sweep" not in _calibration:
            _calibration["sweep"] = _sweep_window(write_sweep_files(work), work)
    return work / "sweep.yaml", _calibration["sweep"]


def _sweep_window(sweep: Path, work: Path) -> tuple[float, float]:
    run = SweepRun(sweep, work / "calibrate")
    if run.ready is None:
        raise RuntimeError(f"sweep did not start: {run.head}")
    training, last, writes = None, None, 0
    run_dir = work / "calibrate" / RUN_NAME
    while run.proc.poll() is None:  # when training is set up; each write of last.ckpt
        if training is None and run.configs() - run.configs_before:
            training = time.monotonic()
        with contextlib.suppress(FileNotFoundError):
            stat = (run_dir / "checkpoints" / "last.ckpt").stat()
            if (stat.st_ino, stat.st_mtime_ns) != last:
                last, writes = (stat.st_ino, stat.st_mtime_ns), writes + 1
        time.sleep(0.002)
    end = time.monotonic()
    code, text = run.finish()
    validations = sum(
        1
        for path in run_dir.glob("logs/version_*/metrics.csv")
        for row in csv.DictReader(open(path, newline=""))  # noqa: SIM115
        if row.get("val/loss")
    )
    _observed["ckpt_writes"] = (writes, validations)
    window = (end - run.began, end - (training or run.began))
    state = sweep_files_state(work / "calibrate")
    if code != 0 or state.get(f"{RUN_NAME}/status.json", {}).get("state") != "finished":
        raise RuntimeError(f"sweep calibration failed ({code}): {text[-2000:]}")
    return window


def sweep_trials(
    scratch: Path, trials: int, rng: random.Random, say: Any, chain: int
) -> list[Trial]:
    """Kill the sweep and its training process together at a random moment, ``chain`` times
    in a row on one sweep folder (each run after the first resumes), then run it to the end."""
    sweep, (window, train_window) = sweep_calibrate(scratch)
    say(
        f"sweep: a clean run takes {window:.1f} s after its first line, {train_window:.1f} s "
        "after its training process is set up"
    )
    out: list[Trial] = []
    t = 0
    while t < trials:
        folder = scratch / "sweep" / f"chain_{t}"
        for _ in range(min(chain, trials - t)):
            before = sweep_files_state(folder)
            before_status = before.get(f"{RUN_NAME}/status.json", {})
            # Even trials: a moment of the whole run; odd ones: a moment of its training.
            during_training = t % 2 == 1
            delay = rng.uniform(0.0, train_window if during_training else window)
            versions_before = versions(folder)
            run = SweepRun(sweep, folder)
            trial = Trial("sweep run", t, delay, False, before["ckpt_step"] or 0, 0, True, 0, 0)
            trial.detail = "kill timed from the training set-up; " if during_training else ""
            if run.ready is None:
                trial.detail = f"sweep did not start: {run.head[-5:]}"
            else:
                anchor = run.training_started() if during_training else run.began
                time.sleep(max(0.0, (anchor or time.monotonic()) + delay - time.monotonic()))
                trial.killed_while_working = run.proc.poll() is None
                pids = kill_tree(run.proc.pid)
                run.proc.wait()
                if not wait_gone(pids):
                    trial.detail += "processes still alive after SIGKILL; "
            state = sweep_files_state(folder)
            status = state.get(f"{RUN_NAME}/status.json", {})
            trial.opened = not state["errors"]
            trial.found = state["ckpt_step"] or 0
            # Committed progress: the checkpoint there was before, and every validation
            # logged (docs/sweeps.md: last.ckpt is written at every validation). A checkpoint
            # behind that, going backwards, or no longer loading, is lost progress.
            validated = validated_step(folder, versions_before)
            trial.reported = max(trial.reported, validated)
            trial.lost = max(0, trial.reported - trial.found)
            notes = list(state["errors"])
            notes.append(f"validated up to step {validated} (metrics.csv)")
            wrote_status = status.get("attempts", 0) > before_status.get("attempts", 0)
            if wrote_status and bool(status.get("resumed")) != (before["ckpt_step"] is not None):
                notes.append(
                    f"resumed={status.get('resumed')} but a checkpoint "
                    f"{'existed' if before['ckpt_step'] is not None else 'did not'}"
                )
                trial.lost += 1
            notes.append(
                f"state {status.get('state', 'none')}, checkpoint step {state['ckpt_step']}"
            )
            if state["tmp"]:
                notes.append("status.json.tmp left behind")
            trial.detail += "; ".join(notes)
            out.append(trial)
            say(f"sweep {t}: {asdict(trial)}")
            t += 1
            if status.get("state") == "finished":
                break  # killed after the run had finished: the next kill starts a new sweep
        # Run the same sweep again, to the end: it must resume and finish.
        before = sweep_files_state(folder)
        done_before = before.get(f"{RUN_NAME}/status.json", {})
        run = SweepRun(sweep, folder)
        code, text = run.finish()
        state = sweep_files_state(folder)
        status = state.get(f"{RUN_NAME}/status.json", {})
        problems = list(state["errors"])
        if done_before.get("state") == "finished":  # nothing to run: it must stay as it was
            if status.get("attempts") != done_before.get("attempts"):
                problems.append("a finished run was run again")
            before["ckpt_step"] = None if not status.get("resumed") else before["ckpt_step"]
        if code != 0:
            problems.append(f"exit code {code}: {text[-300:]}")
        if status.get("state") != "finished" or status.get("metric") is None:
            problems.append(
                f"status {status.get('state')}, metric {status.get('metric')}, "
                f"error {status.get('error')}"
            )
        if state["ckpt_step"] != SWEEP_STEPS:
            problems.append(f"final checkpoint at step {state['ckpt_step']}, not {SWEEP_STEPS}")
        if bool(status.get("resumed")) != (before["ckpt_step"] is not None):
            problems.append(
                f"resumed={status.get('resumed')} with a checkpoint at step {before['ckpt_step']}"
            )
        first = newest_min_step(folder)
        if (
            done_before.get("state") != "finished"
            and before["ckpt_step"]
            and first is not None
            and first < before["ckpt_step"] - 1
        ):
            problems.append(f"restarted at step {first} with a checkpoint at {before['ckpt_step']}")
        if not (folder / "report.md").exists():
            problems.append("no report.md")
        last = out[-1]
        how = (
            "it had finished before the last kill"
            if done_before.get("state") == "finished"
            else f"resumed from step {before['ckpt_step']}"
        )
        last.completed = (
            "no: " + "; ".join(problems)
            if problems
            else f"yes ({how}; {status.get('attempts')} attempts)"
        )
        say(f"sweep chain ending {last.trial}: completed {last.completed}")
    return out


def _watch_overlap(
    rerun_pid: list[int], orphans: list[int], stop: threading.Event, overlap: list[bool]
) -> None:
    """Note in ``overlap`` whether the rerun had a child while an orphan still ran."""
    while not stop.is_set():
        if rerun_pid and descendants(rerun_pid[0]) and any(alive(p) for p in orphans):
            overlap.append(True)
            return
        time.sleep(0.1)


def sweep_parent_trials(scratch: Path, trials: int, rng: random.Random, say: Any) -> list[Trial]:
    """SIGKILL only the ``tiered sweep run`` process; its training child (its own session)
    lives on. Run the sweep again at once: it must not start a second training beside the
    orphan (the run folder's lock). Once the orphan has ended, run it again, to the end."""
    sweep, (window, _) = sweep_calibrate(scratch)
    out: list[Trial] = []
    for t in range(trials):
        folder = scratch / "sweep" / f"parent_{t}"
        delay = rng.uniform(0.0, window)
        run = SweepRun(sweep, folder)
        trial = Trial("sweep run, sweep process only", t, delay, False, 0, 0, True, 0, 0)
        orphans: list[int] = []
        if run.ready is not None:
            time.sleep(max(0.0, run.began + delay - time.monotonic()))
            trial.killed_while_working = run.proc.poll() is None
            orphans = descendants(run.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        state = sweep_files_state(folder)
        trial.reported = state["ckpt_step"] or 0
        orphan_alive = [p for p in orphans if alive(p)]
        overlap: list[bool] = []
        stop = threading.Event()

        rerun_pid: list[int] = []
        watcher = threading.Thread(
            target=_watch_overlap, args=(rerun_pid, orphan_alive, stop, overlap), daemon=True
        )
        watcher.start()
        rerun = SweepRun(sweep, folder)
        rerun_pid.append(rerun.proc.pid)
        code, _ = rerun.finish()
        stop.set()
        watcher.join()
        overlapped = bool(overlap)
        orphan_done = wait_gone(orphan_alive, timeout=120)
        if not orphan_done:
            for p in orphan_alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        state = sweep_files_state(folder)
        status = state.get(f"{RUN_NAME}/status.json", {})
        if status.get("state") != "finished":  # the orphan ended: now to the end
            code, _ = SweepRun(sweep, folder).finish()
            state = sweep_files_state(folder)
            status = state.get(f"{RUN_NAME}/status.json", {})
        trial.opened = not state["errors"]
        trial.found = state["ckpt_step"] or 0
        trial.lost = max(0, trial.reported - trial.found)
        problems = list(state["errors"])
        if code != 0 or status.get("state") != "finished":
            problems.append(f"exit {code}, status {status.get('state')}: {status.get('error')}")
        if state["ckpt_step"] != SWEEP_STEPS:
            problems.append(f"final checkpoint at step {state['ckpt_step']}")
        trial.completed = "no: " + "; ".join(problems) if problems else "yes"
        versions = len(list((folder / RUN_NAME / "logs").glob("version_*")))
        notes = [
            "its training process lived on after the kill"
            if orphan_alive
            else "no training process outlived the kill"
        ]
        if overlapped:
            notes.append("the rerun started a second training of the same run while it ran")
            problems.append("a second training ran beside the orphan")
            trial.completed = "no: " + "; ".join(problems)
        elif orphan_alive:
            notes.append("the immediate rerun started no second training")
        if not orphan_done:
            notes.append("the orphan was still running 120 s after the rerun ended")
        notes.append(f"{versions} log versions")
        trial.detail = "; ".join(notes)
        out.append(trial)
        say(f"sweep-parent {t}: {asdict(trial)}")
    return out


# ---------------------------------------------------------------------------------------
# 2. Bad inputs

# Arguments for which 0 is a valid value (from the classes' docstrings): the out-of-range
# integer tried for them is -1 only.
ZERO_ALLOWED = {"seed", "num_workers", "rank", "links"}


@dataclass
class Case:
    group: str  # constructor / tiered fit / tiered sweep
    owner: str
    field: str
    kind: str  # wrong type / out of range
    value: str
    raised: bool = False
    exception: str = ""
    names_owner: bool = False
    names_field: bool = False
    names_value: bool = False
    names_file: str = ""  # "yes" / "no" for files, "" for constructors
    traceback: bool = False
    exit_code: str = ""
    wrote: bool = False
    verdict: str = ""
    message: str = ""


def _names_value(message: str, tokens: list[str]) -> bool:
    for token in tokens:
        if re.fullmatch(r"-?[\d.]+", token):  # a number: not as part of another number
            if re.search(rf"(?<![\w.\-]){re.escape(token)}(?![\w.])", message):
                return True
        elif token in message:
            return True
    return False


def _names_word(message: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", message) is not None


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() or p.is_dir()
    }


def discover() -> list[type]:
    """Every concrete tier, task and controller class in the three packages."""
    import importlib
    import pkgutil

    import tiered.controllers
    import tiered.tasks
    import tiered.tiers
    from tiered.controllers.base import Controller
    from tiered.tasks.base import SequenceTask
    from tiered.tier import Tier

    found: dict[str, type] = {}
    for package, base in (
        (tiered.tiers, Tier),
        (tiered.tasks, SequenceTask),
        (tiered.controllers, Controller),
    ):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            loaded = importlib.import_module(module.name)
            for _, cls in inspect.getmembers(loaded, inspect.isclass):
                if issubclass(cls, base) and cls is not base and not inspect.isabstract(cls):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def parameters(cls: type) -> list[inspect.Parameter]:
    """Constructor parameters, following ``**kwargs`` into the base classes."""
    params: list[inspect.Parameter] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        own = [p for p in sig.parameters.values() if p.name != "self"]
        params += [
            p
            for p in own
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and p.name not in {q.name for q in params}
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in own):
            break
    return params


def bad_values(
    param: inspect.Parameter, cls_name: str, not_a_store: str
) -> list[tuple[str, Any, list[str]]]:
    """(kind, value, tokens that name the value) to try for ``param``."""
    from tiered.tiers import Cache, Register

    ann = str(param.annotation).replace(" ", "")
    name = param.name
    cases: list[tuple[str, Any, list[str]]] = []
    if ann in ("int", "int|None"):
        cases += [
            ("wrong type", "eight", ["eight"]),
            ("wrong type", [3], ["[3]"]),
            ("wrong type", 2.5, ["2.5"]),
            ("out of range", -1, ["-1"]),
        ]
        if name not in ZERO_ALLOWED:
            cases.append(("out of range", 0, ["0"]))
    elif ann in ("float", "float|None"):
        cases += [
            ("wrong type", "half", ["half"]),
            ("wrong type", [0.5], ["[0.5]"]),
            ("out of range", -1.0, ["-1.0", "-1"]),
            ("out of range", float("nan"), ["nan"]),
        ]
    elif ann == "bool":
        cases += [("wrong type", "no", ["no"]), ("wrong type", 2, ["2"])]
    elif ann in ("str", "str|None", "bool|str"):
        cases.append(("wrong type", 12345, ["12345"]))
        if name == "store":  # a file that is no store (a missing one is valid for the Disk)
            cases.append(("out of range", not_a_store, [not_a_store]))
        else:
            bad = "bad name!" if name == "name" else "bogus"
            cases.append(("out of range", bad, [bad]))
    elif ann == "tuple[int,int]":
        cases += [
            ("wrong type", "1-20", ["1-20"]),
            ("wrong type", 5, ["5"]),
            ("out of range", [0, 5], ["[0, 5]", "(0, 5)"]),
            ("out of range", [5, 2], ["[5, 2]", "(5, 2)"]),
            ("out of range", [1, 2, 3], ["[1, 2, 3]", "(1, 2, 3)"]),
        ]
    elif ann == "int|tuple[int,int]":
        cases += [
            ("wrong type", "two", ["two"]),
            ("wrong type", [1.5, 2], ["[1.5, 2]", "1.5"]),
            ("out of range", 0, ["0"]),
            ("out of range", -1, ["-1"]),
            ("out of range", [5, 2], ["[5, 2]", "(5, 2)"]),
        ]
    elif ann.startswith("list[str]"):
        cases += [
            ("wrong type", "train", ["train", "str"]),
            ("wrong type", [3], ["[3]"]),
            ("out of range", ["bogus"], ["bogus"]),
        ]
    elif ann == "Register":
        cases += [("wrong type", "register", ["register", "str"]), ("wrong type", 3, ["3", "int"])]
    elif ann in ("list[Tier]|None", "list[Tier]"):
        cases += [
            ("wrong type", "ram", ["ram", "str"]),
            ("wrong type", [3], ["[3]", "int"]),
            ("out of range", [Register(hidden_size=4)], ["Register"]),
            ("out of range", [Cache(slots=2, width=2), Cache(slots=2, width=2)], ["cache"]),
        ]
    else:
        cases.append(("wrong type", object(), ["object"]))
    return cases


def constructor_cases(scratch: Path, say: Any) -> list[Case]:
    from tiered.storage import KVStore
    from tiered.tiers import Register

    store = scratch / "tiny_store"
    kv = KVStore.create(str(store), 4, 4, chunk_rows=64)
    kv.append(row_content(0, 64, 4, 1), row_content(0, 64, 4, 2))
    disk = scratch / "disk_folder"
    not_a_store = scratch / "not_a_store.txt"
    not_a_store.write_text("not a store\n")
    # Valid values of the required arguments (and small sizes), per class name.
    base: dict[str, dict[str, Any]] = {
        "Register": {"hidden_size": 8},
        "Cache": {"slots": 4, "width": 4},
        "RAM": {"slots": 16, "width": 4},
        "ROM": {"store": str(store)},
        "Disk": {"store": str(disk), "key_width": 4, "value_width": 4},
        "LSTMController": {"input_size": 3, "output_size": 2, "register": None},
        "KeyValueLookup": {"store": str(store)},
    }
    cases: list[Case] = []
    for cls in discover():
        owner = cls.__name__
        params = parameters(cls)
        required = [p.name for p in params if p.default is inspect.Parameter.empty]
        valid = dict(base.get(owner, {}))
        if any(r not in valid for r in required):
            cases.append(
                Case(
                    "constructor",
                    owner,
                    ",".join(required),
                    "n/a",
                    "n/a",
                    verdict="skipped: no valid base arguments for this class",
                )
            )
            continue
        for param in params:
            for kind, value, tokens in bad_values(param, owner, str(not_a_store)):
                args = dict(valid)
                if "register" in args and args["register"] is None:
                    args["register"] = Register(hidden_size=8)
                args[param.name] = value
                case = Case(
                    "constructor", owner, param.name, kind, " ".join(repr(value).split())[:60]
                )
                typed = False
                before = snapshot(scratch)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        cls(**args)
                except Exception as error:
                    message = str(error)
                    case.raised = True
                    typed = isinstance(error, (TypeError, ValueError))
                    case.exception = type(error).__name__
                    case.message = message[:300]
                    case.names_owner = _names_word(message, owner)
                    case.names_field = _names_word(message, param.name)
                    case.names_value = _names_value(message, tokens)
                case.wrote = snapshot(scratch) != before
                case.verdict = verdict(case, isinstance_ok=case.raised and typed)
                cases.append(case)
    say(f"constructors: {len(cases)} cases")
    return cases


def verdict(case: Case, isinstance_ok: bool) -> str:
    if not case.raised:
        return "not rejected"
    missing = []
    if not isinstance_ok:
        missing.append(f"raises {case.exception}")
    if case.group == "constructor" and not case.names_owner:
        missing.append("does not name the class")
    if not case.names_field:
        missing.append("does not name the field")
    if not case.names_value:
        missing.append("does not name the value")
    if case.names_file == "no":
        missing.append("does not name the file")
    if case.traceback:
        missing.append("prints a traceback")
    if case.wrote:
        missing.append("wrote to disk")
    return "clear" if not missing else "unclear: " + ", ".join(missing)


GOOD_FIT = """\
trainer: {max_steps: 5, enable_progress_bar: false}
data:
  class_path: tiered.tasks.Copy
  init_args: {bits: 4, lengths: [1, 4], eval_lengths: [5, 6], batch_size: 4}
model:
  class_path: tiered.TieredModule
  init_args:
    controller:
      class_path: tiered.controllers.LSTMController
      init_args:
        register: {class_path: tiered.tiers.Register, init_args: {HIDDEN}}
        tiers: []
"""

FILE_CASES = [
    # (command, case, file text, kind, field token (regex), value token or None)
    (
        "fit",
        "YAML syntax error",
        GOOD_FIT.replace("HIDDEN", "hidden_size: 8").replace("batch_size: 4}", "batch_size: 4"),
        "malformed",
        r"line \d+",
        None,
    ),
    (
        "fit",
        "unknown key",
        GOOD_FIT.replace("HIDDEN", "hidden_sise: 8"),
        "unknown key",
        r"hidden_sise",
        None,
    ),
    (
        "fit",
        "wrong type",
        GOOD_FIT.replace("HIDDEN", "hidden_size: eight"),
        "wrong type",
        r"hidden_size",
        "eight",
    ),
    (
        "sweep",
        "YAML syntax error",
        "base: [task.yaml\nseeds: [0]\nmetric: {name: val/loss}\n",
        "malformed",
        r"line \d+",
        None,
    ),
    (
        "sweep",
        "missing required key",
        "base: [task.yaml]\nseeds: [0]\n",
        "missing key",
        r"metric",
        None,
    ),
    (
        "sweep",
        "wrong type",
        "base: [task.yaml]\nseeds: three\nmetric: {name: val/loss}\n",
        "wrong type",
        r"seeds",
        "three",
    ),
]


def file_cases(scratch: Path, say: Any) -> list[Case]:
    """Malformed YAML to ``tiered fit --print_config`` and ``tiered sweep run --dry-run``."""
    work = scratch / "files"
    work.mkdir(parents=True, exist_ok=True)
    (work / "task.yaml").write_text("data: {class_path: tiered.tasks.Copy}\n")
    cases = []
    for i, (command, what, text, kind, field_re, value) in enumerate(FILE_CASES):
        path = work / f"bad_{command}_{i}.yaml"
        path.write_text(text)
        if command == "fit":
            argv = [TIERED, "fit", "--config", str(path), "--print_config"]
        else:
            argv = [TIERED, "sweep", "run", str(path), "--dry-run"]
        before = snapshot(work)
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=work, env=child_env(), timeout=300
        )
        output = proc.stdout + proc.stderr
        error_text = proc.stderr if proc.returncode else output
        case = Case(f"tiered {command}", path.name, what, kind, repr(value) if value else "n/a")
        case.exit_code = str(proc.returncode)
        case.raised = proc.returncode != 0
        case.traceback = "Traceback (most recent call last)" in output
        case.names_owner = True  # n/a for files
        case.names_field = re.search(field_re, error_text) is not None
        case.names_value = value is None or value in error_text
        case.names_file = "yes" if path.name in error_text else "no"
        case.wrote = snapshot(work) != before
        case.exception = "exit code " + case.exit_code
        lines = [s for s in error_text.strip().splitlines() if s.strip()]
        case.message = " | ".join(lines[-3:])[:300]
        case.verdict = verdict(case, isinstance_ok=True)
        cases.append(case)
        say(f"{command} {what}: exit {proc.returncode}, {case.verdict}")
    return cases


# ---------------------------------------------------------------------------------------
# 3. Concurrency


def bad_inputs(scratch: Path, say: Any) -> list[Case]:
    work = scratch / "inputs"
    work.mkdir()
    cwd = os.getcwd()
    os.chdir(work)  # relative paths given as bad values land here, where we look
    try:
        cases = constructor_cases(work, say)
    finally:
        os.chdir(cwd)
    return cases + file_cases(scratch, say)


def concurrency(
    scratch: Path, readers: int, shards: int, seconds: float, seed: int, say: Any
) -> list[dict[str, Any]]:
    from tiered.storage import KVStore

    folder = scratch / "concurrent"
    urls = [f"{folder}/rank-{s}" for s in range(shards)]
    salts = [(10 + s, 20 + s) for s in range(shards)]
    for url in urls:
        KVStore.create(url, KW, VW)
    procs = []
    for s, url in enumerate(urls):
        argv = [
            PYTHON,
            __file__,
            "--child",
            "writer",
            "--stores",
            url,
            "--salts",
            str(salts[s][0]),
            str(salts[s][1]),
            "--seconds",
            str(seconds),
            "--seed",
            str(seed * 100 + s),
        ]
        procs.append(("writer", argv))
    flat = [str(x) for pair in salts for x in pair]
    for r in range(readers):
        argv = [
            PYTHON,
            __file__,
            "--child",
            "reader",
            "--stores",
            *urls,
            "--salts",
            *flat,
            "--seconds",
            str(seconds),
            "--seed",
            str(seed * 100 + 50 + r),
        ]
        procs.append(("reader", argv))
    running = []
    for i, (role, argv) in enumerate(procs):
        with open(folder / f"{role}_{i}.log", "w") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=child_env(),
            )
        running.append((role, proc, Lines(proc.stdout)))
    for i, (role, _, lines) in enumerate(running):
        ready, seen = lines.until(lambda s: s == "ready", 300)
        if ready is None:
            log = (folder / f"{role}_{i}.log").read_text()[-1000:]
            raise RuntimeError(f"{role} did not start: {seen} {log}")
    for _, proc, _ in running:  # every process starts its clock now
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for i, (role, proc, lines) in enumerate(running):
        line, seen = lines.until(lambda s: s.startswith("{"), seconds + 300)
        proc.wait()
        if line is None:
            log = (folder / f"{role}_{i}.log").read_text()[-500:]
            results.append({"role": role, "errors": 1, "messages": [log]})
        else:
            results.append(json.loads(line))
    for url, salt in zip(urls, salts, strict=True):
        rows, wrong = check_store(url, salt)
        results.append(
            {"role": "final check", "store": url, "rows_checked": rows, "bad_rows": wrong}
        )
    say(f"concurrency: {results}")
    return results


# ---------------------------------------------------------------------------------------
# Report


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return lines


UNITS = {
    "rom build": "rows",
    "disk": "rows",
    "sweep run": "training steps",
    "sweep run, sweep process only": "training steps",
}


def fault_summary(trials: list[Trial]) -> list[dict[str, Any]]:
    rows = []
    for fault in dict.fromkeys(t.fault for t in trials):
        mine = [t for t in trials if t.fault == fault]
        completions = [t.completed for t in mine if t.completed]
        failures = [
            t for t in mine if t.lost or not t.opened or t.bad_rows or t.completed.startswith("no")
        ]
        rows.append(
            {
                "fault": fault,
                "trials": len(mine),
                "killed_while_working": sum(t.killed_while_working for t in mine),
                "opened_ok": sum(t.opened for t in mine),
                "unit": UNITS.get(fault, "saves"),
                "reported_committed": sum(t.reported for t in mine),
                "lost": sum(t.lost for t in mine),
                "bad_rows": sum(t.bad_rows for t in mine),
                "completed": (
                    f"{sum(c.startswith('yes') for c in completions)} of {len(completions)}"
                )
                if completions
                else "n/a",
                "failed_trials": len(failures),
            }
        )
    return rows


def write_outputs(
    args: argparse.Namespace,
    trials: list[Trial],
    cases: list[Case],
    conc: list[dict[str, Any]],
    timings: dict[str, float],
) -> str:
    sys.path.insert(0, str(HERE))
    from machine import machine_markdown

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary_rows: list[dict[str, Any]] = []
    faults = fault_summary(trials)
    for row in faults:
        summary_rows.append(
            {
                "section": "faults",
                "check": row["fault"],
                "cases": row["trials"],
                "ok": row["trials"] - row["failed_trials"],
                "failed": row["failed_trials"],
                "detail": f"opened {row['opened_ok']}, {row['lost']} "
                f"{row['unit']} lost, completed {row['completed']}",
            }
        )
    groups = list(dict.fromkeys(c.group for c in cases))
    for group in groups:
        mine = [c for c in cases if c.group == group and not c.verdict.startswith("skipped")]
        clear = sum(c.verdict == "clear" for c in mine)
        summary_rows.append(
            {
                "section": "bad inputs",
                "check": group,
                "cases": len(mine),
                "ok": clear,
                "failed": len(mine) - clear,
                "detail": f"{sum(c.verdict.startswith('unclear') for c in mine)} "
                f"unclear, {sum(c.verdict == 'not rejected' for c in mine)}"
                " not rejected",
            }
        )
    readers = [r for r in conc if r.get("role") == "reader"]
    writers = [r for r in conc if r.get("role") == "writer"]
    finals = [r for r in conc if r.get("role") == "final check"]
    if conc:
        bad = sum(r.get("bad_rows", 0) for r in readers + finals)
        errs = sum(r.get("errors", 0) + r.get("past_committed", 0) for r in readers)
        summary_rows.append(
            {
                "section": "concurrency",
                "check": "readers and writers",
                "cases": sum(r.get("reads", 0) for r in readers),
                "ok": sum(r.get("reads", 0) for r in readers) - errs,
                "failed": errs,
                "detail": f"{bad} bad rows",
            }
        )
    with open(out / "reliability.csv", "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["section", "check", "cases", "ok", "failed", "detail"]
        )
        writer.writeheader()
        writer.writerows(summary_rows)
    if trials:
        with open(out / "reliability_faults.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(asdict(trials[0])))
            writer.writeheader()
            writer.writerows(asdict(t) for t in trials)
    if cases:
        with open(out / "reliability_inputs.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(asdict(cases[0])))
            writer.writeheader()
            writer.writerows(asdict(c) for c in cases)
    if conc:
        keys = [
            "role",
            "store",
            "appends",
            "rows",
            "reads",
            "rows_checked",
            "bad_rows",
            "past_committed",
            "errors",
            "messages",
        ]
        with open(out / "reliability_concurrency.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in keys} for r in conc)

    lines = [
        "# Reliability: faults injected, bad inputs tried, concurrent readers and writers",
        "",
        "Written by `experiments/benchmarks/reliability.py` "
        f"(`--trials {args.trials} --sweep-chain {args.sweep_chain} --parent-kill-trials "
        f"{args.parent_kill_trials} --readers {args.readers} --shards {args.shards} "
        f"--seconds {args.seconds:g} --seed {args.seed} --jobs {args.jobs}`); "
        f"the whole run took {timings.get('total', 0):.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
        + f"; {args.jobs} jobs at a time: the sweep trials in one worker, the other fault "
        "kinds, the concurrency run and the bad inputs in the other). Per-trial and per-case "
        "rows are in reliability_faults.csv, "
        "reliability_inputs.csv and reliability_concurrency.csv.",
        "",
        "## Summary",
        "",
    ]
    lines += md_table(
        ["section", "check", "cases", "ok", "not ok", "detail"],
        [
            [r["section"], r["check"], r["cases"], r["ok"], r["failed"], r["detail"]]
            for r in summary_rows
        ],
    )
    if faults:
        lines += [
            "",
            "## Faults: SIGKILL at a random moment",
            "",
            "Delays are drawn uniformly (seeded) over each child's working period: a Disk "
            "append loop 0-1.5 s after it is ready; a checkpoint-save loop 0-1.0 s after it is "
            "ready; `tiered rom build` over the time a clean build takes from the moment its "
            "temporary store appears to its exit (measured once with and once without the FAISS "
            "index); `tiered sweep run` over the time a clean one-run sweep takes after its "
            f"first line ({SWEEP_STEPS} steps of Copy, validation and last.ckpt every "
            f"{SWEEP_VAL_EVERY} steps), or, for every other sweep trial, over the time it "
            "takes after its `tiered fit` child has written its config.yaml (set up, about to "
            "train), so that half the kills land in training. 'Reported' is what the child "
            "said it had committed "
            "(rows after `Disk.append` returned; `built` printed by the CLI; the save number "
            "after `save_checkpoint` returned; for sweeps the last step the killed attempt "
            "validated, from its metrics.csv (written every 5 steps here), since "
            "docs/sweeps.md says last.ckpt is written at every validation, or the step of "
            "last.ckpt before the run, if later); 'lost' counts those missing afterwards "
            "plus rows or weights with the wrong content. The Disk trials share one store "
            "folder (each child opens what the previous one left and appends to it); the "
            "checkpoint trials "
            "share one file. `tiered rom build` trials alternate `--index none` / `auto` "
            "(FAISS) and a new target / `--overwrite` of an existing store (which must then "
            "hold the old or the new store, complete). Sweep trials: the sweep process and its "
            f"`tiered fit` child are frozen and killed together, up to {args.sweep_chain} "
            "times in a row on one sweep folder (each later run must resume from last.ckpt "
            "when there is one; a chain ends early when a kill finds the run finished); then "
            "the sweep is run once more, to the end, and must finish with its metric, the "
            "checkpoint at the last step and a report. 'Sweep process only': SIGKILL to "
            "`tiered sweep run` alone, then the same sweep at once, to the end.",
            "",
            (
                f"In the clean sweep run, last.ckpt was written {_observed['ckpt_writes'][0]} "
                f"time(s) (polled every 2 ms) for {_observed['ckpt_writes'][1]} validations "
                "(docs/sweeps.md: 'written at every validation'). "
                if "ckpt_writes" in _observed
                else ""
            )
            + "Measured windows (clean runs, before the jobs started): "
            + (
                f"sweep {_calibration['sweep'][0]:.1f} s after its first line, "
                f"{_calibration['sweep'][1]:.1f} s after the training set-up; "
                if "sweep" in _calibration
                else ""
            )
            + (
                f"rom build {_calibration['rom'][0]:.1f} s (index none) and "
                f"{_calibration['rom'][1]:.1f} s (FAISS index) after it starts writing."
                if "rom" in _calibration
                else ""
            ),
            "",
        ]
        lines += md_table(
            [
                "fault",
                "trials",
                "killed while working",
                "opened OK",
                "unit",
                "reported committed",
                "lost",
                "wrong content",
                "resumed and completed",
                "failed trials",
            ],
            [
                [
                    r["fault"],
                    r["trials"],
                    r["killed_while_working"],
                    r["opened_ok"],
                    r["unit"],
                    r["reported_committed"],
                    r["lost"],
                    r["bad_rows"],
                    r["completed"],
                    r["failed_trials"],
                ]
                for r in faults
            ],
        )
        failures = [
            t
            for t in trials
            if t.lost or not t.opened or t.bad_rows or t.completed.startswith("no")
        ]
        lines += ["", "Failed trials:" if failures else "No trial failed.", ""]
        lines += [
            f"- {t.fault} #{t.trial} (kill after {t.delay_s:.2f} s): opened {t.opened}, "
            f"reported {t.reported}, found {t.found}, lost {t.lost}; {t.detail}"
            f"{'; completed: ' + t.completed if t.completed else ''}"
            for t in failures
        ]
        notes: dict[str, int] = {}
        for t in trials:
            for part in t.detail.split("; "):
                words = ("left", "second training", "lived on", "120 s")
                if any(w in part for w in words) and not part.strip().endswith(": 0"):
                    key = f"{t.fault}: {part.strip()}"
                    notes[key] = notes.get(key, 0) + 1
        if notes:
            lines += ["", "Other observations (not counted as failures):", ""]
            lines += [f"- {k} ({v} trial{'s' if v > 1 else ''})" for k, v in notes.items()]
    if cases:
        lines += [
            "",
            "## Bad inputs",
            "",
            "Constructors: each argument of each class found in `tiered.tiers`, `tiered.tasks` "
            "and `tiered.controllers` gets wrong-type values (a string for a number, a list for "
            "a scalar, a float for an int, a number for a string) and out-of-range values (0 and "
            "-1 for positive ints, -1 for non-negative ones, -1.0 and nan for floats, an unknown "
            "choice, a file that is not a store, reversed ranges), the others valid. A case "
            "is *clear* when it raises a TypeError or ValueError (or a StoreError) whose message "
            "names the "
            "class, the argument and the value, and nothing is written to disk. YAML files: "
            "*clear* when the command exits non-zero without a traceback, naming the file, the "
            "field (the line, for syntax errors) and the value, and writes nothing.",
            "",
        ]
        rows = []
        for group in groups:
            mine = [c for c in cases if c.group == group and not c.verdict.startswith("skipped")]
            rows.append(
                [
                    group,
                    len(mine),
                    sum(c.verdict == "clear" for c in mine),
                    sum(c.verdict.startswith("unclear") for c in mine),
                    sum(c.verdict == "not rejected" for c in mine),
                    sum(c.traceback for c in mine),
                    sum(c.wrote for c in mine),
                    len({c.owner for c in mine}),
                ]
            )
        lines += md_table(
            [
                "inputs",
                "cases",
                "clear",
                "unclear",
                "not rejected",
                "traceback",
                "wrote to disk",
                "classes / files",
            ],
            rows,
        )
        odd = [c for c in cases if c.verdict != "clear"]
        if odd:
            lines += ["", "Every case that is not clear:", ""]
            lines += md_table(
                ["where", "argument / case", "kind", "value", "verdict", "exception", "message"],
                [
                    [
                        c.owner,
                        c.field,
                        c.kind,
                        f"`{c.value}`",
                        c.verdict,
                        c.exception,
                        c.message.replace("\n", " ")[:220],
                    ]
                    for c in odd
                ],
            )
    if conc:
        lines += [
            "",
            "## Concurrency",
            "",
            f"{args.shards} writer processes (one per shard of one Disk-style store folder) "
            f"and {args.readers} reader processes for {args.seconds:g} s. Writers append 1-256 "
            "rows at a time, a function of the row index. Each read opens a shard anew "
            "(`KVStore.open`) and reads all committed rows, a random range (possibly past "
            "the committed rows) or 64 random rows, and checks every row; then it reads "
            "past `committed_rows`, which must return nothing.",
            "",
        ]
        lines += md_table(
            [
                "writers",
                "appends",
                "rows written",
                "readers",
                "reads",
                "rows checked",
                "bad rows",
                "reads past committed_rows",
                "read errors",
                "final check: bad rows",
            ],
            [
                [
                    len(writers),
                    sum(w.get("appends", 0) for w in writers),
                    sum(w.get("rows", 0) for w in writers),
                    len(readers),
                    sum(r.get("reads", 0) for r in readers),
                    sum(r.get("rows_checked", 0) for r in readers),
                    sum(r.get("bad_rows", 0) for r in readers),
                    sum(r.get("past_committed", 0) for r in readers),
                    sum(r.get("errors", 0) for r in readers),
                    sum(r.get("bad_rows", 0) for r in finals),
                ]
            ],
        )
        messages = [m for r in readers for m in r.get("messages", [])]
        if messages:
            lines += ["", "Read errors (first of each reader):", ""]
            lines += [f"- {m}" for m in messages]
    lines += ["", "Machine:", "", machine_markdown(), ""]
    text = "\n".join(lines)
    (out / "reliability.md").write_text(text)
    return text


# ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kills per fault kind")
    parser.add_argument(
        "--sweep-chain",
        type=int,
        default=4,
        help="sweep kills in a row on one folder before a run to completion",
    )
    parser.add_argument(
        "--parent-kill-trials",
        type=int,
        default=4,
        help="kills of the sweep process alone (its training child lives on)",
    )
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--shards", type=int, default=2, help="writers, one per shard")
    parser.add_argument("--seconds", type=float, default=20.0, help="concurrency run time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="fault kinds run at once")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["faults", "inputs", "concurrency"],
        choices=["faults", "inputs", "concurrency"],
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(f"[{time.perf_counter() - started:6.1f}s] {text}", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="reliability_"))
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.stat(shm).st_dev != os.stat(scratch).st_dev
    shm_tmp = Path(tempfile.mkdtemp(prefix="reliability_", dir=shm)) if other_fs else None
    trials: list[Trial] = []
    cases: list[Case] = []
    conc: list[dict[str, Any]] = []
    try:
        seeds = random.Random(args.seed)
        jobs: list[tuple[str, str, Any]] = []  # (part, name, function of a seeded RNG)
        if "faults" in args.parts:
            n = args.trials
            # The kill windows first, measured with nothing else of ours running.
            sweep_calibrate(scratch)
            rom_trials(scratch, 0, random.Random(0), say)
            jobs += [
                (
                    "faults",
                    "sweep run",
                    lambda r: sweep_trials(scratch, n, r, say, args.sweep_chain),
                ),
                ("faults", "rom build", lambda r: rom_trials(scratch, n, r, say)),
                ("faults", "disk", lambda r: disk_trials(scratch, n, r, say)),
            ]
            # Lightning's own save and tiered's (AtomicCheckpointIO, what `tiered fit` uses),
            # each with TMPDIR on the checkpoint's filesystem and on another one.
            for atomic, who in ((False, "Lightning's save"), (True, "tiered's save")):
                places = [("", scratch / "tmp_same_fs")]
                if shm_tmp is not None:
                    places.append((", TMPDIR on /dev/shm", shm_tmp))
                for where, tmp in places:
                    name = f"checkpoint save, {who}{where}"
                    jobs.append(
                        (
                            "faults",
                            name,
                            lambda r, x=name, t=tmp, a=atomic: ckpt_trials(
                                scratch, n, r, say, x, t, a
                            ),
                        )
                    )
            if args.parent_kill_trials:
                jobs.append(
                    (
                        "faults",
                        "sweep run, sweep process only",
                        lambda r: sweep_parent_trials(scratch, args.parent_kill_trials, r, say),
                    )
                )
        if "concurrency" in args.parts:
            jobs.append(
                (
                    "concurrency",
                    "concurrency",
                    lambda r: concurrency(
                        scratch, args.readers, args.shards, args.seconds, args.seed, say
                    ),
                )
            )
        if "inputs" in args.parts:
            jobs.append(("inputs", "bad inputs", lambda r: bad_inputs(scratch, say)))
        rngs = [random.Random(seeds.randrange(1 << 30)) for _ in jobs]

        def timed(name: str, fn: Any, rng: random.Random) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(rng)
            finally:
                timings[name] = time.perf_counter() - t0

        # The sweep trials take longest; the other jobs share the second worker.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                (part, name, pool.submit(timed, name, fn, rng))
                for (part, name, fn), rng in zip(jobs, rngs, strict=True)
            ]
            for part, label, future in futures:
                try:
                    result = future.result()
                except Exception as error:
                    say(f"{label} failed to run: {traceback.format_exc()}")
                    if part == "faults":
                        detail = f"the measurement itself failed: {type(error).__name__}: {error}"
                        trials.append(Trial(label, -1, 0.0, False, 0, 0, False, 0, 0, detail[:500]))
                    continue
                if part == "faults":
                    trials += result
                elif part == "concurrency":
                    conc = result
                else:
                    cases = result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if shm_tmp is not None:
            shutil.rmtree(shm_tmp, ignore_errors=True)
    timings["total"] = time.perf_counter() - started
    print(write_outputs(args, trials, cases, conc, timings))


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
    else:
        main()
