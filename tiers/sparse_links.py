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
its largest entries, as in the paper. Once a list has overflowed, one table may keep a
link the other dropped; such a one-sided link is no longer decayed when its other end is
rewritten, so reads use a link only while both tables hold it.

Reads follow the links from the previous read rows: forward f = L r (successors of the rows
read), backward b = L^T r (their predecessors), at most K KL rows each per head.

The links are built from detached write weights: gradients reach the read weights and the
memory rows through f and b, not the link values (the usage in SAM is detached the same way).

Buffers store ``row + 1`` (0: no entry) so that zero-filled pages need no initialisation.
Named dimensions: B batch, N slots, KL links per slot, S rows written, X entries.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros that, on CPU, the kernel maps lazily: untouched pages of a large table never
    become resident.

    On Linux the buffer is an anonymous mapping advised against transparent huge pages:
    these tables are touched a row at a time, all over, and numpy's own zero-filled arrays
    ask for huge pages, with which one touched row made 2 MiB resident (the gradient
    accumulator of a filled 2^20-slot memory, 2 GiB, became resident whole; 48 MiB of growth
    with 4 KiB pages, experiments/results/sparse_ram_scaling_prefill1.md).
    """
    if device.type != "cpu" or not (dtype in _NUMPY_DTYPES or dtype == torch.long):
        return torch.zeros(shape, dtype=dtype, device=device)
    np_dtype = np.dtype(np.int64 if dtype == torch.long else _NUMPY_DTYPES[dtype])
    nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if nbytes == 0 or advice is None:
        return torch.from_numpy(np.zeros(shape, dtype=np_dtype))
    # anonymous and private (copied on write after a fork): zero-filled page by page
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    with contextlib.suppress(OSError):  # a kernel without huge pages refuses it: no harm
        buffer.madvise(advice)
    # the array (and through it the tensor) keeps the mapping alive
    return torch.from_numpy(np.frombuffer(buffer, dtype=np_dtype).reshape(shape))


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
        """A copy into fresh lazily zeroed tables: only rows holding links are copied, so
        untouched pages stay non-resident."""
        B, N, KL = self.pred.shape
        used = (self.pred_rows > 0).any(-1) | (self.succ_rows > 0).any(-1)  # (B, N)
        flat = torch.nonzero(used.reshape(-1)).flatten()
        out = LinkTables.empty(B, N, KL, self.pred.dtype, self.pred.device)
        for source, target in zip(self, out, strict=True):
            target.view(B * N, KL).index_copy_(0, flat, source.reshape(B * N, KL)[flat])
        return out


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
    rows (deduplicated, -1 padding); weights (B, S). Returns (B, X), by binary search."""
    keys = torch.where(rows >= 0, rows + 1, torch.iinfo(rows.dtype).max)  # padding last
    keys, order = torch.sort(keys, dim=-1)
    position = torch.searchsorted(keys, ids).clamp_max(keys.shape[-1] - 1)  # (B, X)
    found = (keys.gather(-1, position) == ids) & (ids > 0)
    return weights.gather(-1, order).gather(-1, position) * found


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


def _rows_of(table: Tensor, ids: Tensor) -> Tensor:
    """Rows (B, A, KL) of a (B, N, KL) table for ids (B, A) stored as row + 1."""
    return table.gather(1, (ids - 1).clamp_min(0).unsqueeze(-1).expand(-1, -1, table.shape[-1]))


def _store_rows(table: Tensor, ids: Tensor, live: Tensor, values: Tensor) -> None:
    """table[b, ids - 1] = values where ``live`` (ids (B, A), values (B, A, KL)), in place.
    A row listed twice must be given the same values twice."""
    B, N, KL = table.shape
    flat = (ids - 1).clamp_min(0) + torch.arange(B, device=ids.device)[:, None] * N
    table.view(B * N, KL).index_copy_(0, flat[live], values[live].to(table.dtype))


def _decay_rows(
    ids_table: Tensor, value_table: Tensor, ids: Tensor, skip: Tensor, rows: Tensor, w: Tensor
) -> None:
    """Entries (x, v) of the lists of ``ids`` (B, A) become (x, v (1 - w_x)): the rows
    whose only change is the decay of their links to written rows. Rows in ``skip`` (B, F)
    (ids, updated in full elsewhere) are left alone."""
    live = (ids > 0) & (weight_of(ids, skip - 1, torch.ones_like(skip, dtype=w.dtype)) == 0)
    entry_ids, values = _rows_of(ids_table, ids), _rows_of(value_table, ids)
    B, A, KL = entry_ids.shape
    values = values * (1.0 - weight_of(entry_ids.flatten(1), rows, w).view(B, A, KL))
    entry_ids = entry_ids * (values > 0)
    _store_rows(ids_table, ids, live, entry_ids)
    _store_rows(value_table, ids, live, values * (entry_ids > 0))


