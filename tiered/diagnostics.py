"""Diagnostics of the hierarchy: which tier a model reads, writes and spills into, over time
and slots.

``trace`` steps a controller over a few sequences and records, per tier and step, the read
weight each slot received (summed over read heads), the content written into each slot
(``sum_w |M_t[n, w] - M_{t-1}[n, w]|``: the tier's own writes, spills it took and fills alike)
and the tier's statistics. ``draw`` makes one figure per sequence: a heatmap of reads and
one of writes for every tier with slots, and below them every tier's write mass, spills,
occupancy and value cache hit rate over time. ``summary`` is the same in a few lines of text.

``TierDiagnostics`` (a Lightning Callback) does this after validation on fixed sequences of
the validation split and saves the figures through the logger: into TensorBoard when it is
the logger, else as PNG files (with the summary) in ``<log_dir>/diagnostics/``. ``tiered
inspect CHECKPOINT`` (``tiered.inspect_cli``) does the same for a checkpoint written by
``tiered fit``.

Named dimensions: B batch, T time, N slots, R read heads, K rows read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from tiered.tier import Tier

# Tiers with more slots than this are drawn over the rows the sequence touched only.
DRAWN_SLOTS = 256
# The stage tiers are told while traced: none of Lightning's, so a Disk appends nothing.
TRACE_STAGE = "diagnostics"
PONDER = "ponder"  # an ACTController's record (tiered.controllers.act.PONDER)


@dataclass
class TierTrace:
    """One tier over one sequence.

    Attributes:
        name: the tier's name; kind: its class name.
        reads: (T, X) read weight per slot summed over heads, or None (no slots to draw).
        writes: (T, X) content written per slot, or None.
        slots: (X,) the slot ids of the columns.
        stats: per ``TierStats`` field, (T,) its value at each step.
    """

    name: str
    kind: str
    reads: np.ndarray | None
    writes: np.ndarray | None
    slots: np.ndarray | None
    stats: dict[str, np.ndarray] = field(default_factory=dict)


def _slot_weights(state: Any, slots: int) -> Tensor | None:
    """(B, N) read weight per slot, summed over heads, from a Cache or RAM state."""
    weights = getattr(state, "read_weights", None)
    if weights is None or not hasattr(state, "memory"):
        return None
    indices = getattr(state, "read_indices", None)
    if indices is None:  # dense: (B, R, N)
        return weights.sum(dim=1)
    B = weights.shape[0]  # sparse: weights over the K rows of each head
    dense = torch.zeros(B, slots + 1, dtype=weights.dtype, device=weights.device)
    dense.scatter_add_(1, (indices.reshape(B, -1) + 1).clamp_min(0), weights.reshape(B, -1))
    return dense[:, 1:]


@torch.no_grad()
def trace(controller: Any, inputs: Tensor) -> list[dict[str, TierTrace]]:
    """Step ``controller`` (an ``LSTMController``) over ``inputs`` (B, T, I) in eval mode.

    Returns:
        Per sequence, per tier name (the register's included), its ``TierTrace``.
    """
    was_training = controller.training
    controller.eval()
    tiers = [module for module in controller.modules() if isinstance(module, Tier)]
    stages = [tier.stage for tier in tiers]
    for tier in tiers:  # a stage no tier writes in: a Disk never appends what is traced
        tier.stage = TRACE_STAGE
    try:
        B, T = inputs.shape[:2]
        state = controller.initial_state(B, inputs.device, inputs.dtype)
        names = controller.tier_names
        stats: dict[str, list[Any]] = {name: [] for name in names}
        reads: dict[str, list[Tensor]] = {tier.name: [] for tier in controller.tiers}
        writes: dict[str, list[Tensor]] = {tier.name: [] for tier in controller.tiers}
        for t in range(T):
            before = [getattr(s, "memory", None) for s in state.tiers]
            before = [None if m is None else m.detach().clone() for m in before]
            _, state, step_stats = controller.step(inputs[:, t], state)
            for name in names:
                stats[name].append(step_stats[name])
            for tier, old, new in zip(controller.tiers, before, state.tiers, strict=True):
                weights = _slot_weights(new, getattr(tier, "slots", 0))
                if weights is None or old is None:
                    continue
                reads[tier.name].append(weights.float().cpu())
                writes[tier.name].append((new.memory - old).abs().sum(dim=-1).float().cpu())
        out = []
        for b in range(B):
            record = {}
            for name in names:
                per_field = {
                    f: torch.stack([getattr(s, f)[b] for s in stats[name]]).float().cpu().numpy()
                    for f in stats[name][0]._fields
                }
                r = torch.stack([x[b] for x in reads[name]]) if reads.get(name) else None
                w = torch.stack([x[b] for x in writes[name]]) if writes.get(name) else None
                slots = None
                if r is not None and w is not None:
                    slots = np.arange(r.shape[1])
                    if r.shape[1] > DRAWN_SLOTS:  # the rows this sequence touched
                        touched = ((r > 0) | (w > 0)).any(dim=0).nonzero().flatten()
                        slots = touched[:DRAWN_SLOTS].numpy()
                        r, w = r[:, touched[:DRAWN_SLOTS]], w[:, touched[:DRAWN_SLOTS]]
                kind = _kind(controller, name)
                record[name] = TierTrace(
                    name, kind, None if r is None else r.numpy(),
                    None if w is None else w.numpy(), slots, per_field,
                )  # fmt: skip
            out.append(record)
        return out
    finally:
        controller.train(was_training)
        for tier, stage in zip(tiers, stages, strict=True):
            tier.stage = stage


def _kind(controller: Any, name: str) -> str:
    if name == PONDER:  # PonderNet's write mass is the expected halting step, ACT's N(t)
        return "PonderNet" if type(controller).__name__ == "PonderNetController" else "ACT"
    for module in controller.modules():
        if isinstance(module, Tier) and module.name == name:
            return type(module).__name__
    return "?"


def summary(record: dict[str, TierTrace], steps: int | None = None) -> str:
    """A few lines on how each tier was used over one traced sequence: write mass per step,
    the share of steps that wrote, content spilled per step, slots used at the end, the mean
    read entropy and, for tiers with a value cache, the hit rate."""
    lines = []
    for name, tr in record.items():
        s = tr.stats
        T = len(s["write_mass"]) if steps is None else steps
        if name == PONDER:  # an ACTController: its write mass is the internal steps taken
            lines.append(f"{name} ({tr.kind}): internal steps per input "
                         f"{s['write_mass'][:T].mean():.3g} (most "
                         f"{s['write_mass'][:T].max():.3g})")  # fmt: skip
            continue
        parts = [
            f"write mass/step {s['write_mass'][:T].mean():.3g}",
            f"steps written {s['wrote'][:T].mean():.0%}",
            f"spilled/step {s['spilled'][:T].mean():.3g}",
            f"slots used {s['slots_used'][T - 1]:.3g}",
            f"read entropy {s['read_entropy'][:T].mean():.3g} nats",
        ]
        reads = s["value_reads"][:T].sum()
        if reads > 0:
            parts.append(f"value cache hit rate {s['cache_hits'][:T].sum() / reads:.0%}")
        lines.append(f"{name} ({tr.kind}): " + ", ".join(parts))
    return "\n".join(lines)


def draw(record: dict[str, TierTrace], title: str = "", steps: int | None = None) -> Any:
    """A matplotlib figure of one traced sequence: per tier with slots, a heatmap of its
    read weights and one of the content written (time across, slots up); below, per tier,
    the write mass, the spilled content, the occupancy (``slots_used``) per step and, for
    tiers with a value cache, the hit rate so far; for an ``ACTController``, the internal
    steps it pondered each input for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [tr for tr in record.values() if tr.reads is not None]
    ponder = record.get(PONDER)
    rows = len(drawn) + 2 + (ponder is not None)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.6 * rows), squeeze=False)
    for row, tr in enumerate(drawn):
        T = tr.reads.shape[0] if steps is None else steps  # type: ignore[union-attr]
        for col, (values, label) in enumerate(((tr.reads, "read weight"),
                                               (tr.writes, "content written"))):  # fmt: skip
            ax = axes[row][col]
            image = ax.imshow(values[:T].T, aspect="auto", interpolation="nearest", cmap="viridis",
                              origin="lower")  # fmt: skip
            ax.set_title(f"{tr.name} ({tr.kind}): {label}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("slot" if len(tr.slots) == values.shape[1] else "row")  # type: ignore[arg-type]
            fig.colorbar(image, ax=ax, fraction=0.04)
    if ponder is not None:
        ax_steps = axes[-3][0]
        T = len(ponder.stats["write_mass"]) if steps is None else steps
        ax_steps.plot(ponder.stats["write_mass"][:T], drawstyle="steps-mid")
        kind = record[PONDER].kind
        note = " (expected)" if kind == "PonderNet" else ""
        ax_steps.set_title(f"{kind}: internal steps pondered per input{note}", fontsize=9)
        ax_steps.set_xlabel("step")
        axes[-3][1].axis("off")
    (ax_mass, ax_spill), (ax_used, ax_hits) = axes[-2], axes[-1]
    for tr in record.values():
        if tr.kind in ("Register", "ACT", "PonderNet"):  # a state rewritten whole; ponder
            continue
        s = tr.stats
        T = len(s["write_mass"]) if steps is None else steps
        ax_mass.plot(s["write_mass"][:T], label=tr.name)
        ax_spill.plot(s["spilled"][:T], label=tr.name)
        ax_used.plot(s["slots_used"][:T], label=tr.name)
        reads = np.cumsum(s["value_reads"][:T])
        if reads[-1] > 0:
            ax_hits.plot(np.cumsum(s["cache_hits"][:T]) / np.maximum(reads, 1), label=tr.name)
    ax_mass.set_title("write mass per step (spills and fills taken included)", fontsize=9)
    ax_spill.set_title("content spilled to the spill_to tier per step", fontsize=9)
    ax_used.set_title("occupancy: slots (rows) holding content", fontsize=9)
    ax_hits.set_title("value cache hit rate so far (ROM, Disk)", fontsize=9)
    for ax in (ax_mass, ax_spill, ax_used, ax_hits):
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no tier of this kind", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="grey")  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def real_steps(batch: Any, b: int) -> int:
    """The real (unpadded) steps of sequence ``b`` of a ``SequenceBatch``."""
    return int(batch.steps[b].sum())


class TierDiagnostics(Callback):
    """After validation, draw how each tier is used on fixed validation sequences.

    The sequences are the first ones of the validation split's first batch (a task's batches
    are a pure function of its seed), so successive figures show the same inputs as training
    goes on. Figures (and ``summary`` text) go to TensorBoard when it is the logger, else to
    ``<log_dir>/diagnostics/step_<step>_seq<i>.png`` (and ``.txt``).

    Args:
        sequences: how many validation sequences to draw.
        every_n_validations: draw after every this many validation runs.
    """

    def __init__(self, sequences: int = 2, every_n_validations: int = 1) -> None:
        from tiered.validation import check_positive_int

        self.sequences = check_positive_int("TierDiagnostics", "sequences", sequences)
        self.every = check_positive_int(
            "TierDiagnostics", "every_n_validations", every_n_validations
        )
        self.validations = 0
        self.saved: list[Path] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.validations += 1
        if (self.validations - 1) % self.every:
            return
        task = trainer.datamodule
        if task is None or not hasattr(task, "make_batch"):
            raise ValueError(
                "TierDiagnostics: the datamodule must be a tiered task (SequenceTask), got "
                f"{type(task).__name__}"
            )
        batch = task.make_batch("val", 0)
        n = min(self.sequences, batch.inputs.shape[0])
        inputs = batch.inputs[:n].to(pl_module.device, pl_module.dtype)
        records = trace(pl_module.controller, inputs)
        step = trainer.global_step
        from lightning.pytorch.loggers import TensorBoardLogger

        tensorboard = next(
            (lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None
        )
        import matplotlib.pyplot as plt

        for b, record in enumerate(records):
            T = real_steps(batch, b)
            fig = draw(record, f"step {step}, validation sequence {b}", T)
            text = summary(record, T)
            if tensorboard is not None:
                tensorboard.experiment.add_figure(f"diagnostics/seq{b}", fig, step)
                tensorboard.experiment.add_text(f"diagnostics/seq{b}", text, step)
            else:
                folder = Path(trainer.log_dir or trainer.default_root_dir) / "diagnostics"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"step_{step}_seq{b}.png"
                fig.savefig(path, dpi=80)
                path.with_suffix(".txt").write_text(text + "\n")
                self.saved.append(path)
            plt.close(fig)


# ------------------------------------------------------------------ tiered inspect
def task_from_config(path: Path) -> Any:
    """The task (``data``) of a ``tiered fit`` config file, built from its class path."""
    import importlib

    import yaml

    data = (yaml.safe_load(path.read_text()) or {}).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"tiered inspect: {path} has no data.class_path (the task)")
    module, _, name = data["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))
