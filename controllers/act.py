"""Adaptive Computation Time (Graves 2016, "Adaptive Computation Time for Recurrent Neural
Networks"): each input is pondered for a learnt number of internal steps.

For the input x_t, internal steps n = 1, 2, ... run the controller's step on [x_t, [n = 1]]
(a flag marks the first), from the state the previous internal step left:

    y^n, s^n      = LSTMController.step([x_t, flag], s^{n-1})   the register and the tiers
    h^n           = sigmoid(W_h s^n_hidden + b_h)                the halting unit
    N(t)          = min{n : h^1 + ... + h^n >= 1 - epsilon}, at most ``max_steps``
    R(t)          = 1 - (h^1 + ... + h^{N-1})                    the remainder
    p^n           = h^n for n < N, R(t) for n = N
    y_t           = sum_n p^n y^n;  register state and reads = sum_n p^n (those of s^n)
    rho_t         = N(t) + R(t)                                  the ponder cost

The tiers are read and written at every internal step; their states (memories, usage,
clocks) are those after step N(t), frozen for a sequence once it halts while others of the
batch go on. Every clock (the register's and the tiers') counts internal steps. The ponder
cost enters the loss as the penalty of a pseudo-tier named "ponder" (``time_penalty`` times
rho_t, averaged over real steps like every penalty); its record's ``rewrite`` is rho_t and its
``write_mass`` N(t), the internal steps taken (logged as ``<stage>/ponder_steps`` too).

Named dimensions: B batch, T time, I input size, O output size, S register hidden size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tiered.controllers.base import Controller
from tiered.controllers.lstm import ControllerState, LSTMController
from tiered.controllers.sequence import ControllerOutput, run_sequence
from tiered.state import Opaque
from tiered.tier import Tier, TierStats
from tiered.tiers.disk import Disk
from tiered.tiers.register import Register
from tiered.validation import check_non_negative_float, check_positive_int, check_unit_interval

PONDER = "ponder"  # the pseudo-tier whose penalty is the ponder cost
# How a tier's per-step statistics add up over the internal steps of one input.
_SUMMED = ("rewrite", "write_mass", "value_reads", "cache_hits", "recall_checked",
           "recall_hits", "spilled")  # fmt: skip


def blend_states(keep: Tensor, new: Any, old: Any) -> Any:
    """``new`` where ``keep`` (B,) is True, ``old`` elsewhere, over a nested per-sequence
    state (every tensor has the batch first). A state part that is not a tensor (a kNN index)
    cannot be frozen per sequence: an error names it."""
    if isinstance(new, Tensor):
        if not isinstance(old, Tensor):  # a part the state did not have yet (a first fill)
            return new
        mask = keep.reshape(keep.shape + (1,) * (new.dim() - 1))
        return torch.where(mask, new, old)
    if isinstance(new, Opaque):
        raise TypeError(
            f"ACTController: a tier's state holds a {type(new).__name__}, which cannot be "
            "frozen for the sequences that halted; use tiers with tensor states (Cache, dense "
            "RAM, ...)"
        )
    if old is None or (isinstance(old, (tuple, list)) and len(old) != len(new)):
        return new  # not there before (an initial state's empty summaries and fills)
    if isinstance(new, tuple) and hasattr(type(new), "_fields"):
        return type(new)(*(blend_states(keep, a, b) for a, b in zip(new, old, strict=True)))
    if isinstance(new, (tuple, list)):
        return type(new)(blend_states(keep, a, b) for a, b in zip(new, old, strict=True))
    if isinstance(new, dict):
        return {key: blend_states(keep, new[key], old[key]) for key in new}
    return new  # None


def halting_weights(
    halts: Tensor, epsilon: float, first: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """ACT's halting distribution from the halting units of every internal step.

    Args:
        halts: (B, M) h^1..h^M, M = the most internal steps; the last column is never
            needed (step M always halts).
        epsilon: halt once the sum reaches 1 - epsilon.
        first: (B,) the index of each sequence's last step, N - 1, when already decided (the
            controller passes the steps at which it froze each sequence); None: from halts.

    Returns:
        (weights, steps, remainder): p^n (B, M), zero after N; N(t) (B,) as a float; R(t)
        (B,), differentiable through h^1..h^{N-1}.
    """
    M = halts.shape[1]
    before = torch.cumsum(halts, dim=1) - halts  # (B, M): h^1 + ... + h^{n-1}
    if first is None:
        reached = (before + halts) >= 1.0 - epsilon  # (B, M)
        reached[:, -1] = True
        first = reached.float().argmax(dim=1)  # (B,) index of N - 1
    steps = (first + 1).to(halts.dtype)
    remainder = 1.0 - before.gather(1, first[:, None]).squeeze(1)
    index = torch.arange(M, device=halts.device)[None, :]
    weights = torch.where(index < first[:, None], halts, torch.zeros_like(halts))
    weights = weights + remainder[:, None] * (index == first[:, None]).to(halts.dtype)
    return weights, steps, remainder


class ACTController(Controller):
    """An LSTMController whose every input is pondered for a learnt number of internal steps
    (Adaptive Computation Time).

    Args:
        input_size: features per step of the task input, I.
        output_size: features per step of the output, O.
        register: the recurrent core; it reads the input, a first-step flag and the reads.
        tiers: the memory tiers, read and written at every internal step (not a Disk: its
            appends cannot be undone for the sequences that halted).
        max_steps: the most internal steps per input.
        time_penalty: tau, the weight of the ponder cost rho = N + R in the loss.
        epsilon: halt once the halting units sum to at least 1 - epsilon.
        halting_bias: the halting unit's initial bias (the paper starts it positive, so
            that the network first ponders little).
        input_skip: as in ``LSTMController``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        register: Register,
        tiers: list[Tier] | None = None,
        max_steps: int = 10,
        time_penalty: float = 1e-2,
        epsilon: float = 0.01,
        halting_bias: float = 1.0,
        input_skip: bool = False,
    ) -> None:
        super().__init__()
        owner = "ACTController"
        self.input_size = check_positive_int(owner, "input_size", input_size)
        self.output_size = check_positive_int(owner, "output_size", output_size)
        self.max_steps = check_positive_int(owner, "max_steps", max_steps)
        self.time_penalty = check_non_negative_float(owner, "time_penalty", time_penalty)
        self.epsilon = check_unit_interval(owner, "epsilon", epsilon)
        if not self.epsilon < 1.0:
            raise ValueError(f"{owner}: epsilon must be below 1, got {epsilon}")
        for tier in tiers or []:
            if isinstance(tier, Disk):
                raise ValueError(
                    f"{owner}: tiers may not hold a Disk ({tier.name!r}): it appends to its "
                    "store at every step, which cannot be undone for the sequences that have "
                    "halted while others ponder"
                )
        self.core = LSTMController(input_size + 1, output_size, register, tiers, input_skip)
        if PONDER in self.core.tier_names:
            raise ValueError(f"{owner}: the name {PONDER!r} is the ponder cost's; rename the tier")
        self.halt = nn.Linear(register.hidden_size, 1)
        with torch.no_grad():
            self.halt.bias.fill_(float(halting_bias))

    @property
    def tier_names(self) -> list[str]:
        return [*self.core.tier_names, PONDER]

    @property
    def tiers(self) -> nn.ModuleList:
        """The memory tiers (the core's), for ``tiered.diagnostics``."""
        return self.core.tiers

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ControllerState:  # fmt: skip
        return self.core.initial_state(batch_size, device, dtype)

    def flush(self, state: ControllerState) -> ControllerState:
        return self.core.flush(state)

    def step(self, x: Tensor, state: ControllerState) -> tuple[Tensor, ControllerState, dict]:
        """Ponder one input x (B, I): the output (B, O), the next state, and per tier (and
        "ponder") this input's ``TierStats``."""
        B = x.shape[0]
        active = torch.ones(B, dtype=torch.bool, device=x.device)
        total = x.new_zeros(B)  # h^1 + ... + h^{n-1} of the sequences still pondering
        last = torch.zeros(B, dtype=torch.long, device=x.device)  # N - 1 where decided
        outputs, states, halts, records = [], [], [], []
        current = state
        for n in range(self.max_steps):
            flag = x.new_full((B, 1), 1.0 if n == 0 else 0.0)
            output, proposed, stats = self.core.step(torch.cat([x, flag], dim=-1), current)
            h = torch.sigmoid(self.halt(proposed.register.hidden[:, -1])).squeeze(-1)  # (B,)
            # halted sequences stay put (at the first step every sequence is active)
            current = proposed if n == 0 else blend_states(active, proposed, current)
            outputs.append(output)
            states.append(current)
            halts.append(h)
            records.append((active, stats))
            halting = (total + h >= 1.0 - self.epsilon) | (n == self.max_steps - 1)
            total = total + h * active
            last = torch.where(active & halting, torch.full_like(last, n), last)
            active = active & ~halting
            if not active.any():
                break
        weights, steps, remainder = halting_weights(torch.stack(halts, 1), self.epsilon, last)
        output = sum(w[:, None] * y for w, y in zip(weights.unbind(1), outputs, strict=False))
        mean = lambda get: sum(  # noqa: E731 - the halting-weighted mean of a state part
            w.reshape((B,) + (1,) * (get(s).dim() - 1)) * get(s)
            for w, s in zip(weights.unbind(1), states, strict=False)
        )
        register = current.register._replace(
            hidden=mean(lambda s: s.register.hidden), cell=mean(lambda s: s.register.cell)
        )
        next_state = current._replace(register=register, reads=mean(lambda s: s.reads))
        stats = _pondered_stats(records)
        ponder = steps + remainder  # rho_t
        zero = torch.zeros_like(ponder).detach()
        fields = dict.fromkeys(TierStats._fields, zero)
        fields.update(rewrite=ponder, write_mass=steps.detach(), wrote=torch.ones_like(zero))
        stats[PONDER] = TierStats(**fields)
        return output, next_state, stats

    def forward(self, x: Tensor, state: ControllerState | None = None) -> ControllerOutput:
        """Run over a sequence: ``x`` (B, T, I) -> ``ControllerOutput``; ``aux["ponder"]``
        holds rho_t (``rewrite``), tau rho_t (``penalty``) and N(t) (``write_mass``)."""
        penalties = {self.core.register.name: self.core.register.rewrite_penalty,
                     PONDER: self.time_penalty}  # fmt: skip
        penalties.update({tier.name: tier.rewrite_penalty for tier in self.core.tiers})
        return run_sequence(self, x, state, penalties)


def _pondered_stats(records: list[tuple[Tensor, dict[str, TierStats]]]) -> dict[str, TierStats]:
    """Each tier's statistics over the internal steps of one input, counting only the steps
    each sequence took: sums (``_SUMMED``), ``wrote`` if any step wrote, ``read_entropy``
    the mean over the steps taken, ``slots_used`` after the last one."""
    out = {}
    for name in records[0][1]:
        taken = [(active.to(stats[name].rewrite.dtype), stats[name]) for active, stats in records]
        count = sum(a for a, _ in taken)
        fields = {}
        for field in TierStats._fields:
            if field in _SUMMED:
                fields[field] = sum(a * getattr(s, field) for a, s in taken)
            elif field == "wrote":
                fields[field] = torch.stack([a * s.wrote for a, s in taken]).amax(0)
            elif field == "read_entropy":
                fields[field] = sum(a * s.read_entropy for a, s in taken) / count
            else:  # slots_used: the last step each sequence took
                value = taken[0][1].slots_used
                for a, s in taken[1:]:
                    value = torch.where(a > 0, s.slots_used, value)
                fields[field] = value
        out[name] = TierStats(**fields)
    return out
