"""Sequence metrics as torchmetrics, each honouring a mask of scored positions.

The math lives in pure functions; the Metric classes only accumulate their results.
Named dimensions: B batch, T time, O output features (bits) or classes (tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def bit_errors(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Wrong bits per sequence, the NTM paper's cost: sum over scored steps and bits.

    Args:
        logits: (B, T, O); a bit is predicted 1 where the logit is > 0.
        targets: (B, T, O) in {0, 1}.
        mask: (B, T) boolean, True where a step is scored.

    Returns:
        (B,) number of wrong bits in each sequence.
    """
    wrong = (logits > 0) != (targets > 0.5)  # (B, T, O)
    return (wrong & mask.unsqueeze(-1)).sum(dim=(1, 2)).to(logits.dtype)


def token_hits(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Correct and scored tokens per sequence.

    Args:
        logits: (B, T, C) class scores.
        targets: (B, T) class indices.
        mask: (B, T) boolean.

    Returns:
        (correct, scored), each (B,).
    """
    correct = (logits.argmax(dim=-1) == targets) & mask  # (B, T)
    return correct.sum(dim=1), mask.sum(dim=1)


def sequence_correct(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Whether every scored output of each sequence is right (bits or tokens).

    Args:
        logits: (B, T, O) bit logits, with targets (B, T, O); or (B, T, C) class scores,
            with targets (B, T) of class indices.
        targets: see ``logits``.
        mask: (B, T) boolean.

    Returns:
        (B,) boolean.
    """
    if targets.dim() == logits.dim():  # bits
        return bit_errors(logits, targets, mask) == 0
    correct, scored = token_hits(logits, targets, mask)
    return correct == scored


class BitErrorsPerSequence(Metric):
    """Mean number of wrong bits per sequence over all sequences seen."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "errors", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("sequences", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor, mask: Tensor) -> None:
        errors = bit_errors(logits, targets, mask)
        self.errors += errors.sum().to(self.errors.dtype)
        self.sequences += errors.numel()

    def compute(self) -> Tensor:
        return self.errors / self.sequences.clamp_min(1)


class SequenceExactMatch(Metric):
    """Fraction of sequences whose scored outputs are all right."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("sequences", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor, mask: Tensor) -> None:
        correct = sequence_correct(logits, targets, mask)
        self.correct += correct.sum()
        self.sequences += correct.numel()

    def compute(self) -> Tensor:
        return self.correct.double() / self.sequences.clamp_min(1)


class TokenAccuracy(Metric):
    """Fraction of scored tokens predicted right (argmax of the class scores)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("scored", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor, mask: Tensor) -> None:
        correct, scored = token_hits(logits, targets, mask)
        self.correct += correct.sum()
        self.scored += scored.sum()

    def compute(self) -> Tensor:
        return self.correct.double() / self.scored.clamp_min(1)
