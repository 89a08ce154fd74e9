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
    read_modes: Tensor
    write_keys: Tensor
    write_strengths: Tensor
    erase: Tensor
    write_vectors: Tensor
    allocation_gates: Tensor
    write_gates: Tensor


def ram_interface_size(width: int, read_heads: int, write_heads: int) -> int:
    """R (W + 3 + 2H) + H (3W + 3) features: see ``parse_ram_interface``."""
    return read_heads * (width + 3 + 2 * write_heads) + write_heads * (3 * width + 3)


def parse_ram_interface(
    interface: Tensor, width: int, read_heads: int, write_heads: int
) -> RAMInterface:
    """Split (B, ram_interface_size) into the named, squashed parts of ``RAMInterface``.

    Layout: R read keys (W each), R read strengths, R free gates, R x (1 + 2H) read modes,
    H write keys (W each), H write strengths, H erase vectors (W each), H write vectors
    (W each), H allocation gates, H write gates.
    """
    B, W, R, H = interface.shape[0], width, read_heads, write_heads
    sizes = [R * W, R, R, R * (1 + 2 * H), H * W, H, H * W, H * W, H, H]
    parts = torch.split(interface, sizes, dim=-1)
    return RAMInterface(
        read_keys=parts[0].reshape(B, R, W),
        read_strengths=addressing.oneplus(parts[1]),
        free_gates=torch.sigmoid(parts[2]),
        read_modes=torch.softmax(parts[3].reshape(B, R, 1 + 2 * H), dim=-1),
        write_keys=parts[4].reshape(B, H, W),
        write_strengths=addressing.oneplus(parts[5]),
        erase=torch.sigmoid(parts[6].reshape(B, H, W)),
        write_vectors=parts[7].reshape(B, H, W),
        allocation_gates=torch.sigmoid(parts[8]),
        write_gates=torch.sigmoid(parts[9]),
    )


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

    Returns:
        words (B, R * W), the next state, the erased content (B,), the write mass
        ``sum_h sum_n w^w_h[n]`` plus the spills' gates (B,), the slots in use (B,): the
        usage after this step's writes, ``sum_n (u_t + w - u_t w)`` with
        w = 1 - prod_h(1 - w^w_h), which the next step's usage starts from (detached), and
        the spill (or None).
    """
    p = parse_ram_interface(interface, width, read_heads, write_heads)

    # Write: usage from the last write and this step's free gates, then allocation.
    usage = addressing.update_usage(
        state.usage, state.write_weights, state.read_weights, p.free_gates
    )
    allocation = addressing.write_allocation_weights(usage, p.allocation_gates * p.write_gates)
    write_content = addressing.content_weights(state.memory, p.write_keys, p.write_strengths)
    write_weights = addressing.write_weights(
        allocation, write_content, p.allocation_gates, p.write_gates
    )  # (B, H, N)
    # Off ticks the write weights are zero, so memory, links and precedence are carried
    # exactly (x * 1 + 0); usage still follows the free gates every step.
    write_weights = write_weights * tick.to(write_weights.dtype)[:, None, None]
    memory, removed = addressing.overwrite(state.memory, write_weights, p.erase, p.write_vectors)
    erased = removed.abs().sum(dim=(-2, -1))  # (B,)
    spills = [spill_of(removed, write_weights.sum(dim=1), usage)] if spill else []
    # The link update and both directional reads in one pass over each link matrix.
    link, forward, backward = link_step(
        state.link, state.precedence, write_weights, state.read_weights
    )
    precedence = linkage.update_precedence(state.precedence, write_weights)
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
    read_content = addressing.content_weights(memory, p.read_keys, p.read_strengths)
    read_weights = mix_read_weights(p.read_modes, read_content, forward, backward)
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
