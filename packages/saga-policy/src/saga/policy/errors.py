"""Typed errors of saga-policy: each says what was wrong and what to change.

`SagaError`, the root of every SAGA error, is defined in `saga.aeg.errors` (the package at the
bottom of the dependency graph) and re-exported here, so ``saga.policy.errors.SagaError`` and
``saga.aeg.errors.SagaError`` are the same class.
"""

from __future__ import annotations

from saga.aeg.errors import SagaError

__all__ = ["CacheError", "SagaConfigError", "SagaError", "TraceFormatError", "UnknownSessionError"]


class SagaConfigError(SagaError, ValueError):
    """A configuration value (preset name, parameter, spec field) is invalid."""


class UnknownSessionError(SagaError, KeyError):
    """A session id that the component has never seen (or has forgotten)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else "unknown session"


class CacheError(SagaError, RuntimeError):
    """A cache operation that would break an invariant (double free, unknown block, no room)."""


class TraceFormatError(SagaError, ValueError):
    """A trace line that does not follow the trace's schema; names the line and field."""
