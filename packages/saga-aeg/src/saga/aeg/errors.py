"""The root of SAGA's typed errors, and the AEG package's own.

`SagaError` lives here, in the package every other SAGA package depends on (saga-policy,
saga-integrations, saga-vllm, saga-coordinator and saga-bench all build on saga-aeg), so one
``except SagaError`` catches every error SAGA raises on purpose, whichever package raised it;
`saga.policy.errors` re-exports the same class. Each package's errors derive from it and, where
the meaning fits, from the matching builtin too (`AEGError` is a `ValueError`), so code written
against the builtin keeps working.
"""

from __future__ import annotations

__all__ = ["AEGError", "SagaError"]


class SagaError(Exception):
    """Base of every error SAGA raises on purpose."""


class AEGError(SagaError, ValueError):
    """An Agent Execution Graph, latency model, hint or observation is invalid."""
