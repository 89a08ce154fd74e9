"""SequenceTask: the base of the algorithmic tasks, generated on the fly from a seed.

Every batch is a pure function of ``(seed, split, batch index)``, so runs are reproducible,
the train, validation and test splits never share a batch, and each training epoch draws
fresh batches. Training and validation use the training difficulty range; test uses the
evaluation range, so that ``test/`` metrics measure generalisation (e.g. to longer
sequences). Under DDP each rank draws a disjoint share of the batch indices.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tiered.validation import check_positive_int

SPLITS = ("train", "val", "test")
LOSSES = ("bits", "tokens")


class SequenceBatch(NamedTuple):
    """A padded batch of sequences.

    Attributes:
        inputs: (B, T, I) float32.
        targets: (B, T, O) float32 bits in {0, 1} for ``bits`` tasks, or (B, T) int64
            class indices for ``tokens`` tasks.
        mask: (B, T) bool, True where the output is scored.
        steps: (B, T) bool, True on a sequence's own steps, False on padding: per-step
            terms such as the rewrite penalty are averaged over these.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    steps: Tensor


class Example(NamedTuple):
    """One unpadded sequence: inputs (T, I), targets (T, O) or (T,), mask (T,)."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


def check_range(owner: str, field: str, value: Sequence[int], minimum: int = 1) -> tuple[int, int]:
    """Return ``(low, high)`` if ``minimum <= low <= high``, else raise naming the field."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise TypeError(f"{owner}: {field} must be two integers [low, high], got {value!r}")
    low, high = int(value[0]), int(value[1])
    if not minimum <= low <= high:
        raise ValueError(
            f"{owner}: {field} must satisfy {minimum} <= low <= high, got [{low}, {high}]"
        )
    return low, high


def pad_examples(examples: Sequence[Example], tokens: bool) -> SequenceBatch:
    """Stack examples of different lengths, padding with zeros and an unscored mask."""
    T = max(len(e.mask) for e in examples)
    B, I = len(examples), examples[0].inputs.shape[-1]
    inputs = np.zeros((B, T, I), dtype=np.float32)
    mask = np.zeros((B, T), dtype=bool)
    steps = np.zeros((B, T), dtype=bool)
    if tokens:
        targets = np.zeros((B, T), dtype=np.int64)
    else:
        targets = np.zeros((B, T, examples[0].targets.shape[-1]), dtype=np.float32)
    for b, example in enumerate(examples):
        n = len(example.mask)
        inputs[b, :n], targets[b, :n], mask[b, :n] = example.inputs, example.targets, example.mask
        steps[b, :n] = True
    return SequenceBatch(*(torch.from_numpy(a) for a in (inputs, targets, mask, steps)))


class TaskBatches(Dataset):
    """Map-style dataset whose item ``i`` is the i-th batch of a split (any i >= 0)."""

    def __init__(self, task: SequenceTask, split: str, batches: int) -> None:
        self.task, self.split, self.batches = task, split, batches

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> SequenceBatch:
        return self.task.make_batch(self.split, index)


class BatchIndexSampler(DistributedSampler):
    """Yields batch indices ``epoch * n + i``, the share of this DDP rank.

    A DistributedSampler subclass, so Lightning uses it as it is instead of wrapping it.
    With ``fresh_each_epoch`` False (validation and test) every epoch sees the same batches.
    """

    def __init__(self, dataset: TaskBatches, fresh_each_epoch: bool) -> None:
        # Training drops the batches that do not divide among the ranks; evaluation pads
        # by repeating batches instead, so that every rank evaluates at least one.
        drop_last = fresh_each_epoch
        if dist.is_available() and dist.is_initialized():
            super().__init__(dataset, shuffle=False, drop_last=drop_last)
        else:
            super().__init__(dataset, num_replicas=1, rank=0, shuffle=False, drop_last=drop_last)
        self.fresh_each_epoch = fresh_each_epoch

    def __iter__(self) -> Iterator[int]:
        # A generator, so the epoch is read when the first index is drawn: on resume,
        # Lightning sets the epoch after the DataLoader has already called iter().
        n = len(self.dataset)  # type: ignore[arg-type]
        start = self.epoch * n if self.fresh_each_epoch else 0
        count = self.num_samples * self.num_replicas
        for i in range(self.rank, count, self.num_replicas):
            yield start + i % n


class SequenceTask(L.LightningDataModule, abc.ABC):
    """Base of tasks that generate batches of sequences on the fly.

    Subclasses set ``loss`` ("bits" or "tokens"), ``input_size`` and ``output_size`` and
    implement ``example(rng, split)``.

    Args:
        batch_size: sequences per batch.
        train_batches: batches per training epoch (each epoch draws new ones).
        val_batches: batches in the validation split (the same every epoch).
        test_batches: batches in the test split.
        seed: the task's seed; every batch is a function of (seed, split, index).
        num_workers: DataLoader worker processes.
    """

    loss: str = "bits"

    def __init__(
        self,
        batch_size: int = 32,
        train_batches: int = 1000,
        val_batches: int = 8,
        test_batches: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.batch_size = check_positive_int(owner, "batch_size", batch_size)
        self.batches = {
            "train": check_positive_int(owner, "train_batches", train_batches),
            "val": check_positive_int(owner, "val_batches", val_batches),
            "test": check_positive_int(owner, "test_batches", test_batches),
        }
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{owner}: seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(
                f"{owner}: num_workers must be a non-negative integer, got {num_workers!r}"
            )
        self.num_workers = num_workers

    @property
    @abc.abstractmethod
    def input_size(self) -> int:
        """Features per input step, I (linked into the model by the CLI)."""

    @property
    @abc.abstractmethod
    def output_size(self) -> int:
        """Output features (bits) or classes (tokens) per step, O."""

    @abc.abstractmethod
    def example(self, rng: np.random.Generator, split: str) -> Example:
        """Draw one sequence of ``split``'s difficulty ("test" uses the evaluation range)."""

    def check_difficulty(self, field: str, value: Sequence[int]) -> tuple[int, int]:
        """``value`` as a valid ``(low, high)`` for this task's range attribute ``field``, or
        an error naming both; a curriculum checks each level with it before setting it."""
        owner = type(self).__name__
        ranges = [
            name
            for name, current in vars(self).items()
            if isinstance(current, tuple)
            and len(current) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in current)
        ]
        if field not in ranges:
            raise ValueError(
                f"{owner}: {field!r} is not a [low, high] range of the task "
                f"(its value: {getattr(self, field, None)!r}); its ranges: {sorted(ranges)}"
            )
        return check_range(owner, field, value)

    def make_batch(self, split: str, index: int) -> SequenceBatch:
        """The ``index``-th batch of ``split``, a pure function of (seed, split, index)."""
        rng = np.random.default_rng([self.seed, SPLITS.index(split), index])
        examples = [self.example(rng, split) for _ in range(self.batch_size)]
        return pad_examples(examples, tokens=self.loss == "tokens")

    def _loader(self, split: str) -> DataLoader:
        dataset = TaskBatches(self, split, self.batches[split])
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=BatchIndexSampler(dataset, fresh_each_epoch=split == "train"),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
