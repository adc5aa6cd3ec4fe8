"""Small checked readers for `from_dict`: a malformed document fails with an `AEGError` that
names the field, instead of a bare `KeyError`/`TypeError` deep inside a constructor."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from saga.aeg.errors import AEGError


def as_mapping(data: object, what: str) -> Mapping[str, Any]:
    """Return `data` as a mapping or fail naming `what`."""
    if not isinstance(data, Mapping):
        raise AEGError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def get(data: Mapping[str, Any], key: str, what: str) -> Any:
    """Return a required field or fail naming it."""
    if key not in data:
        raise AEGError(f"{what}: missing field '{key}'")
    return data[key]


def get_str(data: Mapping[str, Any], key: str, what: str) -> str:
    """Return a required string field."""
    value = get(data, key, what)
    if not isinstance(value, str):
        raise AEGError(f"{what}: field '{key}' must be a string, got {value!r}")
    return value


def get_float(data: Mapping[str, Any], key: str, what: str) -> float:
    """Return a required number field as float (bools are rejected: they are not numbers)."""
    value = get(data, key, what)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AEGError(f"{what}: field '{key}' must be a number, got {value!r}")
    return float(value)


def get_int(data: Mapping[str, Any], key: str, what: str) -> int:
    """Return a required integer field."""
    value = get(data, key, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AEGError(f"{what}: field '{key}' must be an integer, got {value!r}")
    return value


def get_list(data: Mapping[str, Any], key: str, what: str) -> list[Any]:
    """Return a required list field."""
    value = get(data, key, what)
    if not isinstance(value, list):
        raise AEGError(f"{what}: field '{key}' must be a list, got {type(value).__name__}")
    return value


def check_finite(value: float, what: str) -> float:
    """Reject NaN and infinities with a message naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AEGError(f"{what} must be a finite number, got {value!r}")
    return float(value)
