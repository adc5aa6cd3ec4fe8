"""SAGA's per-request metadata: the one schema, its validation and its wire encodings.

An agent framework adapter (saga-integrations) writes it and SAGA's vLLM scheduler (saga-vllm)
reads it; both use this module, so what one side sends the other parses to the equal object.
It lives in saga-aeg because both packages depend on saga-aeg and neither on the other.

Three encodings, all plain data:

- ``to_dict()`` / ``from_dict()``: a JSON-able dict of the fields worth sending (None, false flags
  and the default tenant are left out; parsing restores them);
- ``extra_args()`` / ``from_extra_args()``: vLLM's ``SamplingParams.extra_args`` with that dict
  under ``"saga"`` (the nested form, for in-process engines);
- ``vllm_xargs()`` / ``from_vllm_xargs()``: each field as a top-level ``saga_<field>`` key (the
  flat form: vLLM's OpenAI server takes only flat ``str | int | float | list`` values in
  ``vllm_xargs`` and merges them into ``extra_args``). ``from_extra_args`` reads either form.

Errors are :class:`MetadataError` (a `SagaError` and a `ValueError`: vLLM's ``validate_params``
hook turns a ValueError into an HTTP 400), naming the field the way the caller wrote it:
``saga.<field>`` in Python and the nested form, ``saga_<field>`` in the flat form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from saga.aeg.errors import SagaError

__all__ = [
    "DEFAULT_TENANT",
    "FLAT_PREFIX",
    "NESTED_PREFIX",
    "SAGA_KEY",
    "MetadataError",
    "RequestMetadata",
]

SAGA_KEY = "saga"
"""The ``extra_args`` key holding the nested form."""

NESTED_PREFIX = "saga."
"""How errors name a field given in Python or in the nested form (``saga.pending_tool``)."""

FLAT_PREFIX = "saga_"
"""Prefix of each field in the flat ``vllm_xargs`` form (``saga_session_id``...)."""

DEFAULT_TENANT = "default"
"""The tenant of a request that names none."""

ID_FIELDS = ("session_id", "tenant_id")
"""Partition keys: pins, fairness and workflow state are kept per session and tenant."""

HINT_FIELDS = ("agent_type", "aeg_node", "pending_tool")
"""Advisory names: the scheduler works without them, only less well."""

FLAG_FIELDS = ("final", "prefetch")

NUMBER_RANGES: tuple[tuple[str, float, float], ...] = (
    ("tool_latency_s", 0.0, math.inf), ("deadline_s", -math.inf, math.inf),
    ("reuse_prob", 0.0, 1.0))
"""The numeric fields and their closed ranges; every value must also be finite."""

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False}


class MetadataError(SagaError, ValueError):
    """Request metadata that SAGA cannot use; ``field`` is the field at fault (None when the
    problem is the container: not a dict, unknown keys, both forms at once)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[MetadataError], tuple[str, str | None]]:
        # Survives pickling (vLLM may carry an error between its processes) with its field.
        return type(self), (str(self), self.field)