def update_links(
    tables: LinkTables, prec_rows: Tensor, prec: Tensor, rows: Tensor, weights: Tensor
) -> None:
    """Apply L' = (1 - w 1^T - 1 w^T) o L + w p^T to the tables, in place.

    The written rows and p's rows (F of them) get new lists: decayed, new links added,
    the KL largest kept. The rows linked to or from a written row (O(S KL)) only decay.

    Args:
        tables: the link buffers, (B, N, KL) each.
        prec_rows, prec: (B, KL) the precedence before this write (rows + 1, values).
        rows: (B, S) written rows, deduplicated (-1: none); weights: (B, S) detached.
    """
    B, _, KL = tables.pred.shape
    S = rows.shape[1]
    written = torch.where(rows >= 0, rows + 1, 0)  # (B, S) as ids
    # Precedence rows that are also written are listed once (index_copy_ gets no duplicates).
    prec_only = prec_rows * (weight_of(prec_rows, rows, torch.ones_like(weights)) == 0)
    full = torch.cat([written, prec_only], dim=1)  # (B, F) distinct ids, 0 padding
    neighbours_after = _rows_of(tables.succ_rows, written).flatten(1)  # rows written after C
    neighbours_before = _rows_of(tables.pred_rows, written).flatten(1)  # rows C came after
    live = full > 0
    F = full.shape[1]
    w_row = weight_of(full, rows, weights)  # (B, F)
    p_row = weight_of(full, prec_rows - 1, prec)  # (B, F): p at each row

    # Predecessors (row i of L): decay, then w_i p[j] for j in p, j != i.
    pred_rows, pred = _rows_of(tables.pred_rows, full), _rows_of(tables.pred, full)
    w_j = weight_of(pred_rows.flatten(1), rows, weights).view(B, F, KL)
    decayed = pred * (1.0 - w_row.unsqueeze(-1) - w_j) * (pred_rows > 0)
    new_ids = prec_rows.unsqueeze(1).expand(B, F, KL)
    new = w_row.unsqueeze(-1) * prec.unsqueeze(1) * (new_ids != full.unsqueeze(-1))
    pred_rows, pred = merge_entries(
        torch.cat([pred_rows, new_ids], -1), torch.cat([decayed, new], -1), KL
    )
    # Successors (column j of L): decay, then w_i p[j] for written i != j.
    succ_rows, succ = _rows_of(tables.succ_rows, full), _rows_of(tables.succ, full)
    w_i = weight_of(succ_rows.flatten(1), rows, weights).view(B, F, KL)
    decayed = succ * (1.0 - w_row.unsqueeze(-1) - w_i) * (succ_rows > 0)
    new_ids = written.unsqueeze(1).expand(B, F, S)
    new = weights.unsqueeze(1) * p_row.unsqueeze(-1) * (new_ids != full.unsqueeze(-1))
    succ_rows, succ = merge_entries(
        torch.cat([succ_rows, new_ids], -1), torch.cat([decayed, new], -1), KL
    )
    # The neighbours first (they read the old lists), then the full rows.
    _decay_rows(tables.pred_rows, tables.pred, neighbours_after, full, rows, weights)
    _decay_rows(tables.succ_rows, tables.succ, neighbours_before, full, rows, weights)
    for table, value in zip(tables, (pred_rows, pred, succ_rows, succ), strict=True):
        _store_rows(table, full, live, value)


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
    mirror = tables.pred_rows if forward else tables.succ_rows
    KL = ids_table.shape[-1]
    index = read_rows.clamp_min(0).reshape(B, R * K, 1).expand(-1, -1, KL)
    ids = ids_table.gather(1, index).view(B, R, K, KL) * (read_rows >= 0).unsqueeze(-1)
    # Use a link only while the other table holds it too: after a list overflowed, one table
    # may keep a link the other dropped, and only the kept side stops being decayed.
    back = _rows_of(mirror, ids.reshape(B, R * K * KL)).view(B, R, K, KL, KL)
    ids = ids * (back == (read_rows + 1)[..., None, None]).any(-1)
    links = value_table.gather(1, index).view(B, R, K, KL).to(read_weights.dtype)
    weights = (read_weights.unsqueeze(-1) * links).reshape(B, R, K * KL)
    ids, weights = merge_entries(ids.reshape(B, R, K * KL), weights, K * KL)
    return ids - 1, weights
