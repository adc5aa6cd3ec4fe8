"""A call's session and workflow hints, read from the conventions OpenAI clients already speak.

The session is named by the ``X-Session-Id`` header, else the body's ``prompt_cache_key``
(OpenAI's and Kimi's field for "requests that share a prefix"), else its ``user``; a request
with none of them is a session of one call. Tool hints come as headers any client can set
(``default_headers`` in the OpenAI SDK and LangChain): ``X-Saga-Tool`` (the tool that runs after
this call), ``X-Saga-Tool-Latency-Ms`` (how long the previous one ran), ``X-Saga-Final`` (the
task's last call), ``X-Saga-Agent-Type`` and ``X-Saga-Deadline-S`` (seconds left to the task's
deadline: task-level fairness, AFS, orders the gateway's queue by it). Anthropic-style
``cache_control`` with a ``ttl`` is read as a retention hint: the client says it will come
back within that time. All of it becomes SAGA's one
:class:`~saga.aeg.metadata.RequestMetadata`; a malformed hint is a :class:`HintError` naming
the header or field (HTTP 400), never a silently mis-scheduled call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.aeg.metadata import DEFAULT_TENANT, MetadataError, RequestMetadata
from saga.policy.errors import SagaError

__all__ = [
    "AGENT_HEADER",
    "DEADLINE_HEADER",
    "FINAL_HEADER",
    "LATENCY_HEADER",
    "MAX_ID_CHARS",
    "SESSION_HEADER",
    "TOOL_HEADER",
    "CallHints",
    "HintError",
    "parse_ttl",
    "read_hints",
    "strip_cache_control",
]

SESSION_HEADER = "x-session-id"
TOOL_HEADER = "x-saga-tool"
LATENCY_HEADER = "x-saga-tool-latency-ms"
FINAL_HEADER = "x-saga-final"
AGENT_HEADER = "x-saga-agent-type"
DEADLINE_HEADER = "x-saga-deadline-s"
MAX_ID_CHARS = 256
"""Longest session id or hint accepted (they are table keys and metric labels' sources)."""

_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_TTL_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class HintError(SagaError, ValueError):
    """A session or hint the gateway cannot use; ``where`` names the header or body field."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True)
class CallHints:
    """What the gateway learned about one call: SAGA's metadata, where the session id came from
    (``header``, ``prompt_cache_key``, ``user`` or ``none``) and the retention asked for."""

    meta: RequestMetadata
    session_source: str
    retain_s: float | None = None


def _text(value: Any, where: str) -> str | None:
    """A hint string: None when absent or blank; refused when not a short printable string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise HintError(f"{where} must be a string, got {type(value).__name__}", where)
    value = value.strip()
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        raise HintError(f"{where} must be printable and at most {MAX_ID_CHARS} characters "
                        f"(got {len(value)})", where)
    return value or None


def _session(headers: Mapping[str, str], body: Mapping[str, Any]) -> tuple[str | None, str]:
    for where, value in (("X-Session-Id header", headers.get(SESSION_HEADER)),
                         ("prompt_cache_key", body.get("prompt_cache_key")),
                         ("user", body.get("user"))):
        sid = _text(value, where)
        if sid is not None:
            source = "header" if where.startswith("X-") else where
            return sid, source
    return None, "none"


def _final(value: str | None) -> bool:
    if value is None:
        return False
    flag = _TRUE.get(value.strip().lower())
    if flag is None:
        raise HintError(f"X-Saga-Final must be true or false, got {value[:40]!r}",
                        "X-Saga-Final header")
    return flag


def _number(value: str | None, header: str, what: str, low: float) -> float | None:
    """A numeric header: None when absent or blank; refused unless finite and >= ``low``."""
    if value is None or not value.strip():
        return None
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x >= low):
        raise HintError(f"{header} must be {what}, got {value[:40]!r}", f"{header} header")
    return x