def _show(value: object, limit: int = 60) -> str:
    """``type repr`` of ``value`` cut short for a message; a huge int (whose repr Python refuses
    past 4300 digits) is described by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(value).__name__} {text}"


def _number(p: str, name: str, value: object, low: float, high: float) -> float | None:
    """``value`` as a finite float in ``[low, high]`` (None stays None), else a typed error."""
    if value is None:
        return None
    # bool is an int subclass; True as a latency is a caller bug, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MetadataError(f"{p}{name} must be a number or omitted, got {_show(value)}", name)
    try:
        x = float(value)
    except OverflowError:  # an int past float's range
        x = math.inf
    if not math.isfinite(x) or not low <= x <= high:
        raise MetadataError(f"{p}{name} must be in [{low}, {high}] (a finite number), got "
                            f"{_show(value)}", name)
    return x


def _normalized(values: Mapping[str, Any], p: str) -> dict[str, Any]:
    """Every field checked, in field order, and normalised (hints: ``""`` -> None; numbers:
    float); ``p`` prefixes field names in errors. The rules are the class docstring's."""
    out = dict(values)
    for name in ID_FIELDS:
        if not isinstance(out[name], str) or not out[name]:
            hint = "; omit it for the default tenant" if name == "tenant_id" else ""
            raise MetadataError(
                f"{p}{name} must be a non-empty str, got {_show(out[name])}{hint}", name)
    for name in HINT_FIELDS:
        value = out[name]
        if value is not None and not isinstance(value, str):
            raise MetadataError(f"{p}{name} must be a str or omitted, got {_show(value)}", name)
        out[name] = value or None
    for name in FLAG_FIELDS:
        if not isinstance(out[name], bool):
            raise MetadataError(
                f"{p}{name} must be a bool (true/false), got {_show(out[name])}", name)
    if out["prefetch"] and out["pending_tool"] is None:
        raise MetadataError(
            f"{p}prefetch needs {p}pending_tool (the tool the session waits on; the prefetched "
            "blocks are pinned through it); set pending_tool or drop prefetch", "prefetch")
    if out["prefetch"] and out["final"]:
        raise MetadataError(
            f"{p}prefetch cannot be {p}final (a final call's context is never reused); drop "
            "one of them", "prefetch")
    for name, low, high in NUMBER_RANGES:
        out[name] = _number(p, name, out[name], low, high)
    return out


@dataclass(frozen=True)
class RequestMetadata:
    """What SAGA's scheduler should know about one LLM call of an agent session.

    ``session_id`` / ``tenant_id`` say whose call it is (state is kept per session, fairness per
    tenant); ``agent_type`` selects the workflow model; ``aeg_node`` is the call's node in
    saga-aeg's naming (``llm@start``, ``llm@tool:<name>``); ``pending_tool`` the tool the call is
    expected to end in (its KV is pinned through it); ``tool_latency_s`` the measured duration
    of the tool that ran just before the call (it trains the per-tool latency model); ``final``
    marks the task's last call (its KV will not be reused); ``deadline_s`` the seconds left to
    the task's deadline (fairness); ``reuse_prob`` overrides the reuse probability the scheduler
    would infer; ``prefetch`` marks a request that only brings the session's context back into
    device memory while its tool runs (one output token; no step of the task, so it trains no
    model). SAGA's engine sends prefetches itself; adapters never do.

    The rules, the same wherever the metadata comes from:

    - ``session_id`` and ``tenant_id`` are non-empty strings. They are partition keys: a blank
      session would merge unrelated callers' pins into one session, a blank tenant would bill
      them to a tenant nobody named, so blank is refused (omit ``tenant_id`` for
      ``"default"``).
    - ``agent_type``, ``aeg_node`` and ``pending_tool`` are hints: a string, or None. An empty
      string means "not given" and becomes None. vLLM's ``vllm_xargs`` cannot carry null, so a
      client that always sends every key sends ``""`` for an unknown hint; failing the user's
      request over a blank hint would help nobody, and None is what the engine handles anyway.
    - ``final`` and ``prefetch`` are bools (the flat form also reads ``"true"``/``"false"``,
      ``"1"``/``"0"`` and 1/0, as form-encoded clients send them).
    - ``prefetch`` needs ``pending_tool`` and excludes ``final``: a prefetch exists to have the
      session's blocks resident when its tool returns, and the engine pins them for that tool;
      without a tool nothing would hold them (the load is wasted work that evicts other
      sessions' KV), and a final call's context is never read again.
    - Numbers are finite ints or floats (stored as float; bool is refused): ``tool_latency_s``
      >= 0, ``reuse_prob`` in [0, 1], ``deadline_s`` any finite value (negative: overdue).
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
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in _normalized(values, NESTED_PREFIX).items():
            object.__setattr__(self, name, value)

    # -- encodings ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fields worth sending, JSON-able: None, false flags and the default tenant are
        left out (the parser restores them), so a plain call carries only what it knows."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value is False or (
                    f.name == "tenant_id" and value == DEFAULT_TENANT):
                continue
            out[f.name] = value
        return out

    def extra_args(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``SamplingParams.extra_args`` carrying the nested form, merged over ``base``."""
        out = dict(base or {})
        out[SAGA_KEY] = self.to_dict()
        return out

    def vllm_xargs(self) -> dict[str, Any]:
        """The flat form for the OpenAI server's ``vllm_xargs`` (``saga_<field>`` keys)."""
        return {FLAT_PREFIX + k: v for k, v in self.to_dict().items()}

    def openai_extra_body(self) -> dict[str, Any]:
        """``extra_body`` of an OpenAI-client request to vLLM's server: ``{"vllm_xargs": ...}``."""
        return {"vllm_xargs": self.vllm_xargs()}

    # -- parsing -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> RequestMetadata:
        """Parse :meth:`to_dict`'s form (any plain dict of fields); errors name ``saga.<field>``.

        Raises :class:`MetadataError` when ``data`` is not a dict, has unknown keys (likely
        typos), lacks ``session_id`` or has a field that breaks a rule.
        """
        return _from_fields(data, NESTED_PREFIX, "SAGA metadata")

    @classmethod
    def from_vllm_xargs(cls, xargs: Mapping[str, Any]) -> RequestMetadata:
        """Parse the flat form; keys without the ``saga_`` prefix are not SAGA's and are
        ignored. Errors name the key as the caller wrote it (``saga_final``)."""
        flat = _flat_fields(xargs)
        return _from_fields(flat or {}, FLAT_PREFIX, "vllm_xargs")

    @classmethod
    def from_extra_args(cls, extra_args: Any) -> RequestMetadata | None:
        """Read ``SamplingParams.extra_args``: None when it carries no SAGA metadata (a plain
        request), else the metadata from ``extra_args["saga"]`` or the ``saga_<field>`` keys."""
        if extra_args is None:
            return None
        if not isinstance(extra_args, Mapping):
            raise MetadataError("SamplingParams.extra_args must be a dict, got "
                                f"{type(extra_args).__name__}")
        nested = extra_args.get(SAGA_KEY)
        flat = _flat_fields(extra_args)
        if nested is not None and flat is not None:
            raise MetadataError(
                "give SAGA metadata either as extra_args['saga'] or as saga_* keys, not both")
        if flat is not None:
            return _from_fields(flat, FLAT_PREFIX, "vllm_xargs")
        if nested is None:
            return None
        return _from_fields(nested, NESTED_PREFIX, "extra_args['saga']")


