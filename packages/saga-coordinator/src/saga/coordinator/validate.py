"""Request validation: every malformed field is named with what a valid value looks like.

The server turns :class:`InvalidField` into ``INVALID_ARGUMENT``; nothing a client sends can raise
anything else out of a handler.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.message import DecodeError

from saga.policy.errors import SagaError

MAX_ID_CHARS = 256
MAX_BATCH = 1024
MAX_CLAIMS = 100_000

__all__ = ["MAX_BATCH", "MAX_CLAIMS", "MAX_ID_CHARS", "MAX_MESSAGE_BYTES", "InvalidField",
           "check_id", "check_number", "check_size", "decode"]


class InvalidField(SagaError, ValueError):
    """One request field is malformed; the message names it and the valid range."""


def check_id(field: str, value: str, *, required: bool = True) -> str:
    """A non-empty printable id of at most :data:`MAX_ID_CHARS` characters."""
    if not value:
        if required:
            raise InvalidField(f"{field} is empty; give a non-empty id")
        return value
    if len(value) > MAX_ID_CHARS:
        raise InvalidField(f"{field} has {len(value)} characters; at most {MAX_ID_CHARS}")
    if not value.isprintable():
        raise InvalidField(f"{field} {value[:40]!r} holds non-printable characters")
    return value


def check_number(field: str, value: float, *, lo: float = 0.0, hi: float = math.inf,
                 allow_negative: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``allow_negative`` lifts ``lo``)."""
    if not math.isfinite(value):
        raise InvalidField(f"{field} must be a finite number, got {value}")
    if (not allow_negative and value < lo) or value > hi:
        raise InvalidField(f"{field} must be in [{lo}, {hi}], got {value}")
    return value


def check_size(field: str, n: int, limit: int) -> None:
    """A repeated field of at most ``limit`` items."""
    if n > limit:
        raise InvalidField(f"{field} has {n} items; at most {limit} per message "
                           "(split it into several)")


MAX_MESSAGE_BYTES = 4 * 2**20
"""Largest message the server receives or sends (gRPC's own default, stated explicitly):
a larger one is refused with ``RESOURCE_EXHAUSTED`` before it is parsed."""


def decode(cls: Any, raw: bytes) -> Any:
    """Parse ``raw`` as the protobuf message class ``cls``; bytes that are not one (bad wire
    format, a string field that is not UTF-8, nesting too deep) raise :class:`InvalidField`."""
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise InvalidField(
            f"the request is not a valid {cls.DESCRIPTOR.full_name} message ({exc}); send "
            "the message saga_coordinator.proto names for this method") from None
    return msg
