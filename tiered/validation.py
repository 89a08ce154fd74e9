"""Argument checks with errors that name the argument, its value and what would be valid."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


def _check_int(owner: str, field: str, value: object, minimum: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{owner}: {field} must be a {kind} integer, got {value!r} "
            f"of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"{owner}: {field} must be a {kind} integer (>= {minimum}), got {value}")
    return value


def check_positive_int(owner: str, field: str, value: object) -> int:
    """Return ``value`` if it is an integer >= 1, else raise naming ``owner.field``."""
    return _check_int(owner, field, value, 1, "positive")


def check_non_negative_int(owner: str, field: str, value: object) -> int:
    """Return ``value`` if it is an integer >= 0, else raise naming ``owner.field``."""
    return _check_int(owner, field, value, 0, "non-negative")


def check_non_negative_float(owner: str, field: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: {field} must be a non-negative number, got {value!r} "
            f"of type {type(value).__name__}"
        )
    value = float(value)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{owner}: {field} must be a finite number >= 0, got {value}")
    return value


def check_positive_float(owner: str, field: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise."""
    value = check_non_negative_float(owner, field, value)
    if value == 0.0:
        raise ValueError(f"{owner}: {field} must be a finite number > 0, got {value}")
    return value


def check_unit_interval(owner: str, field: str, value: object) -> float:
    """Return ``value`` as a float if it lies in [0, 1], else raise."""
    value = check_non_negative_float(owner, field, value)
    if value > 1.0:
        raise ValueError(f"{owner}: {field} must lie in [0, 1], got {value}")
    return value


def check_bool(owner: str, field: str, value: object) -> bool:
    """Return ``value`` if it is a bool (not merely truthy), else raise."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {field} must be true or false, got {value!r}")
    return value


def check_store_url(owner: str, field: str, value: object) -> str:
    """Return a store's folder path or fsspec URL as a string, else raise."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise TypeError(
            f"{owner}: {field} must be a folder path or URL (a non-empty string), got {value!r}"
        )
    return str(value)


def check_choice(owner: str, field: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    options = tuple(choices)
    if value not in options:
        valid = ", ".join(repr(c) for c in options)
        raise ValueError(f"{owner}: {field} must be one of {valid}, got {value!r}")
    return value  # type: ignore[return-value]


def check_name(owner: str, value: object) -> str:
    """Return ``value`` if it is a usable tier name (letters, digits, ``_`` and ``-``)."""
    if not isinstance(value, str):
        raise TypeError(f"{owner}: name must be a string, got {value!r}")
    if not _NAME_PATTERN.match(value):
        raise ValueError(
            f"{owner}: name must be a non-empty string of letters, digits, '_' or '-' "
            f"(it becomes part of logged metric keys), got {value!r}"
        )
    return value
