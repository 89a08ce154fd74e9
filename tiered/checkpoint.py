"""Checkpoints that survive a kill at any moment: written beside the target, then renamed.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction, which on a local disk
writes a temporary file in ``TMPDIR`` and moves it into place. Where ``TMPDIR`` lies on another
filesystem than the checkpoint (``/tmp`` on tmpfs is common) the move is a copy, and a process
killed during it leaves a truncated checkpoint under the final name:
experiments/benchmarks/reliability.py lost 5 of 20 checkpoints so. ``AtomicCheckpointIO``
writes the temporary file in the checkpoint's own folder, flushes it to disk and renames it
over the target, which is atomic on one filesystem: the target is always the old checkpoint
or the new one, whole. The ``tiered`` command installs it unless a config chooses another
``CheckpointIO``; in Python pass ``Trainer(plugins=[AtomicCheckpointIO()])``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are a write beside the target and a rename.

    Paths with a URL scheme (object storage) are saved as Lightning saves them.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A hidden name that no "*.ckpt" pattern matches, in the target's own folder.
        fd, partial = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".partial", dir=target.parent
        )
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
