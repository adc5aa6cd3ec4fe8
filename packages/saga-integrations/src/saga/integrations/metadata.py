"""The per-request metadata an adapter hands the serving engine, in the engine's own shapes.

SAGA's vLLM scheduler reads ``SamplingParams.extra_args["saga"]`` (a nested dict) or, through
vLLM's OpenAI server whose ``vllm_xargs`` takes only flat values, ``saga_<field>`` keys. The
adapters must not import the engine package, so this module builds the same two shapes from
the same field names; a cross-package test checks the engine's parser accepts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from saga.integrations.errors import IntegrationError

__all__ = ["FLAT_PREFIX", "SAGA_KEY", "RequestMetadata"]

SAGA_KEY = "saga"
"""The ``extra_args`` key holding the nested form."""

FLAT_PREFIX = "saga_"
"""Prefix of each field in the flat form (``saga_session_id``...)."""

DEFAULT_TENANT = "default"

NUMBER_RANGES: tuple[tuple[str, float, float], ...] = (
    ("tool_latency_s", 0.0, math.inf), ("deadline_s", -math.inf, math.inf),
    ("reuse_prob", 0.0, 1.0))
"""The numeric fields and their closed ranges; every value must also be finite."""


def _show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut short for a message; a huge int (whose repr Python refuses past
    4300 digits) is described by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite(name: str, value: object, low: float, high: float) -> float | None:
    """``value`` as a finite float in ``[low, high]`` (None stays None), else a typed error."""
    if value is None:
        return None
    x: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            x = float(value)
        except OverflowError:  # an int past float's range
            x = None
    if x is None or not math.isfinite(x) or not low <= x <= high:
        raise IntegrationError(f"RequestMetadata.{name} must be a finite number in "
                               f"[{low}, {high}] or None, got {_show(value)}")
    return x


@dataclass(frozen=True)
class RequestMetadata:
    """What the scheduler should know about one LLM call of an agent session.

    ``aeg_node`` is the call's node in saga-aeg's naming (``llm@start``, ``llm@tool:<name>``);
    ``pending_tool`` the tool the call is expected to end in (its KV is pinned through it);
    ``tool_latency_s`` the measured duration of the tool that ran just before the call;
    ``final`` marks the task's last call; ``prefetch`` a request that only brings the
    session's context back into device memory while its tool runs (adapters never send one).
    """

    session_id: str
    tenant_id: str = DEFAULT_TENANT
    agent_type: str | None = None
    aeg_node: str | None = None
    pending_tool: str | None = None
    tool_latency_s: float | None = None
    final: bool = False
    deadline_s: float | None = None
    reuse_prob: float | None = None
    prefetch: bool = False

    def __post_init__(self) -> None:
        # The same rules as saga-vllm's parser (a cross-package property test holds the two to
        # it): ids non-empty, optional names None or non-empty, numbers finite and in range.
        for name in ("session_id", "tenant_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise IntegrationError(f"RequestMetadata.{name} must be a non-empty str, "
                                       f"got {_show(value)}")
        for name in ("agent_type", "aeg_node", "pending_tool"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise IntegrationError(f"RequestMetadata.{name} must be a non-empty str or "
                                       f"None, got {_show(value)}")
        for name in ("final", "prefetch"):
            if not isinstance(getattr(self, name), bool):
                raise IntegrationError(
                    f"RequestMetadata.{name} must be a bool, got {_show(getattr(self, name))}")
        if self.prefetch and (self.final or self.pending_tool is None):
            raise IntegrationError(
                "RequestMetadata.prefetch needs pending_tool (the tool the session waits on) "
                "and cannot be final; set pending_tool or drop prefetch")
        for name, low, high in NUMBER_RANGES:
            # Normalised to float, as the engine parses it, so both sides compare equal.
            object.__setattr__(self, name, _finite(name, getattr(self, name), low, high))

    def fields(self) -> dict[str, Any]:
        """The fields worth sending: None, false flags and the default tenant are left out
        (the engine assumes them), so a plain call carries only what it knows."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in ("final", "prefetch") and value is False) or (
                    f.name == "tenant_id" and value == DEFAULT_TENANT):
                continue
            out[f.name] = value
        return out

    def extra_args(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``SamplingParams.extra_args`` carrying the nested form, merged over ``base``."""
        out = dict(base or {})
        out[SAGA_KEY] = self.fields()
        return out

    def vllm_xargs(self) -> dict[str, Any]:
        """The flat form for the OpenAI server's ``vllm_xargs`` (``saga_<field>`` keys)."""
        return {FLAT_PREFIX + k: v for k, v in self.fields().items()}

    def openai_extra_body(self) -> dict[str, Any]:
        """``extra_body`` of an OpenAI-client request to vLLM's server: ``{"vllm_xargs": ...}``."""
        return {"vllm_xargs": self.vllm_xargs()}
