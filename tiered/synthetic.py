"""Synthetic gradients across truncation windows (Jaderberg et al. 2017, "Decoupled Neural
Interfaces using Synthetic Gradients", section 3.3).

Truncated BPTT cuts the gradient at each window's end. Here a small model M predicts, from
the controller's state vector h_T at a window's end, the gradient dL_future/dh_T that would
have come from the steps beyond it, and the window's backward pass adds it: the window's
loss gains the term <h_T, stop_gradient(M(h_T))>, whose gradient with respect to h_T is the
prediction. M is trained toward the bootstrapped target: the true gradient arriving at the
next window's start state, which already holds that window's own synthetic gradient.

The state vector is the controller's vector state: the register's hidden and cell states
(every layer) and the tiers' reads of the last step, (B, D) with D = 2 L S + R. The tiers'
own states (a RAM's memory, usage and links, a Cache's rows) get no synthetic gradient: at
a window's edge their gradient is cut as in plain truncated BPTT.

Named dimensions: B batch, D state vector size, L register layers, S register hidden size,
R the tiers' read sizes summed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tiered.validation import check_positive_int


def state_vector(state: Any) -> Tensor:
    """The controller state's vector part, (B, D): register hidden and cell, then reads."""
    register = state.register
    B = register.hidden.shape[0]
    return torch.cat([register.hidden.reshape(B, -1), register.cell.reshape(B, -1),
                      state.reads], dim=-1)  # fmt: skip


def with_state_vector(state: Any, vector: Tensor) -> Any:
    """``state`` with its vector part replaced by ``vector`` (B, D), which it is built from
    (so a gradient with respect to ``vector`` is one with respect to the whole vector part)."""
    register = state.register
    shape = register.hidden.shape  # (B, L, S)
    n = shape[1] * shape[2]
    hidden = vector[:, :n].reshape(shape)
    cell = vector[:, n : 2 * n].reshape(shape)
    reads = vector[:, 2 * n :]
    return state._replace(register=register._replace(hidden=hidden, cell=cell), reads=reads)


def vector_size(controller: Any) -> int:
    """D for an ``LSTMController``: 2 L S + R."""
    from tiered.controllers.lstm import LSTMController

    if not isinstance(controller, LSTMController):
        raise TypeError(
            "synthetic gradients across windows need a tiered.controllers.LSTMController "
            f"(its state vector: register and reads), got {type(controller).__name__}"
        )
    register = controller.register
    return 2 * register.num_layers * register.hidden_size + controller.reads_size


class SyntheticGradient(nn.Module):
    """The gradient model M: (B, D) state vector -> (B, D) predicted dL_future/d(state).

    A linear map, or with ``hidden`` > 0 one ReLU layer of that width before it; the output
    layer starts at zero (the paper's initialisation), so at first nothing is injected.

    Args:
        size: D, the state vector size.
        hidden: width of a hidden layer; 0 for a linear model.
    """

    def __init__(self, size: int, hidden: int = 0) -> None:
        super().__init__()
        self.size = check_positive_int("SyntheticGradient", "size", size)
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
            raise ValueError(f"SyntheticGradient: hidden must be an int >= 0, got {hidden!r}")
        layers: list[nn.Module] = []
        width = size
        if hidden:
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            width = hidden
        out = nn.Linear(width, size)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, vector: Tensor) -> Tensor:
        return self.net(vector)


def start_state(state: Any) -> tuple[Any, Tensor]:
    """A window's start state built from a fresh leaf vector (the state must be detached)."""
    leaf = state_vector(state).detach().requires_grad_(True)
    return with_state_vector(state, leaf), leaf


