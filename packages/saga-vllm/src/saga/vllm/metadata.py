"""Per-request SAGA metadata carried in ``SamplingParams.extra_args["saga"]``.

vLLM forwards ``extra_args`` untouched from the API (``vllm_xargs`` on the OpenAI server) to the
engine core's ``Request.sampling_params``, so it is the one place a caller can hand the scheduler
workflow facts (session, tenant, pending tool) without patching vLLM. A request without a
``"saga"`` key is a plain request; a malformed one raises :class:`SagaMetadataError` naming the
field, so callers see what to fix instead of a silently mis-scheduled request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from saga.policy.errors import SagaError

SAGA_KEY = "saga"
"""The key of ``SamplingParams.extra_args`` that holds the SAGA metadata dict."""


class SagaMetadataError(SagaError, ValueError):
    """``extra_args["saga"]`` is malformed; the message names the field and the expected type."""


@dataclass(frozen=True)
class SagaRequestMeta:
    """What the scheduler knows about one LLM call of an agent session.

    ``pending_tool`` set means the call is expected to end in that tool call, so the session's
    KV is pinned through it; ``tool_latency_s`` is the measured duration of the tool that ran
    before this call (it trains the per-tool latency model); ``final`` marks the task's last call
    (its KV will not be reused); ``deadline_s`` feeds AFS; ``reuse_prob`` overrides the reuse
    probability the scheduler would otherwise infer. ``prefetch`` marks a request that only
    brings the session's context back into device memory while its tool still runs (one output
    token, loaded from the DRAM tier or recomputed); it is not a step of the task, so it trains
    no workflow model and its blocks are pinned again for ``pending_tool``.
    """

    session_id: str
    tenant_id: str = "default"
    agent_type: str | None = None
    aeg_node: str | None = None
    pending_tool: str | None = None
    tool_latency_s: float | None = None
    final: bool = False
    deadline_s: float | None = None
    reuse_prob: float | None = None
    prefetch: bool = False

    def __post_init__(self) -> None:
        # The same rules as saga-integrations' RequestMetadata (a cross-package property test
        # holds the two to it): ids non-empty, optional names None or non-empty, numbers finite.
        _check_str("session_id", self.session_id, optional=False)
        _check_str("tenant_id", self.tenant_id, optional=False)
        for name in ("agent_type", "aeg_node", "pending_tool"):
            _check_str(name, getattr(self, name), optional=True)
        for name in ("final", "prefetch"):
            flag = getattr(self, name)
            if not isinstance(flag, bool):
                raise SagaMetadataError(
                    f"saga.{name} must be a bool (true/false), got {type(flag).__name__} "
                    f"{_show(flag)}")
        if self.prefetch and (self.final or self.pending_tool is None):
            raise SagaMetadataError(
                "saga.prefetch needs saga.pending_tool (the tool the session waits on) and "
                "cannot be final; set pending_tool or drop prefetch")
        for name, low, high in NUMBER_RANGES:
            # Normalised to float so that an int and its float parse (and compare) the same.
            object.__setattr__(self, name, _check_float(name, getattr(self, name), low, high))


NUMBER_RANGES: tuple[tuple[str, float, float], ...] = (
    ("tool_latency_s", 0.0, math.inf), ("deadline_s", -math.inf, math.inf),
    ("reuse_prob", 0.0, 1.0))
"""The numeric fields and their closed ranges; every value must also be finite."""


def _show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters for an error message; a huge int (whose repr
    Python refuses past 4300 digits) is described by its size instead."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_str(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        kind = "a non-empty str, or omitted" if optional else "a non-empty str"
        raise SagaMetadataError(
            f"saga.{name} must be {kind}, got {type(value).__name__} {_show(value)}")


def _check_float(name: str, value: object, low: float, high: float) -> float | None:
    """``value`` as a finite float in ``[low, high]``, or None; else a typed error."""
    if value is None:
        return None
    # bool is an int subclass; True as a latency is a caller bug, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SagaMetadataError(
            f"saga.{name} must be a number or omitted, got {type(value).__name__} "
            f"{_show(value)}")
    try:
        x = float(value)
    except OverflowError:  # an int past float's range
        raise SagaMetadataError(
            f"saga.{name} must be in [{low}, {high}] (a finite number), got "
            f"{_show(value)}") from None
    if not math.isfinite(x) or not low <= x <= high:
        raise SagaMetadataError(
            f"saga.{name} must be in [{low}, {high}] (a finite number), got {x!r}")
    return x


_FIELDS = frozenset(f.name for f in fields(SagaRequestMeta))

FLAT_PREFIX = "saga_"
"""Flat form for vLLM's OpenAI server, whose ``vllm_xargs`` takes only flat values: each field
as a top-level ``extra_args`` key ``saga_<field>`` (e.g. ``saga_session_id``)."""

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


def _flat_fields(extra_args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``saga_<field>`` keys of ``extra_args`` as a field dict (None when there are none)."""
    flat = {k[len(FLAT_PREFIX):]: v for k, v in extra_args.items()
            if isinstance(k, str) and k.startswith(FLAT_PREFIX)}
    if not flat:
        return None
    for name in ("final", "prefetch"):
        flag = flat.get(name)
        if isinstance(flag, int | str) and not isinstance(flag, bool):
            word = flag.strip().lower() if isinstance(flag, str) else {1: "1", 0: "0"}.get(
                flag, "")
            if word not in _BOOL_WORDS:
                raise SagaMetadataError(
                    f"saga_{name} must be true/false (or 1/0), got {_show(flag)}")
            flat[name] = _BOOL_WORDS[word]
    return flat