def _deadline_s(value: str | None) -> float | None:
    return _number(value, "X-Saga-Deadline-S", "a finite number of seconds", -math.inf)


def _latency_s(value: str | None) -> float | None:
    ms = _number(value, "X-Saga-Tool-Latency-Ms", "a finite number of milliseconds >= 0", 0.0)
    return None if ms is None else ms / 1000.0


def parse_ttl(value: Any, where: str) -> float:
    """Seconds of an Anthropic-style ``ttl``: ``"5m"``, ``"1h"``, ``"30s"``, ``"250ms"`` or a
    number of seconds; refused unless finite and > 0."""
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _TTL.match(value)
        if m is not None:
            seconds = float(m.group(1)) * _TTL_UNIT_S[m.group(2)]
    if not (math.isfinite(seconds) and seconds > 0):
        raise HintError(f"{where} must be a duration like \"5m\", \"1h\", \"30s\" or a number "
                        f"of seconds > 0, got {value!r:.40}", where)
    return seconds


def _cache_control(cc: Any, where: str) -> float | None:
    if cc is None:
        return None
    if not isinstance(cc, Mapping):
        raise HintError(f"{where} must be an object like {{\"type\": \"ephemeral\"}}", where)
    if cc.get("type", "ephemeral") != "ephemeral":
        raise HintError(f"{where}.type must be \"ephemeral\", got {cc.get('type')!r:.40}",
                        f"{where}.type")
    ttl = cc.get("ttl")
    return 300.0 if ttl is None else parse_ttl(ttl, f"{where}.ttl")  # Anthropic's default: 5m


def _retention(body: Mapping[str, Any]) -> float | None:
    """The longest ``cache_control`` TTL anywhere in the request (top level, a message, or a
    content part), or None when it has none."""
    found = [_cache_control(body.get("cache_control"), "cache_control")]
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping):
                continue
            found.append(_cache_control(msg.get("cache_control"),
                                        f"messages[{i}].cache_control"))
            content = msg.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, Mapping):
                        found.append(_cache_control(
                            part.get("cache_control"),
                            f"messages[{i}].content[{j}].cache_control"))
    ttls = [t for t in found if t is not None]
    return max(ttls) if ttls else None


def read_hints(headers: Mapping[str, str], body: Mapping[str, Any], tenant: str,
               request_id: str) -> CallHints:
    """The call's :class:`CallHints` (``headers`` with lower-case names). Without a session the
    call is a session of its own (``req-<request_id>``), final: nothing of it is reused."""
    sid, source = _session(headers, body)
    if sid is not None and tenant != DEFAULT_TENANT:
        sid = f"{tenant}:{sid}"  # tenants name sessions independently: never one row for two
    final = _final(headers.get(FINAL_HEADER))
    retain = _retention(body)
    try:
        meta = RequestMetadata(
            session_id=sid or f"req-{request_id}", tenant_id=tenant,
            agent_type=_text(headers.get(AGENT_HEADER), "X-Saga-Agent-Type header"),
            pending_tool=_text(headers.get(TOOL_HEADER), "X-Saga-Tool header"),
            tool_latency_s=_latency_s(headers.get(LATENCY_HEADER)),
            final=final or sid is None,
            deadline_s=_deadline_s(headers.get(DEADLINE_HEADER)),
            # The client says it returns within the TTL: its prefix will be read again.
            reuse_prob=1.0 if retain is not None and not final else None)
    except MetadataError as exc:  # the metadata's own rules (e.g. a blank tenant)
        raise HintError(str(exc), exc.field or "metadata") from None
    return CallHints(meta, source, retain)


def strip_cache_control(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without ``cache_control`` keys (vLLM's chat parser does not know them)."""
    body.pop("cache_control", None)
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                msg.pop("cache_control", None)
                content = msg.get("content")
                if isinstance(content, list):
                    for part in content:
                        if isinstance(part, dict):
                            part.pop("cache_control", None)
    return body
