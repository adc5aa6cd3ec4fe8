"""Typed error of the AEG package.

Every invalid graph, distribution, hint or observation raises `AEGError`, a `ValueError`
subclass, so callers can catch one type and the message says which node/field was wrong and
how to fix it. `saga.policy` builds on top of this package, so this error does not derive from
`saga.policy.errors.SagaError` (that would be a reverse dependency).
"""

from __future__ import annotations

__all__ = ["AEGError"]


class AEGError(ValueError):
    """An Agent Execution Graph, latency model, hint or observation is invalid."""
