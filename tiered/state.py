"""Helpers over nested per-sequence states (NamedTuples, tuples, lists, dicts of tensors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

S = TypeVar("S")


class Opaque:
    """Base of non-tensor parts of a state (caches such as a kNN index, rollback tapes).

    ``map_state`` passes them through unchanged; ``detach_state`` calls ``detached()``.
    """

    def detached(self) -> Opaque:
        """This object for a state cut from the autograd graph (default: itself)."""
        return self


def map_state(
    fn: Callable[[Tensor], Tensor],
    state: S,
    opaque: Callable[[Opaque], Opaque] = lambda o: o,
) -> S:
    """Apply ``fn`` to every tensor in a nested state, keeping its types (NamedTuples too)."""
    if isinstance(state, Tensor):
        return fn(state)  # type: ignore[return-value]
    if isinstance(state, Opaque):
        return opaque(state)  # type: ignore[return-value]
    if isinstance(state, tuple) and hasattr(type(state), "_fields"):  # a NamedTuple
        return type(state)(*(map_state(fn, item, opaque) for item in state))  # type: ignore[return-value]
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, item, opaque) for item in state)  # type: ignore[return-value]
    if isinstance(state, dict):
        return {key: map_state(fn, value, opaque) for key, value in state.items()}  # type: ignore[return-value]
    if state is None:
        return state
    raise TypeError(f"map_state: cannot map over a {type(state).__name__} in a state")


def detach_state(state: S) -> S:
    """The same state cut from the autograd graph (truncated backpropagation through time)."""
    return map_state(Tensor.detach, state, lambda o: o.detached())