def parse_saga_meta(extra_args: Mapping[str, Any] | None) -> SagaRequestMeta | None:
    """Read ``extra_args["saga"]``: None when absent (a plain request), else the typed metadata.

    Raises :class:`SagaMetadataError` when ``extra_args["saga"]`` is not a dict, has unknown
    keys (likely typos), lacks ``session_id`` or has a field of the wrong type.
    """
    if extra_args is None:
        return None
    if not isinstance(extra_args, Mapping):
        raise SagaMetadataError(
            f"SamplingParams.extra_args must be a dict, got {type(extra_args).__name__}")
    raw = extra_args.get(SAGA_KEY)
    flat = _flat_fields(extra_args)
    if raw is not None and flat is not None:
        raise SagaMetadataError(
            "give SAGA metadata either as extra_args['saga'] or as saga_* keys, not both")
    if raw is None and flat is not None:
        try:
            return _typed(flat, FLAT_PREFIX)
        except SagaMetadataError as exc:
            # Name the keys as the caller wrote them: vllm_xargs's saga_<field>.
            raise SagaMetadataError(re.sub(r"\bsaga\.(\w+)", r"saga_\1", str(exc))) from None
    if raw is None:
        return None
    return _typed(raw, "saga.")


def _typed(raw: Any, label: str) -> SagaRequestMeta:
    """Validate a field dict into :class:`SagaRequestMeta`; ``label`` prefixes field names in
    errors (``saga.`` for the nested form, ``saga_`` for vllm_xargs keys)."""
    if not isinstance(raw, Mapping):
        raise SagaMetadataError(
            f"extra_args['saga'] must be a dict of SAGA fields, got {type(raw).__name__}")
    unknown = sorted(label + (k[:40] if isinstance(k, str) else _show(k, 40))
                     for k in raw if k not in _FIELDS)
    if unknown:
        raise SagaMetadataError(f"unknown SAGA field(s) {unknown}; known fields: "
                                f"{sorted(label + f for f in _FIELDS)}")
    if "session_id" not in raw:
        raise SagaMetadataError(f"{label}session_id is required (a non-empty str)")
    # The constructor checks every field (types, ranges, finiteness) and names it.
    return SagaRequestMeta(**dict(raw))


def saga_vllm_xargs(meta: SagaRequestMeta) -> dict[str, Any]:
    """``meta`` in the flat form for the OpenAI server's ``vllm_xargs`` (``saga_<field>`` keys)."""
    return {FLAT_PREFIX + k: v for k, v in saga_extra_args(meta)[SAGA_KEY].items()}


def saga_extra_args(meta: SagaRequestMeta, base: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """``extra_args`` carrying ``meta`` (merged over ``base``); fields left at None are omitted."""
    payload: dict[str, Any] = {}
    for f in fields(SagaRequestMeta):
        value = getattr(meta, f.name)
        if value is None or (f.name in ("final", "prefetch") and value is False) or (
                f.name == "tenant_id" and value == "default"):
            continue
        payload[f.name] = value
    out = dict(base or {})
    out[SAGA_KEY] = payload
    return out


__all__ = [
    "FLAT_PREFIX",
    "SAGA_KEY",
    "SagaMetadataError",
    "SagaRequestMeta",
    "parse_saga_meta",
    "saga_extra_args",
    "saga_vllm_xargs",
]
