"""Checkpoints written beside their target and renamed: a kill never leaves a torn one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tiered.checkpoint import AtomicCheckpointIO
from tiered.cli import make_cli

ROOT = Path(__file__).resolve().parents[2]


def test_a_save_that_fails_midway_leaves_the_old_checkpoint_and_no_partial_file(
    tmp_path, monkeypatch
):
    target = tmp_path / "ckpt" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(5.0)}, target)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))  # must not be used
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append((a, b)) or real_replace(a, b))

    def torn_save(obj, file):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # as a kill would stop it, after part of the file

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(5)}, target)
    monkeypatch.undo()
    assert renames == [] and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    loaded = io.load_checkpoint(target)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(5.0))
    io.save_checkpoint({"step": 3}, target)
    assert io.load_checkpoint(target)["step"] == 3


SAVER = textwrap.dedent(
    """
    import sys, torch
    from tiered.checkpoint import AtomicCheckpointIO
    io, weights = AtomicCheckpointIO(), torch.arange(1 << 20, dtype=torch.float64)
    for step in range(1, 10**6):
        io.save_checkpoint({"step": step, "weights": weights * step}, sys.argv[1])
        print(step, flush=True)
    """
)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_killed_mid_save_with_tmpdir_on_another_filesystem_the_checkpoint_still_loads(tmp_path):
    # With TMPDIR on tmpfs and the checkpoint on disk, Lightning's own save copies the file
    # into place, and a kill during the copy left torn checkpoints (reliability.py: 5 of 20).
    target = tmp_path / "last.ckpt"
    env = dict(os.environ, TMPDIR="/dev/shm")
    for delay in (0.05, 0.13, 0.31):
        child = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2):
            reported = int(child.stdout.readline())
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        loaded = torch.load(target, weights_only=True)
        assert loaded["step"] >= reported
        weights = torch.arange(1 << 20, dtype=torch.float64) * loaded["step"]
        assert torch.equal(loaded["weights"], weights)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".partial")) == [
        "last.ckpt"
    ]


def test_the_cli_trainer_saves_atomically_unless_a_checkpoint_io_is_chosen():
    args = ["--config", str(ROOT / "experiments" / "tasks" / "copy.yaml"),
            "--config", str(ROOT / "experiments" / "stacks" / "ram.yaml"),
            "--trainer.logger", "false"]  # fmt: skip
    cli = make_cli(args, run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    chosen = make_cli(
        [*args, "--trainer.plugins", "lightning.fabric.plugins.io.TorchCheckpointIO"], run=False
    )
    assert type(chosen.trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"
