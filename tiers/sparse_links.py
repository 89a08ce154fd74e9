"""Sparse temporal links (the sparse DNC, Rae et al. 2016): no N x N matrix exists.

The DNC's link matrix L (N x N), L[i, j] = how much row i was written right after row j,
updates as

    L'[i, j] = (1 - w_i - w_j) L[i, j] + w_i p[j]   (i != j),   p' = (1 - sum w) p + w

with write weights w and precedence p. With sparse writes only the entries in the written
rows' rows and columns change. Here each slot keeps its ``KL`` largest predecessors (row i
of L: ``pred``) and its ``KL`` largest successors (column j of L: ``succ``) in buffers of
shape (B, N, KL), updated in place, and p keeps its ``KL`` largest entries. A step updates
only the rows it can change: the written rows, the precedence's rows, and the rows linked
to or from a written row, O(S KL) rows of KL entries for S written rows, whatever N is.
Both tables follow the formula on their own; while no list overflows they hold exactly the
rows and columns of the dense L (the tests compare them with it), beyond that each keeps
its largest entries, as in the paper.

Reads follow the links from the previous read rows: forward f = L r (successors of the rows
read), backward b = L^T r (their predecessors), at most K KL rows each per head.

The links are built from detached write weights: gradients reach the read weights and the
memory rows through f and b, not the link values (the usage in SAM is detached the same way).

Buffers store ``row + 1`` (0: no entry) so that zero-filled pages need no initialisation.
Named dimensions: B batch, N slots, KL links per slot, S rows written, X entries.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros that, on CPU, the kernel maps lazily (numpy's calloc): untouched pages of a
    large table never become resident."""
    if device.type == "cpu" and (dtype in _NUMPY_DTYPES or dtype == torch.long):
        np_dtype = np.int64 if dtype == torch.long else _NUMPY_DTYPES[dtype]
        return torch.from_numpy(np.zeros(shape, dtype=np_dtype))
    return torch.zeros(shape, dtype=dtype, device=device)


class LinkTables(NamedTuple):
    """In-place link buffers of one sequence.

    Attributes:
        pred_rows: (B, N, KL) predecessors j of each row i, stored as j + 1 (0: none).
        pred: (B, N, KL) their link values L[i, j].
        succ_rows: (B, N, KL) successors i of each row j, stored as i + 1 (0: none).
        succ: (B, N, KL) their link values L[i, j].
    """

    pred_rows: Tensor
    pred: Tensor
    succ_rows: Tensor
    succ: Tensor

    @classmethod
    def empty(cls, batch: int, slots: int, links: int, dtype: torch.dtype, device) -> LinkTables:
        device = torch.device(device) if device is not None else torch.device("cpu")
        shape = (batch, slots, links)
        return cls(
            lazy_zeros(shape, torch.long, device),
            lazy_zeros(shape, dtype, device),
            lazy_zeros(shape, torch.long, device),
            lazy_zeros(shape, dtype, device),
        )

    def clone(self) -> LinkTables:
        return LinkTables(*(t.clone() for t in self))