def synthetic_term(
    end_state: Any,
    model: SyntheticGradient,
    unit: float | Tensor = 1.0,
    alive: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(term, end): ``term`` = sum <h_T, stop_gradient(M(h_T))> / ``unit``, a scalar whose
    gradient with respect to the window's end vector h_T is the prediction (B, D) divided by
    ``unit``; ``end`` is h_T detached.

    ``unit`` is the loss's normaliser (the batch's scored elements when the loss is their
    mean): M predicts gradients of the summed loss, so its targets stay near 1 whatever the
    batch and sequence sizes (an optimiser such as Adam moves M's outputs by about its
    learning rate per step, far more than a mean's gradients of about 1e-4). ``alive`` (B,)
    bool keeps the prediction only for the sequences with scored steps after the edge (a
    finished sequence, padded, has no future: its true gradient there is 0)."""
    vector = state_vector(end_state)
    end = vector.detach()
    with torch.no_grad():
        prediction = model(end)
        if alive is not None:
            prediction = prediction * alive[:, None].to(prediction.dtype)
    return (vector * prediction).sum() / unit, end


def predictor_loss(prediction: Tensor, target: Tensor, rows: Tensor | None = None) -> Tensor:
    """Squared error of a prediction (B, D) against its target, summed over D, mean over the
    ``rows`` (B,) bool kept (all by default)."""
    error = (prediction - target.detach()).pow(2).sum(-1)
    return error.mean() if rows is None else error[rows].mean()


def cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """Cosine between two (B, D) gradients, each flattened over the batch (0 if either is
    zero)."""
    a, b = prediction.reshape(-1), target.reshape(-1)
    norm = a.norm() * b.norm()
    return (a @ b) / norm if norm > 0 else a.new_zeros(())


def future_gradients(
    controller: Any, inputs: Tensor, window: int, window_loss: Any
) -> tuple[list[Tensor], list[Tensor]]:
    """The true gradients a perfect M would predict, by full BPTT over the whole sequence.

    The sequence runs window by window without any cut; at each window's end the vector
    part of the state goes on through a new node that only later windows use, so the
    gradient there is exactly that of the later windows' losses (the future).

    Args:
        controller: the controller (an ``LSTMController``).
        inputs: (B, T, I) the whole sequence.
        window: the window length (``tbptt_steps``).
        window_loss: ``(output, start) -> scalar``, the loss of the window starting at step
            ``start`` (the same share of the batch's loss as in training).

    Returns:
        (ends, gradients): per window end but the last, the end vector (B, D), detached, and
        the gradient (B, D) of the later windows' losses with respect to it.
    """
    T = inputs.shape[1]
    state, ends, nodes, total = None, [], [], inputs.new_zeros(())
    for start in range(0, T, window):
        if state is not None:
            vector = state_vector(state)
            node = vector.clone()
            ends.append(vector.detach())
            nodes.append(node)
            state = with_state_vector(state, node)
        out = controller(inputs[:, start : start + window], state)
        total = total + window_loss(out, start)
        state = out.state
    if not nodes:
        return [], []
    grads = torch.autograd.grad(total, nodes, allow_unused=True)
    return ends, [
        torch.zeros_like(n) if g is None else g for n, g in zip(nodes, grads, strict=True)
    ]


def inject(
    loss: Tensor,
    end_state: Any,
    leaf: Tensor | None,
    model: SyntheticGradient,
    applied: float,
    discount: float = 1.0,
    unit: float | Tensor = 1.0,
    alive: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Add ``applied`` times the synthetic gradient at a window's end to its loss.

    Args:
        loss: the window's loss (scalar).
        end_state: the controller state at the window's end.
        leaf: the window's start vector (``start_state``), or None for a sequence's first.
        model: M.
        applied: the factor on the prediction in the backward pass (0 in warm-up).
        discount: the factor on the prediction in the training target of the previous
            window's prediction (the bootstrap), whether or not it is applied.
        unit: the loss's normaliser (``synthetic_term``).
        alive: (B,) the sequences with scored steps after this edge (``synthetic_term``).

    Returns:
        (loss, end, bootstrap): the loss with the synthetic term; the end vector (B, D),
        detached, from which M's prediction is made again when its target is known (M may
        have been stepped in between); and, when ``applied`` differs from ``discount`` and
        there is a leaf, what the target needs besides the leaf's gradient, else None.
    """
    term, end = synthetic_term(end_state, model, unit, alive)
    bootstrap = None
    if leaf is not None and applied != discount:
        (bootstrap,) = torch.autograd.grad(term, leaf, retain_graph=True, allow_unused=True)
        bootstrap = torch.zeros_like(leaf) if bootstrap is None else bootstrap
        bootstrap = (discount - applied) * bootstrap
    return loss + applied * term, end, bootstrap


def target(leaf: Tensor, bootstrap: Tensor | None, unit: float | Tensor = 1.0) -> Tensor:
    """The bootstrapped target for the previous window's prediction: the true gradient at
    this window's start (its ``grad`` after backward), with this window's own prediction
    counted with the discount (``inject``); times ``unit``, M's scale."""
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    return (grad if bootstrap is None else grad + bootstrap) * unit


def check_cosine(
    controller: Any, inputs: Tensor, window: int, window_loss: Any, model: SyntheticGradient
) -> Tensor:
    """Mean cosine, over the window ends of one batch, between M's predictions and the true
    gradients of full BPTT (``future_gradients``); NaN for a sequence of one window or while
    M predicts zero everywhere."""
    ends, gradients = future_gradients(controller, inputs, window, window_loss)
    with torch.no_grad():
        predictions = [model(e) for e in ends]
    if not ends or not any(bool(p.any()) for p in predictions):  # nothing to compare yet
        return inputs.new_full((), float("nan"))
    pairs = zip(predictions, gradients, strict=True)
    return torch.stack([cosine(p, g) for p, g in pairs]).mean()
