"""Register: the controller's own recurrent (LSTM or GRU) state, seen as a memory tier.

Its interface is the controller's input at this step (the task input and the previous
step's reads); its read is the top layer's hidden state. ``rewrite`` is how much the state
changed: the squared norm of the change of the cell state (LSTM) or hidden state (GRU),
summed over layers. Its statistics: write mass 1 on ticks, read entropy 0 (one state read
whole), slots used ``sum |h|`` (the soft count of active units). Cost per step
O(B L (I + S) S) for hidden size S, L layers, input I.

Named dimensions: B batch, L layers, S hidden size, I input size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from tiered.tier import Tier, TierOutput, blend, tier_stats, write_ticks
from tiered.validation import check_choice, check_positive_int

CELLS = ("lstm", "gru")


class RegisterState(NamedTuple):
    """Per-sequence state of the register.

    Attributes:
        hidden: (B, L, S) hidden state h of each layer.
        cell: (B, L, S) cell state c of each layer (LSTM); zeros and unused for a GRU.
        clock: (B,) steps taken, an integer tensor.
    """

    hidden: Tensor
    cell: Tensor
    clock: Tensor


class Register(Tier):
    """The controller's recurrent core as a tier.

    The input size is usually left unset: the controller that owns the register calls
    ``build(input_size)`` with the width of the task input plus the tiers' reads.

    Args:
        hidden_size: hidden units per layer, S.
        num_layers: stacked recurrent layers, L.
        cell: ``"lstm"`` or ``"gru"``.
        input_size: features per step, I; None lets the owning controller set it.
        rewrite_penalty: lambda, the weight of the squared state change in the loss.
        period: the state updates only on every ``period``-th step (a clockwork RNN);
            the last hidden state is served every step. The register reads its input only
            on its ticks, and in a controller the input reaches the tiers and the output
            only through the register, so inputs between ticks are not seen at all.
        name: the tier's name in logs; defaults to ``"register"``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int = 1,
        cell: str = "lstm",
        input_size: int | None = None,
        rewrite_penalty: float = 0.0,
        period: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(rewrite_penalty=rewrite_penalty, period=period, name=name)
        self.hidden_size = check_positive_int("Register", "hidden_size", hidden_size)
        self.num_layers = check_positive_int("Register", "num_layers", num_layers)
        self.cell = check_choice("Register", "cell", cell, CELLS)
        self.input_size: int | None = None
        self.cells = nn.ModuleList()
        if input_size is not None:
            self.build(input_size)

    def build(self, input_size: int) -> None:
        """Create the recurrent cells for ``input_size`` features per step (once)."""
        input_size = check_positive_int("Register", "input_size", input_size)
        if self.input_size is not None:
            if self.input_size != input_size:
                raise ValueError(
                    f"Register '{self.name}': input_size is {self.input_size} but the "
                    f"controller feeds it {input_size} features (task input + tier reads); "
                    f"leave input_size unset to let the controller choose it"
                )
            return
        cell_type = nn.LSTMCell if self.cell == "lstm" else nn.GRUCell
        sizes = [input_size] + [self.hidden_size] * (self.num_layers - 1)
        self.cells.extend(cell_type(size, self.hidden_size) for size in sizes)
        self.input_size = input_size

    @property
    def interface_size(self) -> int:
        if self.input_size is None:
            raise RuntimeError(
                f"Register '{self.name}' has no input_size yet: pass input_size or add it "
                f"to a controller, which calls build()"
            )
        return self.input_size

    @property
    def read_size(self) -> int:
        return self.hidden_size

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RegisterState:
        B = check_positive_int("Register", "batch_size", batch_size)
        shape = (B, self.num_layers, self.hidden_size)
        return RegisterState(
            hidden=torch.zeros(shape, device=device, dtype=dtype),
            cell=torch.zeros(shape, device=device, dtype=dtype),
            clock=torch.zeros(B, device=device, dtype=torch.long),
        )

    def forward(self, interface: Tensor, state: RegisterState) -> TierOutput:
        """One step of the stacked cells.

        Args:
            interface: (B, I), the controller's input at this step.
            state: the previous ``RegisterState``.

        Returns:
            ``TierOutput`` with the top layer's hidden state (B, S), the next state, stats.
        """
        self.check_interface(interface, state.clock)
        tick = write_ticks(state.clock, self.period)  # (B,)
        hiddens, cells = [], []
        layer_input = interface
        for layer, cell in enumerate(self.cells):
            h, c = state.hidden[:, layer], state.cell[:, layer]  # (B, S) each
            if self.cell == "lstm":
                h, c = cell(layer_input, (h, c))
            else:
                h = cell(layer_input, h)
            hiddens.append(h)
            cells.append(c)
            layer_input = h
        hidden = torch.stack(hiddens, dim=1)  # (B, L, S)
        cell_state = torch.stack(cells, dim=1)  # (B, L, S)
        if self.period > 1:
            hidden = blend(tick, hidden, state.hidden)
            cell_state = blend(tick, cell_state, state.cell)
        changed = cell_state - state.cell if self.cell == "lstm" else hidden - state.hidden
        rewrite = changed.pow(2).sum(dim=(1, 2))  # (B,)

        B = interface.shape[0]
        stats = tier_stats(
            rewrite,
            write_mass=tick.to(interface.dtype),  # the one state, rewritten whole on ticks
            read_weights=interface.new_ones(B, 1, 1),  # one head reads it with weight 1
            slots_used=hidden.abs().sum(dim=(1, 2)),  # soft count of active units
        )
        next_state = RegisterState(hidden, cell_state, state.clock + 1)
        return TierOutput(hidden[:, -1], next_state, stats)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"cell={self.cell!r}, input_size={self.input_size}, " + super().extra_repr()
        )
