"""PonderNet (Banino et al. 2021, "PonderNet: Learning to Ponder"): each input is pondered
for internal steps as in ACT, but halting is a probability at each step, and the loss is the
expectation of the task loss over the halting step, plus a KL divergence to a geometric prior.

For the input x_t, internal steps n = 1, 2, ... run the controller's step on [x_t, [n = 1]]
from the state the previous internal step left (as ``ACTController``):

    y^n, s^n      = LSTMController.step([x_t, flag], s^{n-1})
    lambda^n      = sigmoid(W s^n_hidden + b)         the chance of halting at n, if not before
    p^n           = lambda^n (1 - lambda^1) ... (1 - lambda^{n-1})      for n < N
    p^N           = (1 - lambda^1) ... (1 - lambda^{N-1})               the rest of the mass
    N(t)          = the first n with (1 - lambda^1) ... (1 - lambda^n) <= epsilon, at most
                    ``max_steps``: the steps unrolled
    loss_t        = sum_n p^n loss(y^n)                 (TieredModule, from ``ponder``)
    KL_t          = sum_n p^n log(p^n / q^n),  q^n = lambda_p (1 - lambda_p)^{n-1} for n < N
                    and q^N = (1 - lambda_p)^{N-1}: the prior truncated as p is

The KL term, times ``beta``, enters the loss as the penalty of the pseudo-tier "ponder" (its
record's ``rewrite`` is KL_t, its ``write_mass`` the expected halting step sum_n n p^n,
logged as ``<stage>/ponder_steps``). The output used for metrics and predictions is y at the
median halting step (the first n with p^1 + ... + p^n >= 1/2): PonderNet samples the halting
step at inference, and the median is its deterministic choice. The register state and reads
carried to the next input are the p-weighted means, as in ACT; the tiers are read and written
at every internal step and their states are those after step N, frozen per sequence once it
halts; clocks count internal steps.

Named dimensions: B batch, T time, I input size, O output size, M ``max_steps``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tiered.controllers.act import PONDER, ACTController, _pondered_stats, blend_states
from tiered.controllers.lstm import ControllerState
from tiered.controllers.sequence import ControllerOutput, run_sequence
from tiered.tier import Tier, TierStats
from tiered.tiers.register import Register
from tiered.validation import check_non_negative_float


class PonderSteps(NamedTuple):
    """Every internal step's output and halting probability over a sequence.

    Attributes:
        outputs: (B, T, M, O) y^n of each input. After a sequence's N they are those of its
            frozen state (while others of the batch ponder on) or zeros (padding past the
            batch's longest); their weights there are zero.
        weights: (B, T, M) p^n of each input (zero after N; each row sums to one).
    """

    outputs: Tensor
    weights: Tensor


def halting_distribution(logits: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """PonderNet's halting distribution from the halting logits of every internal step.

    Args:
        logits: (B, M) a^1..a^M, lambda^n = sigmoid(a^n).
        last: (B,) long, N - 1: the index of each sequence's last step.

    Returns:
        (weights, log_weights): p^n (B, M), zero after N, summing to one; log p^n (B, M),
        zero after N (where p^n is zero). Both are differentiable, computed in log space.
    """
    M = logits.shape[1]
    log_halt = F.logsigmoid(logits)  # log lambda^n
    log_go = F.logsigmoid(-logits)  # log (1 - lambda^n)
    log_survive = torch.cumsum(log_go, dim=1) - log_go  # sum_{j < n} log(1 - lambda^j)
    index = torch.arange(M, device=logits.device)[None, :]
    taken = index <= last[:, None]
    log_p = torch.where(index == last[:, None], log_survive, log_halt + log_survive)
    log_p = torch.where(taken, log_p, torch.zeros_like(log_p))
    return torch.where(taken, log_p.exp(), torch.zeros_like(log_p)), log_p


def geometric_kl(weights: Tensor, log_weights: Tensor, last: Tensor, prior: float) -> Tensor:
    """KL(p || q) per sequence (B,), q the geometric prior of success ``prior`` truncated at
    each sequence's last step N as p is (its tail mass (1 - prior)^{N-1} at N)."""
    M = weights.shape[1]
    n = torch.arange(M, device=weights.device, dtype=weights.dtype)[None, :]  # n - 1
    log_q = n * math.log1p(-prior) + (n < last[:, None]).to(n.dtype) * math.log(prior)
    return (weights * (log_weights - log_q)).sum(dim=1)


class PonderNetController(ACTController):
    """An LSTMController whose every input is pondered for internal steps with a learnt
    halting probability at each (PonderNet); the module's loss is the expected task loss
    over the halting step (see ``tiered.controllers.ponder_net``).

    Args:
        input_size: features per step of the task input, I.
        output_size: features per step of the output, O.
        register: the recurrent core; it reads the input, a first-step flag and the reads.
        tiers: the memory tiers, read and written at every internal step (not a Disk).
        max_steps: the most internal steps per input, M.
        beta: the weight of the KL divergence to the geometric prior in the loss.
        prior: lambda_p, the geometric prior's chance of halting at each step (its mean
            halting step is 1 / lambda_p).
        epsilon: stop unrolling a sequence once its chance of not having halted is at most
            epsilon.
        halting_bias: the halting unit's initial bias.
        input_skip: as in ``LSTMController``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        register: Register,
        tiers: list[Tier] | None = None,
        max_steps: int = 10,
        beta: float = 0.01,
        prior: float = 0.2,
        epsilon: float = 0.01,
        halting_bias: float = 0.0,
        input_skip: bool = False,
    ) -> None:
        super().__init__(input_size, output_size, register, tiers, max_steps, 0.0, epsilon,
                         halting_bias, input_skip)  # fmt: skip
        owner = "PonderNetController"
        self.beta = check_non_negative_float(owner, "beta", beta)
        if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0 < prior < 1:
            raise ValueError(f"{owner}: prior must be in (0, 1) (a chance of halting), got "
                             f"{prior!r}")  # fmt: skip
        self.prior = float(prior)
        if not self.epsilon > 0.0:
            raise ValueError(f"{owner}: epsilon must be above 0 (the chance of not halting "
                             f"never reaches 0), got {epsilon}")  # fmt: skip

    def step_with_extra(self, x: Tensor, state: ControllerState) -> tuple:
        """Ponder one input x (B, I): (median output (B, O), next state, stats per tier and
        "ponder", (every step's output (B, M, O), halting weights (B, M)))."""
        B = x.shape[0]
        active = torch.ones(B, dtype=torch.bool, device=x.device)
        log_left = x.new_zeros(B)  # log of the chance of not having halted yet
        last = torch.zeros(B, dtype=torch.long, device=x.device)  # N - 1 where decided
        outputs, states, logits, records = [], [], [], []
        current = state
        threshold = math.log(self.epsilon)
        for n in range(self.max_steps):
            flag = x.new_full((B, 1), 1.0 if n == 0 else 0.0)
            output, proposed, stats = self.core.step(torch.cat([x, flag], dim=-1), current)
            a = self.halt(proposed.register.hidden[:, -1]).squeeze(-1)  # (B,)
            current = proposed if n == 0 else blend_states(active, proposed, current)
            outputs.append(output)
            states.append(current)
            logits.append(a)
            records.append((active, stats))
            log_left = log_left + F.logsigmoid(-a.detach()) * active
            halting = (log_left <= threshold) | (n == self.max_steps - 1)
            last = torch.where(active & halting, torch.full_like(last, n), last)
            active = active & ~halting
            if not active.any():
                break
        weights, log_weights = halting_distribution(torch.stack(logits, 1), last)
        taken = weights.shape[1]
        steps = torch.stack(outputs, 1)  # (B, taken, O)
        median = (torch.cumsum(weights, 1) >= 0.5).float().argmax(1)  # (B,)
        output = steps.gather(1, median[:, None, None].expand(-1, 1, steps.shape[-1]))[:, 0]
        mean = lambda get: sum(  # noqa: E731 - the p-weighted mean of a state part
            w.reshape((B,) + (1,) * (get(s).dim() - 1)) * get(s)
            for w, s in zip(weights.unbind(1), states, strict=True)
        )
        register = current.register._replace(
            hidden=mean(lambda s: s.register.hidden), cell=mean(lambda s: s.register.cell)
        )
        next_state = current._replace(register=register, reads=mean(lambda s: s.reads))
        stats = _pondered_stats(records)
        kl = geometric_kl(weights, log_weights, last, self.prior)
        expected = (weights * torch.arange(1, taken + 1, dtype=weights.dtype,
                                           device=weights.device)).sum(1)  # fmt: skip
        zero = torch.zeros_like(kl).detach()
        fields = dict.fromkeys(TierStats._fields, zero)
        fields.update(rewrite=kl, write_mass=expected.detach(), wrote=torch.ones_like(zero))
        stats[PONDER] = TierStats(**fields)
        pad = self.max_steps - taken
        steps = F.pad(steps, (0, 0, 0, pad))
        weights = F.pad(weights, (0, pad))
        return output, next_state, stats, (steps, weights)

    def step(self, x: Tensor, state: ControllerState) -> tuple[Tensor, ControllerState, dict]:
        """Ponder one input x (B, I): the output at the median halting step (B, O), the next
        state, and per tier (and "ponder") this input's ``TierStats``."""
        return self.step_with_extra(x, state)[:3]

    def forward(self, x: Tensor, state: ControllerState | None = None) -> ControllerOutput:
        """Run over a sequence: ``x`` (B, T, I) -> ``ControllerOutput`` with ``ponder`` set
        (``PonderSteps``: every internal step's output and weight, for the expected loss);
        ``aux["ponder"]`` holds KL_t (``rewrite``), beta KL_t (``penalty``) and the expected
        halting step (``write_mass``)."""
        penalties = {self.core.register.name: self.core.register.rewrite_penalty,
                     PONDER: self.beta}  # fmt: skip
        penalties.update({tier.name: tier.rewrite_penalty for tier in self.core.tiers})
        extras: list[tuple[Tensor, Tensor]] = []
        out = run_sequence(self, x, state, penalties, extras)
        steps, weights = zip(*extras, strict=True)
        return out._replace(ponder=PonderSteps(torch.stack(steps, 1), torch.stack(weights, 1)))
