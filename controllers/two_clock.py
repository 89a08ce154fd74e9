"""A controller with two recurrent cores at two clocks, the slow one decoupled from the fast
one by synthetic gradients (Jaderberg et al. 2017, section 3.3, the two-timescale setup).

Each step t:

    fast input   = [x_t, v_{t-1}]                       (B, I + Q)
    y_t, fast    = LSTMController(fast input, fast)      the register and the tiers
    h_t          = the fast register's top hidden state  (B, S)
    q_t, slow    = slow Register(h_t, slow)              ticks every ``slow.period`` steps
    v_t          = Boundary(q_t, M(q_t))                 what the fast core reads next

The slow core reads the fast one's state at its ticks and serves its last hidden state q in
between. With ``decoupled`` (the default), neither core's backward pass waits for the
other's: the slow core reads h_t detached, and the boundary passes the fast core's gradient
for v_t on only to train M (its regression target), while the slow core receives M's
prediction M(q_t) in its place. Without ``decoupled`` the two cores are one network trained
by backpropagation through both.

Named dimensions: B batch, T time, I input size, O output size, S fast hidden size, Q slow
hidden size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from tiered.controllers.base import Controller
from tiered.controllers.lstm import ControllerState, LSTMController
from tiered.controllers.sequence import ControllerOutput, run_sequence
from tiered.synthetic import SyntheticGradient
from tiered.tier import Tier
from tiered.tiers.register import Register, RegisterState
from tiered.validation import check_bool, check_non_negative_int, check_positive_int


class TwoClockState(NamedTuple):
    """Per-sequence state of a ``TwoClockController``.

    Attributes:
        fast: the fast controller's ``ControllerState`` (its register and tiers).
        slow: the slow register's state.
        served: (B, Q) what the fast core reads at the next step (the slow core's output).
    """

    fast: ControllerState
    slow: RegisterState
    served: Tensor


class LossSum:
    """Losses added up until popped, in constant memory (a training loop that never pops,
    outside ``TieredModule``, keeps one running sum, not a list that grows)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def append(self, value: Tensor) -> None:
        self.total = value if self.total is None else self.total + value

    def pop(self) -> Tensor | None:
        """The sum since the last pop (None if nothing was added), and start again."""
        total, self.total = self.total, None
        return total


class _Boundary(torch.autograd.Function):
    """Identity forward; backward sends the prediction to the slow side and, to M, the
    gradient of 1/2 ||prediction - true gradient||^2 (so M learns by the same backward)."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, prediction: Tensor, losses: LossSum) -> Tensor:
        ctx.save_for_backward(prediction)
        ctx.losses = losses
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (prediction,) = ctx.saved_tensors
        error = prediction - grad
        ctx.losses.append(0.5 * error.detach().pow(2).sum())
        return prediction.detach(), error, None


class TwoClockController(Controller):
    """A fast core (register and tiers) and a slow core that ticks every ``slow.period``
    steps, reading the fast core's state; decoupled by synthetic gradients.

    Args:
        input_size: features per step of the task input, I.
        output_size: features per step of the output, O.
        register: the fast core; it reads the input, the tiers' reads and the slow core's
            output.
        slow: the slow core, a Register with ``period`` > 1 (its clock); it reads the fast
            core's top hidden state at its ticks. Its name must differ from the other tiers'.
        tiers: the memory tiers, driven by the fast core as in ``LSTMController`` (a tier
            with its own ``period`` ticks on its own clock).
        decoupled: train the slow core by synthetic gradients (the fast core's backward pass
            stops at the slow core's output); False backpropagates through both cores.
        synthetic_hidden: the hidden width of the gradient model M; 0 for a linear model.
        input_skip: as in ``LSTMController``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        register: Register,
        slow: Register,
        tiers: list[Tier] | None = None,
        decoupled: bool = True,
        synthetic_hidden: int = 0,
        input_skip: bool = False,
    ) -> None:
        super().__init__()
        owner = "TwoClockController"
        self.input_size = check_positive_int(owner, "input_size", input_size)
        self.output_size = check_positive_int(owner, "output_size", output_size)
        if not isinstance(slow, Register):
            raise TypeError(
                f"{owner}: slow must be a tiered.tiers.Register, got {type(slow).__name__}"
            )
        if slow.period < 2:
            raise ValueError(
                f"{owner}: slow.period must be at least 2 (the slow clock), got {slow.period}; "
                "give the slow Register period: 2 or more"
            )
        if (
            slow.name == "register"
            and isinstance(register, Register)
            and register.name == "register"
        ):
            slow.name = "slow"  # the default name of the second core
        self.fast = LSTMController(input_size + slow.hidden_size, output_size, register,
                                   list(tiers or []), input_skip)  # fmt: skip
        if slow.name in self.fast.tier_names:
            raise ValueError(
                f"{owner}: the slow core's name {slow.name!r} is taken by another tier "
                f"({self.fast.tier_names}); give it its own `name`"
            )
        slow.build(register.hidden_size)
        self.slow = slow
        self.decoupled = check_bool(owner, "decoupled", decoupled)
        hidden = check_non_negative_int(owner, "synthetic_hidden", synthetic_hidden)
        self.synthetic = SyntheticGradient(slow.hidden_size, hidden) if self.decoupled else None
        self.synthetic_losses = LossSum()  # M's losses, added by each backward pass

    @property
    def tier_names(self) -> list[str]:
        return [*self.fast.tier_names, self.slow.name]

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TwoClockState:  # fmt: skip
        fast = self.fast.initial_state(batch_size, device, dtype)
        slow = self.slow.initial_state(batch_size, device, dtype)
        served = torch.zeros(batch_size, self.slow.hidden_size, device=device, dtype=dtype)
        return TwoClockState(fast, slow, served)

    def flush(self, state: TwoClockState) -> TwoClockState:
        """End a training window (``LSTMController.flush`` on the fast part)."""
        return state._replace(fast=self.fast.flush(state.fast))

    def step(self, x: Tensor, state: TwoClockState) -> tuple[Tensor, TwoClockState, dict]:
        """One time step: the fast core, then the slow core on its ticks."""
        output, fast, stats = self.fast.step(torch.cat([x, state.served], dim=-1), state.fast)
        h = fast.register.hidden[:, -1]  # (B, S)
        if self.decoupled:
            h = h.detach()
        q, slow, slow_stats = self.slow(h, state.slow)
        if self.synthetic is not None and torch.is_grad_enabled():
            served = _Boundary.apply(q, self.synthetic(q.detach()), self.synthetic_losses)
        else:
            served = q
        stats[self.slow.name] = slow_stats
        return output, TwoClockState(fast, slow, served), stats

    def forward(self, x: Tensor, state: TwoClockState | None = None) -> ControllerOutput:
        """Run over a sequence: ``x`` (B, T, I) -> ``ControllerOutput`` (its ``state`` a
        ``TwoClockState``; ``aux`` holds the slow core's record under its name)."""
        penalties = {self.fast.register.name: self.fast.register.rewrite_penalty,
                     self.slow.name: self.slow.rewrite_penalty}  # fmt: skip
        penalties.update({tier.name: tier.rewrite_penalty for tier in self.fast.tiers})
        return run_sequence(self, x, state, penalties)

    def pop_synthetic_loss(self) -> Tensor | None:
        """M's summed regression loss over the backward passes since the last call, or None."""
        return self.synthetic_losses.pop()
