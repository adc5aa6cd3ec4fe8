"""Typed errors of the adapters: each says what was wrong and what to do about it."""

from __future__ import annotations

from saga.aeg.errors import SagaError

__all__ = ["FrameworkNotInstalledError", "IntegrationError"]


class IntegrationError(SagaError, ValueError):
    """An adapter was given something it cannot use (the message names the field and the fix)."""


class FrameworkNotInstalledError(IntegrationError, ImportError):
    """`attach()` needs a framework that is not installed (or not a supported version); the
    message names the extra that installs it: ``pip install 'saga-integrations[langchain]'``."""
