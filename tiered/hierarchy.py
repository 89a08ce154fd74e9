"""The hierarchy's links between tiers: write-back (``spill_to``) and fill on read
(``fill_from``), checked when a controller is built, and the order tiers step in.

A spill moves content down: what a tier's write overwrites is written, the same step, into
the tier it names (a RAM or a Disk), so a spill's source steps before its target. A fill
moves content up: what a lower tier read with high weight is written into a Cache at the
next step. ``spill_of`` is the rule that turns a write into a spilled row, and
``summarise_interface`` the clock rules of slow tiers. ``plan_hierarchy`` checks every link
and raises one error naming the tiers for an unknown name, a link to itself, a cycle, a
target that cannot take writes (a ROM, a Register, a Cache) and a width mismatch without a
projection.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from tiered.tier import Spill, Tier
from tiered.validation import check_name


def spill_of(removed: Tensor, weights: Tensor, occupied: Tensor) -> Spill:
    """The one-row write-back of a step's overwrite.

    The row is the erased content of the overwritten slots, averaged with weights
    ``p_n = w_n f_n / g``, at the gate ``g = sum_n w_n f_n`` (clamped to 1): the share of
    this step's write that landed on occupied slots. A one-hot write with weight ``w`` onto
    an occupied slot ``n`` with erase ``e`` spills ``e * M[n]`` at gate ``w``; a write onto
    an empty slot spills nothing.

    Args:
        removed: (B, N, W) the content each slot lost: ``M_{t-1}[n] * e * w_n`` summed over
            the write heads' erase products (``M_{t-1} (1 - keep)``).
        weights: (B, N) the write weight each slot received, summed over write heads.
        occupied: (B, N) in [0, 1], how much each slot held content before this write
            (differentiable where the tier tracks it softly: the Cache's ``written``, the
            dense RAM's usage).

    Returns:
        ``Spill`` with content (B, 1, W) and gate (B, 1).
    """
    total = (weights * occupied).sum(dim=-1)  # (B,)
    # removed[n] already carries w_n, so weighting it by p_n / w_n = f_n / g gives the mean
    scale = occupied / total.clamp_min(1e-6).unsqueeze(-1)  # (B, N)
    content = torch.einsum("bn,bnw->bw", scale, removed)
    gate = total.clamp(max=1.0)
    return Spill(content.unsqueeze(1), gate.unsqueeze(1))


def summarise_interface(
    rule: str, x: Tensor, prev: Tensor, clock: Tensor, period: int, gate: Tensor | None
) -> Tensor:
    """One step of a slow tier's summary of the write features it was given since its last
    tick (``Tier(clock_rule=...)``).

    The window of a tick at step ``c`` (a multiple of ``period``) is steps ``c - period + 1 ..
    c``; step 0's window is step 0 alone. At each step the summary takes the step's
    features ``x``; at a tick the tier writes with the summary instead of ``x``.

    - ``"last"``: ``s_t = x_t``: the tick's own features (what the tier got without a rule).
    - ``"mean"``: the running mean over the window.
    - ``"gate"``: ``s_t = g_t x_t + (1 - g_t) s_{t-1}`` with a learned gate ``g_t`` in
      [0, 1] (the controller's), ``s = x`` at a window's first step.

    Args:
        rule: "last", "mean" or "gate".
        x: (B, F) this step's write features.
        prev: (B, F) the summary after the previous step.
        clock: (B,) steps taken before this one.
        period: the tier's period.
        gate: (B, 1) in [0, 1] for ``"gate"``, else None.

    Returns:
        (B, F) the summary after this step.
    """
    if rule == "last" or period == 1:
        return x
    position = torch.remainder(clock - 1, period) + 1  # 1..period within the window
    first = ((position == 1) | (clock == 0)).unsqueeze(-1)  # (B, 1)
    if rule == "mean":
        count = torch.where(clock == 0, 1, position).unsqueeze(-1).to(x.dtype)
        return torch.where(first, x, prev + (x - prev) / count)
    if rule == "gate":
        assert gate is not None
        return torch.where(first, x, gate * x + (1.0 - gate) * prev)
    raise ValueError(f"summarise_interface: rule must be 'last', 'mean' or 'gate', got {rule!r}")


def check_tier_name(owner: str, field: str, value: object) -> str | None:
    """``value`` if it is None or a usable tier name, else an error naming ``field``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {field} must be a tier name or null, got {value!r}")
    return check_name(f"{owner}: {field}", value)


def hierarchy_repr(tier: Tier) -> str:
    """The hierarchy settings of a tier that has any, for ``extra_repr``."""
    parts = []
    if tier.spill_to is not None:
        parts.append(f"spill_to={tier.spill_to!r}")
    fills = getattr(tier, "fill_from", [])
    if fills:
        parts.append(f"fill_from={fills!r}")
    if tier.clock_rule != "last":
        parts.append(f"clock_rule={tier.clock_rule!r}")
    return "".join(", " + part for part in parts)


def stored_width(tier: Tier) -> int | None:
    """The width of a row a tier stores, if spills can be written into it: a RAM's width;
    a Disk's, when its keys and values are equally wide (a spilled row is both)."""
    if hasattr(tier, "key_width"):
        key, value = tier.key_width, tier.value_width  # type: ignore[attr-defined]
        return key if key == value else None
    return getattr(tier, "width", None)


def read_width(tier: Tier) -> int | None:
    """The width of one read head's read, for tiers whose reads can fill a Cache."""
    heads = getattr(tier, "read_heads", None)
    return tier.read_size // heads if heads else None


class HierarchyPlan(NamedTuple):
    """The checked links of a controller's tiers, by position in its tier list.

    Attributes:
        order: the positions in the order to step them (every spill source before its
            target; otherwise the declared order).
        spills: source position -> target position.
        fills: Cache position -> the positions it fills from.
        projections: source name -> (source width, target width), for spills that need a
            learned projection.
    """

    order: list[int]
    spills: dict[int, int]
    fills: dict[int, list[int]]
    projections: dict[str, tuple[int, int]]


def plan_hierarchy(tiers: list[Tier] | nn.ModuleList) -> HierarchyPlan:
    """Check the tiers' ``spill_to`` and ``fill_from`` links and order the tiers.

    Raises:
        ValueError: naming the tiers of any invalid link.
    """
    names = [tier.name for tier in tiers]
    where = {name: position for position, name in enumerate(names)}
    spills: dict[int, int] = {}
    projections: dict[str, tuple[int, int]] = {}
    for position, tier in enumerate(tiers):
        target_name = tier.spill_to
        if target_name is None:
            continue
        owner = f"{type(tier).__name__} '{tier.name}'"
        if target_name not in where:
            raise ValueError(
                f"{owner}: spill_to={target_name!r} names no tier of this controller; "
                f"its tiers are {names}"
            )
        if target_name == tier.name:
            raise ValueError(f"{owner}: spill_to names the tier itself (a cycle)")
        target = tiers[where[target_name]]
        if not target.accepts_spills:
            raise ValueError(
                f"{owner}: spill_to={target_name!r} is a {type(target).__name__}, which "
                f"cannot take spills; a spill's target must be a RAM or a Disk"
            )
        source_width, target_width = tier.width, stored_width(target)  # type: ignore[attr-defined]
        if target_width is None:
            raise ValueError(
                f"{owner}: spill_to={target_name!r} is a Disk whose key_width "
                f"({target.key_width}) and value_width ({target.value_width}) differ; a "  # type: ignore[attr-defined]
                f"spilled row is both key and value, so they must be equal"
            )
        if source_width != target_width:
            if not tier.spill_projection:
                raise ValueError(
                    f"{owner}: spills rows of width {source_width} into "
                    f"'{target_name}', whose rows are {target_width} wide; give the "
                    f"tiers equal widths, or set spill_projection: true for a learned "
                    f"projection"
                )
            projections[tier.name] = (source_width, target_width)
        spills[position] = where[target_name]
    _check_acyclic(spills, names)
    fills: dict[int, list[int]] = {}
    for position, tier in enumerate(tiers):
        sources = getattr(tier, "fill_from", [])
        if not sources:
            continue
        owner = f"{type(tier).__name__} '{tier.name}'"
        fills[position] = []
        for rank, source_name in enumerate(sources):
            if source_name not in where or source_name == tier.name:
                raise ValueError(
                    f"{owner}: fill_from names {source_name!r}, which is not another tier "
                    f"of this controller; its tiers are {names}"
                )
            source = tiers[where[source_name]]
            if source_name in sources[:rank]:
                raise ValueError(f"{owner}: fill_from names {source_name!r} twice")
            if not source.fills_caches:
                raise ValueError(
                    f"{owner}: fill_from={source_name!r} is a {type(source).__name__}, "
                    f"whose reads cannot fill a cache; fill from a RAM, ROM or Disk"
                )
            if read_width(source) != tier.width:  # type: ignore[attr-defined]
                raise ValueError(
                    f"{owner}: fill_from={source_name!r} reads rows of width "
                    f"{read_width(source)} per head, the cache's slots are "
                    f"{tier.width} wide; they must be equal"  # type: ignore[attr-defined]
                )
            fills[position].append(where[source_name])
        rows = sum(tiers[s].read_heads for s in fills[position])  # type: ignore[misc]
        if rows > tier.slots:  # type: ignore[attr-defined]
            raise ValueError(
                f"{owner}: fill_from {sources} offers up to {rows} rows a step (one per "
                f"read head), more than the cache's {tier.slots} slots"  # type: ignore[attr-defined]
            )
    return HierarchyPlan(_order(len(tiers), spills), spills, fills, projections)


def _check_acyclic(spills: dict[int, int], names: list[str]) -> None:
    for start in spills:
        path, position = [start], spills[start]
        while position in spills:
            if position in path:
                cycle = " -> ".join(names[p] for p in [*path[path.index(position) :], position])
                raise ValueError(f"spill_to links form a cycle: {cycle}")
            path.append(position)
            position = spills[position]


def _order(count: int, spills: dict[int, int]) -> list[int]:
    """Positions 0..count-1 with each source before its target, else in declared order."""
    order: list[int] = []
    placed: set[int] = set()

    def place(position: int) -> None:
        if position in placed:
            return
        for source, target in spills.items():
            if target == position:
                place(source)
        placed.add(position)
        order.append(position)

    for position in range(count):
        place(position)
    return order
