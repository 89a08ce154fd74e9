"""Dense RAM: the access module of the Differentiable Neural Computer, as pure steps.

Content addressing, usage with free gates and sort-based allocation, the temporal link
matrix with precedence, and forward/backward reads mixed by read modes, with several read
and write heads. Cost per step: time O(B (R + 1) H N^2 + B (R + H) N W + B H N log N) (the
link update and the forward/backward reads, content addressing and the write, one sort per
write head); memory O(B H N^2) for the links. Off the tier's ticks the write path is still
computed, with zero weights. ``tiered.tiers.RAM`` wraps this (and the sparse mode).

Named dimensions: B batch, N slots, W width, R read heads, H write heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tiered.hierarchy import spill_of
from tiered.tier import Spill, join_spills
from tiered.tiers import addressing, linkage
from tiered.tiers.link_kernels import link_step


class RAMState(NamedTuple):
    """Per-sequence state of the dense RAM.

    Attributes:
        memory: (B, N, W) the memory matrix M.
        read_weights: (B, R, N) the last read weights w^r.
        write_weights: (B, H, N) this step's write weights w^w (zero off the tier's ticks).
        precedence: (B, H, N) precedence p of each write head.
        link: (B, H, N, N) temporal link matrix L of each write head.
        usage: (B, N) usage u in [0, 1].
        clock: (B,) steps taken, an integer tensor.
    """

    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    precedence: Tensor
    link: Tensor
    usage: Tensor
    clock: Tensor


class RAMInterface(NamedTuple):
    """The controller's interface vector split and squashed for the RAM.

    Attributes:
        read_keys: (B, R, W).
        read_strengths: (B, R), >= 1.
        free_gates: (B, R) in [0, 1].
        read_modes: (B, R, 1 + 2H), a softmax: H backward, 1 content, H forward modes.
        write_keys: (B, H, W).
        write_strengths: (B, H), >= 1.
        erase: (B, H, W) in [0, 1].
        write_vectors: (B, H, W).
        allocation_gates: (B, H) in [0, 1].
        write_gates: (B, H) in [0, 1].
    """

    read_keys: Tensor
    read_strengths: Tensor
    free_gates: Tensor
    read_modes: Tensor | None
    write_keys: Tensor
    write_strengths: Tensor
    erase: Tensor
    write_vectors: Tensor
    allocation_gates: Tensor
    write_gates: Tensor
    read_masks: Tensor | None = None
    write_masks: Tensor | None = None
    sharpness: Tensor | None = None


class DenseOptions(NamedTuple):
    """The DNC's known fixes, each off in the classic DNC (``DenseOptions()``).

    Attributes:
        links: keep the temporal link matrices and the read modes; False is a content-only
            memory (Franke et al. 2018): reads are content reads, no N x N state.
        content_mask: each head emits a mask m in [0, 1]^W and content addressing compares
            k * m with M[i] * m (Csordás & Schmidhuber 2019, masked content addressing).
        deallocate: freed slots lose their content: before the write, M <- M * psi, the
            retention of the free gates (Csordás & Schmidhuber 2019, de-allocation).
        sharpness: forward and backward link weights are sharpened, d_i^s / sum_j d_j^s,
            with s = oneplus(.) >= 1 per read head and direction (Csordás & Schmidhuber
            2019, link distribution sharpness control). Needs ``links``.
    """

    links: bool = True
    content_mask: bool = False
    deallocate: bool = False
    sharpness: bool = False


CLASSIC = DenseOptions()  # the DNC as published: links, no fixes


def _layout(width: int, read_heads: int, write_heads: int, options: DenseOptions):
    """(name, size) of each interface part, in order; read parts first, write parts last."""
    W, R, H = width, read_heads, write_heads
    read = [("read_keys", R * W), ("read_strengths", R), ("free_gates", R)]
    if options.links:
        read.append(("read_modes", R * (1 + 2 * H)))
    if options.content_mask:
        read.append(("read_masks", R * W))
    if options.sharpness and options.links:
        read.append(("sharpness", 2 * R))
    write = [("write_keys", H * W), ("write_strengths", H), ("erase", H * W),
             ("write_vectors", H * W), ("allocation_gates", H), ("write_gates", H)]  # fmt: skip
    if options.content_mask:
        write.append(("write_masks", H * W))
    return read, write


def ram_interface_size(
    width: int, read_heads: int, write_heads: int, options: DenseOptions = CLASSIC
) -> int:
    """R (W + 3 + 2H) + H (3W + 3) features in the classic DNC; see ``parse_ram_interface``
    for what each option adds or removes."""
    read, write = _layout(width, read_heads, write_heads, options)
    return sum(size for _, size in read + write)


def ram_write_features(
    width: int, read_heads: int, write_heads: int, options: DenseOptions = CLASSIC
) -> int:
    """How many interface features, at the end, only writes use."""
    return sum(size for _, size in _layout(width, read_heads, write_heads, options)[1])


def parse_ram_interface(
    interface: Tensor,
    width: int,
    read_heads: int,
    write_heads: int,
    options: DenseOptions = CLASSIC,
) -> RAMInterface:
    """Split (B, ram_interface_size) into the named, squashed parts of ``RAMInterface``.

    Layout: R read keys (W each), R read strengths, R free gates, R x (1 + 2H) read modes
    (not without ``links``), R read masks (W each, with ``content_mask``), 2R sharpness
    exponents (with ``sharpness``), H write keys (W each), H write strengths, H erase
    vectors (W each), H write vectors (W each), H allocation gates, H write gates, H write
    masks (W each, with ``content_mask``).
    """
    B, W, R, H = interface.shape[0], width, read_heads, write_heads
    read, write = _layout(W, R, H, options)
    names = [name for name, _ in read + write]
    parts = dict(zip(names, torch.split(interface, [size for _, size in read + write], -1),
                     strict=True))  # fmt: skip
    masks = {
        key: torch.sigmoid(parts[key].reshape(B, -1, W))
        for key in ("read_masks", "write_masks")
        if key in parts
    }
    return RAMInterface(
        read_keys=parts["read_keys"].reshape(B, R, W),
        read_strengths=addressing.oneplus(parts["read_strengths"]),
        free_gates=torch.sigmoid(parts["free_gates"]),
        read_modes=(
            torch.softmax(parts["read_modes"].reshape(B, R, 1 + 2 * H), dim=-1)
            if "read_modes" in parts
            else None
        ),
        write_keys=parts["write_keys"].reshape(B, H, W),
        write_strengths=addressing.oneplus(parts["write_strengths"]),
        erase=torch.sigmoid(parts["erase"].reshape(B, H, W)),
        write_vectors=parts["write_vectors"].reshape(B, H, W),
        allocation_gates=torch.sigmoid(parts["allocation_gates"]),
        write_gates=torch.sigmoid(parts["write_gates"]),
        read_masks=masks.get("read_masks"),
        write_masks=masks.get("write_masks"),
        sharpness=(
            addressing.oneplus(parts["sharpness"]).reshape(B, R, 2)
            if "sharpness" in parts
            else None
        ),
    )


def sharpen(weights: Tensor, exponent: Tensor) -> Tensor:
    """S(d, s)_i = d_i^s / sum_j d_j^s over the last axis (0 where d is all 0).

    Taken as a softmax of s log d (slots with d = 0 left out), so it stays exact when every
    d^s underflows.

    Args:
        weights: (B, R, H, N) non-negative link weights d.
        exponent: (B, R) s >= 1.

    Returns:
        (B, R, H, N).
    """
    tiny = torch.finfo(weights.dtype).tiny
    scores = exponent[:, :, None, None] * torch.log(weights.clamp_min(tiny))
    scores = scores.masked_fill(weights <= 0, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def mix_read_weights(
    read_modes: Tensor, content: Tensor, forward: Tensor, backward: Tensor
) -> Tensor:
    """w^r = sum_h pi^b_h b_h + pi^c c + sum_h pi^f_h f_h.

    Args:
        read_modes: (B, R, 1 + 2H): backward modes, content mode, forward modes.
        content: (B, R, N).
        forward: (B, R, H, N).
        backward: (B, R, H, N).

    Returns:
        (B, R, N).
    """
    H = forward.shape[2]
    backward_mode = read_modes[..., :H].unsqueeze(-1)  # (B, R, H, 1)
    content_mode = read_modes[..., H : H + 1]  # (B, R, 1)
    forward_mode = read_modes[..., H + 1 :].unsqueeze(-1)  # (B, R, H, 1)
    return (
        content_mode * content
        + (forward_mode * forward).sum(dim=2)
        + (backward_mode * backward).sum(dim=2)
    )


def _content(memory: Tensor, keys: Tensor, strengths: Tensor, masks: Tensor | None) -> Tensor:
    if masks is None:
        return addressing.content_weights(memory, keys, strengths)
    return addressing.masked_content_weights(memory, keys, masks, strengths)


def dense_step(
    interface: Tensor,
    state: RAMState,
    *,
    width: int,
    read_heads: int,
    write_heads: int,
    tick: Tensor,
    incoming: tuple[Spill, ...] = (),
    spill: bool = False,
    options: DenseOptions = CLASSIC,
) -> tuple[Tensor, RAMState, Tensor, Tensor, Tensor, Spill | None]:
    """One DNC step: write (on ticks), take incoming spills, then read.

    Args:
        interface: (B, ram_interface_size).
        state: the previous ``RAMState``.
        tick: (B,) boolean, True where the RAM writes this step.
        incoming: spills from tiers that name this RAM in ``spill_to``: rows (B, S, W)
            with gates (B, S), written after the heads' write, every step, into the S
            least used slots (counting this step's write; a hard choice, see
            ``addressing.write_rows_to_free_slots``). They join no temporal link: a
            spilled row is found by content.
        spill: return what this step overwrote (``tiered.hierarchy.spill_of``, with the usage
            after the free gates as how occupied each slot was), one row for the heads'
            write and one for the incoming spills' when there were any.
        options: the DNC's fixes (``DenseOptions``); the interface must follow its layout.
            With ``deallocate`` the content the free gates release, on the RAM's ticks,
            counts as erased too (and, like all freed content, is not spilled).

    Returns:
        words (B, R * W), the next state, the erased content (B,), the write mass
        ``sum_h sum_n w^w_h[n]`` plus the spills' gates (B,), the slots in use (B,): the
        usage after this step's writes, ``sum_n (u_t + w - u_t w)`` with
        w = 1 - prod_h(1 - w^w_h), which the next step's usage starts from (detached), and
        the spill (or None).
    """
    p = parse_ram_interface(interface, width, read_heads, write_heads, options)

    # Write: usage from the last write and this step's free gates, then allocation.
    retention = addressing.retention(state.read_weights, p.free_gates)  # (B, N)
    usage = addressing.update_usage(
        state.usage, state.write_weights, state.read_weights, p.free_gates, psi=retention
    )
    allocation = addressing.write_allocation_weights(usage, p.allocation_gates * p.write_gates)
    write_content = _content(state.memory, p.write_keys, p.write_strengths, p.write_masks)
    write_weights = addressing.write_weights(
        allocation, write_content, p.allocation_gates, p.write_gates
    )  # (B, H, N)
    # Off ticks the write weights are zero, so memory, links and precedence are carried
    # exactly (x * 1 + 0); usage still follows the free gates every step.
    write_weights = write_weights * tick.to(write_weights.dtype)[:, None, None]
    memory = state.memory
    freed = None
    if options.deallocate:  # freed slots lose their content before the write (on ticks)
        on_tick = tick.to(memory.dtype).unsqueeze(-1)  # (B, 1)
        kept = memory * (1.0 - on_tick * (1.0 - retention)).unsqueeze(-1)
        freed = (memory - kept).abs().sum(dim=(-2, -1))
        memory = kept
    memory, removed = addressing.overwrite(memory, write_weights, p.erase, p.write_vectors)
    erased = removed.abs().sum(dim=(-2, -1))  # (B,)
    if freed is not None:
        erased = erased + freed
    spills = [spill_of(removed, write_weights.sum(dim=1), usage)] if spill else []
    if options.links:
        # The link update and both directional reads in one pass over each link matrix.
        link, forward, backward = link_step(
            state.link, state.precedence, write_weights, state.read_weights
        )
        precedence = linkage.update_precedence(state.precedence, write_weights)
    else:
        link, precedence = state.link, state.precedence  # (B, H, 0, 0), (B, H, 0)
    weights = write_weights.detach()
    in_use = addressing.mark_written(usage.detach(), weights)  # (B, N)
    mass = weights.sum(dim=(1, 2))
    if incoming:
        rows = torch.cat([s.content for s in incoming], dim=1)  # (B, S, W)
        gates = torch.cat([s.gate for s in incoming], dim=1)  # (B, S)
        if rows.shape[1] > memory.shape[1]:
            raise ValueError(
                f"RAM: {rows.shape[1]} spilled rows in one step need at most as many "
                f"slots, the RAM has {memory.shape[1]}"
            )
        occupied = addressing.mark_written(usage, write_weights)  # this step's write counts
        memory, removed, spill_weights = addressing.write_rows_to_free_slots(
            memory, occupied, rows, gates
        )  # spill_weights: (B, S, N)
        erased = erased + removed.abs().sum(dim=(-2, -1))
        if spill:
            spills.append(spill_of(removed, spill_weights.sum(dim=1), occupied))
        usage = addressing.mark_written(usage, spill_weights)  # the next allocation avoids them
        in_use = addressing.mark_written(in_use, spill_weights.detach())
        mass = mass + spill_weights.detach().sum(dim=(1, 2))
    # Read: content on the new memory, forward/backward along the links.
    read_content = _content(memory, p.read_keys, p.read_strengths, p.read_masks)
    if options.links:
        if p.sharpness is not None:
            forward = sharpen(forward, p.sharpness[..., 0])
            backward = sharpen(backward, p.sharpness[..., 1])
        read_weights = mix_read_weights(p.read_modes, read_content, forward, backward)
    else:
        read_weights = read_content
    words = addressing.read_words(memory, read_weights)  # (B, R, W)
    next_state = RAMState(
        memory=memory,
        read_weights=read_weights,
        write_weights=write_weights,
        precedence=precedence,
        link=link,
        usage=usage,
        clock=state.clock + 1,
    )
    words = words.reshape(interface.shape[0], -1)
    return words, next_state, erased, mass, in_use.sum(dim=-1), join_spills(spills)