def merge_entries(rows: Tensor, values: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """Sum the values of equal rows in each list, then keep the ``keep`` largest.

    Args:
        rows: (..., X) row ids + 1 (0: no entry).
        values: (..., X), differentiable.
        keep: entries kept per list.

    Returns:
        rows (..., keep) (0 where fewer entries) and their summed values (..., keep);
        entries whose sum is not positive are dropped.
    """
    ordered, order = torch.sort(rows, dim=-1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    group = torch.cumsum(first.long(), dim=-1) - 1
    summed = torch.zeros_like(values).scatter_add(-1, group, values.gather(-1, order))
    ids = torch.zeros_like(rows).scatter(-1, group, ordered)
    live = (ids > 0) & (summed.detach() > 0)
    score = torch.where(live, summed.detach(), torch.full_like(summed.detach(), -1.0))
    top = torch.topk(score, min(keep, rows.shape[-1]), dim=-1).indices
    kept_live = live.gather(-1, top)
    out_rows = torch.where(kept_live, ids.gather(-1, top), torch.zeros_like(top))
    out_values = summed.gather(-1, top) * kept_live
    if out_rows.shape[-1] < keep:  # pad to ``keep``
        pad = keep - out_rows.shape[-1]
        out_rows = torch.nn.functional.pad(out_rows, (0, pad))
        out_values = torch.nn.functional.pad(out_values, (0, pad))
    return out_rows, out_values


def weight_of(ids: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """The write weight of each id: ids (B, X) stored as row + 1; rows (B, S) the written
    rows (deduplicated, -1 padding); weights (B, S). Returns (B, X)."""
    match = (ids.unsqueeze(-1) == (rows + 1).unsqueeze(1)) & (ids > 0).unsqueeze(-1)  # (B, X, S)
    return (match.to(weights.dtype) * weights.unsqueeze(1)).sum(-1)


def update_precedence(
    prec_rows: Tensor, prec: Tensor, rows: Tensor, weights: Tensor, keep: int
) -> tuple[Tensor, Tensor]:
    """p' = (1 - sum w) p + w, keeping the ``keep`` largest entries.

    Args:
        prec_rows: (B, KL) rows + 1 of p; prec: (B, KL) values.
        rows: (B, S) written rows (-1 none); weights: (B, S) detached write weights.
    """
    scale = 1.0 - weights.sum(-1, keepdim=True)
    ids = torch.cat([prec_rows, torch.where(rows >= 0, rows + 1, 0)], dim=-1)
    return merge_entries(ids, torch.cat([prec * scale, weights], dim=-1), keep)


def update_links(
    tables: LinkTables, prec_rows: Tensor, prec: Tensor, rows: Tensor, weights: Tensor
) -> None:
    """Apply L' = (1 - w 1^T - 1 w^T) o L + w p^T to the tables, in place.

    Args:
        tables: the link buffers, (B, N, KL) each.
        prec_rows, prec: (B, KL) the precedence before this write (rows + 1, values).
        rows: (B, S) written rows, deduplicated (-1: none); weights: (B, S) detached.
    """
    B, N, KL = tables.pred.shape
    written = torch.where(rows >= 0, rows + 1, 0)  # (B, S) as ids
    gather = lambda table, r: table.gather(  # noqa: E731
        1, (r - 1).clamp_min(0).unsqueeze(-1).expand(-1, -1, KL)
    )  # (B, A, KL) rows of a table, for ids r (B, A)
    # Rows whose lists can change: written rows, p's rows, and rows linked to or from them.
    candidates = torch.cat(
        [written, prec_rows, gather(tables.succ_rows, written).flatten(1),
         gather(tables.pred_rows, written).flatten(1)], dim=1,
    )  # fmt: skip
    affected, _ = merge_entries(candidates, torch.ones_like(candidates, dtype=tables.pred.dtype),
                                candidates.shape[1])  # fmt: skip  # distinct ids, 0 padding
    live = affected > 0  # (B, A)
    w_row = weight_of(affected, rows, weights)  # (B, A)
    p_row = weight_of(affected, prec_rows - 1, prec)  # (B, A): p at each affected row
    S, A = rows.shape[1], affected.shape[1]

    # Predecessors (row i of L): decay, then w_i p[j] for j in p, j != i.
    pred_rows, pred = gather(tables.pred_rows, affected), gather(tables.pred, affected)
    w_j = weight_of(pred_rows.flatten(1), rows, weights).view(B, A, KL)
    decayed = pred * (1.0 - w_row.unsqueeze(-1) - w_j) * (pred_rows > 0)
    new_ids = prec_rows.unsqueeze(1).expand(B, A, KL)
    new = w_row.unsqueeze(-1) * prec.unsqueeze(1) * (new_ids != affected.unsqueeze(-1))
    pred_rows, pred = merge_entries(
        torch.cat([pred_rows, new_ids], -1), torch.cat([decayed, new], -1), KL
    )
    # Successors (column j of L): decay, then w_i p[j] for written i != j.
    succ_rows, succ = gather(tables.succ_rows, affected), gather(tables.succ, affected)
    w_i = weight_of(succ_rows.flatten(1), rows, weights).view(B, A, KL)
    decayed = succ * (1.0 - w_row.unsqueeze(-1) - w_i) * (succ_rows > 0)
    new_ids = written.unsqueeze(1).expand(B, A, S)
    new = weights.unsqueeze(1) * p_row.unsqueeze(-1) * (new_ids != affected.unsqueeze(-1))
    succ_rows, succ = merge_entries(
        torch.cat([succ_rows, new_ids], -1), torch.cat([decayed, new], -1), KL
    )
    # Scatter the affected rows' lists back.
    flat = ((affected - 1).clamp_min(0) + torch.arange(B, device=rows.device)[:, None] * N)[live]
    for table, value in zip(tables, (pred_rows, pred, succ_rows, succ), strict=True):
        table.view(B * N, KL).index_copy_(0, flat, value[live].to(table.dtype))


def follow_links(
    tables: LinkTables, read_rows: Tensor, read_weights: Tensor, forward: bool
) -> tuple[Tensor, Tensor]:
    """Forward (L r) or backward (L^T r) read weights from the previous read.

    Args:
        read_rows: (B, R, K) rows read at the previous step (-1: none).
        read_weights: (B, R, K) their weights (differentiable).
        forward: successors (True) or predecessors (False).

    Returns:
        rows (B, R, K KL) (-1: none) and weights (B, R, K KL), duplicates summed.
    """
    B, R, K = read_rows.shape
    ids_table, value_table = (
        (tables.succ_rows, tables.succ) if forward else (tables.pred_rows, tables.pred)
    )
    KL = ids_table.shape[-1]
    index = read_rows.clamp_min(0).reshape(B, R * K, 1).expand(-1, -1, KL)
    ids = ids_table.gather(1, index).view(B, R, K, KL) * (read_rows >= 0).unsqueeze(-1)
    links = value_table.gather(1, index).view(B, R, K, KL).to(read_weights.dtype)
    weights = (read_weights.unsqueeze(-1) * links).reshape(B, R, K * KL)
    ids, weights = merge_entries(ids.reshape(B, R, K * KL), weights, K * KL)
    return ids - 1, weights
