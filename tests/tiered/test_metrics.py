"""Metrics on hand-made cases, masks included."""

from __future__ import annotations

import torch

from tiered.metrics import (
    BitErrorsPerSequence,
    SequenceExactMatch,
    TokenAccuracy,
    bit_errors,
    sequence_correct,
)


def _bits_case():
    # 2 sequences, 3 steps, 2 bits; step 0 is not scored.
    targets = torch.tensor(
        [[[1, 1], [0, 1], [1, 0]], [[0, 0], [1, 1], [0, 0]]], dtype=torch.float32
    )
    logits = torch.tensor(
        [[[-5, -5], [-3, 2], [4, 1]], [[9, 9], [2, 3], [-1, -1]]], dtype=torch.float32
    )
    mask = torch.tensor([[False, True, True], [False, True, True]])
    return logits, targets, mask


def test_bit_errors_count_only_scored_wrong_bits():
    logits, targets, mask = _bits_case()
    # seq 0: step 2 predicts [1, 1] vs [1, 0]: one error (step 0's two errors are masked)
    # seq 1: all scored bits right (step 0's errors are masked)
    assert bit_errors(logits, targets, mask).tolist() == [1.0, 0.0]
    metric = BitErrorsPerSequence()
    metric.update(logits, targets, mask)
    assert metric.compute().item() == 0.5


def test_exact_match_for_bits_and_tokens():
    logits, targets, mask = _bits_case()
    assert sequence_correct(logits, targets, mask).tolist() == [False, True]
    token_logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    token_targets = torch.tensor([[1, 0], [1, 1]])
    token_mask = torch.tensor([[True, True], [False, True]])
    assert sequence_correct(token_logits, token_targets, token_mask).tolist() == [True, False]
    metric = SequenceExactMatch()
    metric.update(logits, targets, mask)
    metric.update(token_logits, token_targets, token_mask)
    assert metric.compute().item() == 0.5


def test_token_accuracy_ignores_unscored_positions():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    targets = torch.tensor([[1, 1, 0]])
    metric = TokenAccuracy()
    metric.update(logits, targets, torch.tensor([[True, True, False]]))
    assert metric.compute().item() == 0.5  # 1 right of 2 scored; the 3rd (wrong) is masked
    metric.update(logits, targets, torch.tensor([[True, False, False]]))
    assert metric.compute().item() == 2 / 3


def test_empty_metrics_compute_zero_not_nan():
    assert BitErrorsPerSequence().compute().item() == 0.0
    assert TokenAccuracy().compute().item() == 0.0