_FIELDS = tuple(f.name for f in fields(RequestMetadata))


def _from_fields(raw: Any, p: str, where: str) -> RequestMetadata:
    """Validate a field dict into :class:`RequestMetadata`; ``p`` prefixes field names in
    errors and ``where`` names the container."""
    if not isinstance(raw, Mapping):
        raise MetadataError(f"{where} must be a dict of SAGA fields, got {type(raw).__name__}")
    unknown = sorted(p + (k[:40] if isinstance(k, str) else repr(k)[:40])
                     for k in raw if k not in _FIELDS)
    if unknown:
        raise MetadataError(f"unknown SAGA field(s) {unknown}; known fields: "
                            f"{sorted(p + f for f in _FIELDS)}")
    if "session_id" not in raw:
        raise MetadataError(f"{p}session_id is required (a non-empty str)", "session_id")
    defaults = RequestMetadata.__dataclass_fields__
    values = {name: raw[name] if name in raw else defaults[name].default for name in _FIELDS}
    # Checked here so errors carry the caller's prefix; the constructor then finds it valid.
    return RequestMetadata(**_normalized(values, p))


def _flat_fields(args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``saga_<field>`` keys of ``args`` as a field dict (None when there are none), with
    form-encoded flags (``"true"``, ``"0"``, 1) read as bools."""
    flat = {k[len(FLAT_PREFIX):]: v for k, v in args.items()
            if isinstance(k, str) and k.startswith(FLAT_PREFIX)}
    if not flat:
        return None
    for name in FLAG_FIELDS:
        flag = flat.get(name)
        if isinstance(flag, int | str) and not isinstance(flag, bool):
            word = flag.strip().lower() if isinstance(flag, str) else {1: "1", 0: "0"}.get(
                flag, "")
            if word not in _BOOL_WORDS:
                raise MetadataError(f"{FLAT_PREFIX}{name} must be true/false (or 1/0), got "
                                    f"{_show(flag)}", name)
            flat[name] = _BOOL_WORDS[word]
    return flat
