"""Request traces for cache replay: schemas, parsing with line-numbered errors, bundled data.

Parsing takes lines, not paths, so it stays free of I/O; the CLI opens the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from saga.policy.errors import SagaConfigError, TraceFormatError

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per `hash_ids` entry in the Mooncake traces (their README)."""

BUNDLED_MOONCAKE = "mooncake_conversation_3k.jsonl"
BUNDLED_AGENT = "swebench_mini_swe_agent_120.jsonl"


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: arrival, prompt and output sizes, chained prefix-block ids."""

    index: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    block_hashes: tuple[int, ...]
    block_tokens: int
    session_id: str | None = None
    call_index: int = 0
    pending_tool: str | None = None
    agent_type: str | None = None

    def block_token_counts(self) -> list[int]:
        """Tokens held by each block; a last block past the prompt's end is partial."""
        n = len(self.block_hashes)
        counts = [self.block_tokens] * n
        if n and n * self.block_tokens > self.input_tokens:
            counts[-1] = self.input_tokens - self.block_tokens * (n - 1)
        return counts


@dataclass(frozen=True)
class Trace:
    """A parsed trace: requests in arrival order and the lines skipped (line number, reason)."""

    name: str
    block_tokens: int
    requests: tuple[TraceRequest, ...]
    skipped: tuple[tuple[int, str], ...] = field(default=())
    sessions: tuple[AgentSession, ...] = field(default=())

    @property
    def block_refs(self) -> int:
        return sum(len(r.block_hashes) for r in self.requests)


def _field(obj: Mapping[str, Any], name: str, kind: type, lineno: int) -> Any:
    if name not in obj:
        raise TraceFormatError(f"line {lineno}: missing field {name!r}")
    value = obj[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TraceFormatError(f"line {lineno}: field {name!r} must be an integer, got {value!r}")
    if kind is list and not isinstance(value, list):
        raise TraceFormatError(f"line {lineno}: field {name!r} must be a list, got {value!r}")
    return value


def parse_mooncake_line(line: str, lineno: int, index: int) -> TraceRequest:
    """Parse one Mooncake JSONL record; raise `TraceFormatError` naming the line and field."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"line {lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    ts = _field(obj, "timestamp", int, lineno)
    n_in = _field(obj, "input_length", int, lineno)
    n_out = _field(obj, "output_length", int, lineno)
    hashes = _field(obj, "hash_ids", list, lineno)
    if ts < 0 or n_in < 0 or n_out < 0:
        raise TraceFormatError(
            f"line {lineno}: timestamp, input_length and output_length must be >= 0")
    if any(isinstance(h, bool) or not isinstance(h, int) for h in hashes):
        raise TraceFormatError(f"line {lineno}: field 'hash_ids' must hold integers only")
    expected = math.ceil(n_in / MOONCAKE_BLOCK_TOKENS)
    if len(hashes) != expected:
        raise TraceFormatError(
            f"line {lineno}: field 'hash_ids' has {len(hashes)} ids but input_length {n_in} "
            f"needs ceil({n_in}/{MOONCAKE_BLOCK_TOKENS}) = {expected}")
    return TraceRequest(index=index, arrival_s=ts / 1000.0, input_tokens=n_in,
                        output_tokens=n_out, block_hashes=tuple(hashes),
                        block_tokens=MOONCAKE_BLOCK_TOKENS)


def parse_mooncake(lines: Iterable[str], *, name: str = "mooncake",
                   skip_bad_lines: bool = False, limit: int | None = None) -> Trace:
    """Parse a Mooncake trace (JSONL, 512-token chained block ids) from its lines.

    A malformed line raises `TraceFormatError` with its 1-based line number, or with
    ``skip_bad_lines`` is recorded in ``Trace.skipped`` and left out. Blank lines are ignored.
    Arrival times must not decrease (the trace is replayed in order).
    """
    requests: list[TraceRequest] = []
    skipped: list[tuple[int, str]] = []
    last_arrival = -math.inf
    for lineno, raw in enumerate(lines, start=1):
        if limit is not None and len(requests) >= limit:
            break
        if not raw.strip():
            continue
        try:
            req = parse_mooncake_line(raw, lineno, len(requests))
            if req.arrival_s < last_arrival:
                raise TraceFormatError(
                    f"line {lineno}: field 'timestamp' goes back in time "
                    f"({req.arrival_s * 1000:.0f} ms after {last_arrival * 1000:.0f} ms)")
        except TraceFormatError as exc:
            if not skip_bad_lines:
                raise
            skipped.append((lineno, str(exc)))
            continue
        last_arrival = req.arrival_s
        requests.append(req)
    return Trace(name=name, block_tokens=MOONCAKE_BLOCK_TOKENS, requests=tuple(requests),
                 skipped=tuple(skipped))


AGENT_BLOCK_TOKENS = 512
"""Block size used to cut agent prompts into chained blocks (the Mooncake traces' unit)."""


@dataclass(frozen=True)
class AgentStep:
    """One step of an agent session: an LLM call (token counts) or a tool call (name)."""

    kind: str  # "llm" or "tool"
    t_start: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tool: str | None = None


@dataclass(frozen=True)
class AgentSession:
    """A recorded agent task: its start time and alternating LLM/tool steps."""

    session_id: str
    agent_type: str
    t0: float
    steps: tuple[AgentStep, ...]


def _session_block_id(session_id: str, j: int) -> int:
    """Stable 63-bit id of block ``j`` of a session's prompt chain (independent of hash seed)."""
    digest = hashlib.blake2b(f"{session_id}\x00{j}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def parse_agent_line(line: str, lineno: int) -> AgentSession:
    """Parse one agent-trajectory record (see data/README.md); errors name the line and field."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"line {lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    sid = obj.get("session_id")
    if not isinstance(sid, str) or not sid:
        raise TraceFormatError(f"line {lineno}: field 'session_id' must be a non-empty string")
    t0 = obj.get("t0_unix")
    if isinstance(t0, bool) or not isinstance(t0, int | float):
        raise TraceFormatError(f"line {lineno}: field 't0_unix' must be a number")
    raw_steps = _field(obj, "steps", list, lineno)
    steps: list[AgentStep] = []
    for k, st in enumerate(raw_steps):
        where = f"line {lineno}: steps[{k}]"
        if not isinstance(st, dict) or st.get("kind") not in ("llm", "tool"):
            raise TraceFormatError(f"{where}: field 'kind' must be 'llm' or 'tool'")
        if st["kind"] == "llm":
            n_in, n_out, ts = st.get("input_tokens"), st.get("output_tokens"), st.get("t_start")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in (n_in, n_out)):
                raise TraceFormatError(
                    f"{where}: fields 'input_tokens' and 'output_tokens' must be integers >= 0")
            if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0:
                raise TraceFormatError(f"{where}: field 't_start' must be a number >= 0")
            steps.append(AgentStep("llm", float(ts), int(n_in), int(n_out)))  # type: ignore[arg-type]
        else:
            name = st.get("name")
            if not isinstance(name, str) or not name:
                raise TraceFormatError(f"{where}: field 'name' must be a non-empty string")
            steps.append(AgentStep("tool", tool=name))
    if not steps or steps[0].kind != "llm":
        raise TraceFormatError(f"line {lineno}: field 'steps' must start with an 'llm' step")
    agent = obj.get("agent")
    return AgentSession(session_id=sid, agent_type=agent if isinstance(agent, str) else "agent",
                        t0=float(t0), steps=tuple(steps))


def agent_requests(sessions: Sequence[AgentSession], block_tokens: int) -> list[TraceRequest]:
    """Every LLM call of every session as a request, in arrival order (``t0 + t_start``).

    A call's prompt is the session's history, so its blocks are the first ``input // block``
    blocks of one session-local chain; the partial tail is always prefilled (vLLM hashes full
    blocks only). The tool step after a call is its pending tool.
    """
    out: list[tuple[float, int, int, TraceRequest]] = []
    for s_idx, sess in enumerate(sessions):
        calls = [i for i, st in enumerate(sess.steps) if st.kind == "llm"]
        for c, i in enumerate(calls):
            st = sess.steps[i]
            nxt = sess.steps[i + 1] if i + 1 < len(sess.steps) else None
            arrival = sess.t0 + (st.t_start or 0.0)
            hashes = tuple(_session_block_id(sess.session_id, j)
                           for j in range(st.input_tokens // block_tokens))
            req = TraceRequest(index=0, arrival_s=arrival, input_tokens=st.input_tokens,
                               output_tokens=st.output_tokens, block_hashes=hashes,
                               block_tokens=block_tokens, session_id=sess.session_id,
                               call_index=c, agent_type=sess.agent_type,
                               pending_tool=nxt.tool if nxt is not None else None)
            out.append((arrival, s_idx, c, req))
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    t_first = out[0][0] if out else 0.0
    return [replace(req, index=k, arrival_s=arrival - t_first)
            for k, (arrival, _, _, req) in enumerate(out)]


def parse_agent(lines: Iterable[str], *, name: str = "agent", skip_bad_lines: bool = False,
                limit: int | None = None, block_tokens: int = AGENT_BLOCK_TOKENS) -> Trace:
    """Parse agent trajectories (one session per JSONL line) into a request trace.

    ``limit`` counts sessions. Arrival times are relative to the first call of the trace.
    """
    sessions: list[AgentSession] = []
    skipped: list[tuple[int, str]] = []
    for lineno, raw in enumerate(lines, start=1):
        if limit is not None and len(sessions) >= limit:
            break
        if not raw.strip():
            continue
        try:
            sessions.append(parse_agent_line(raw, lineno))
        except TraceFormatError as exc:
            if not skip_bad_lines:
                raise
            skipped.append((lineno, str(exc)))
    return Trace(name=name, block_tokens=block_tokens,
                 requests=tuple(agent_requests(sessions, block_tokens)), skipped=tuple(skipped),
                 sessions=tuple(sessions))


TraceParser = Callable[..., Trace]

TRACE_FORMATS: Mapping[str, TraceParser] = {"mooncake": parse_mooncake, "agent": parse_agent}
"""Trace formats `saga replay` reads, by name."""


def get_trace_parser(fmt: str) -> TraceParser:
    """The parser of a trace format; unknown names list the valid ones."""
    try:
        return TRACE_FORMATS[fmt]
    except KeyError:
        valid = ", ".join(sorted(TRACE_FORMATS))
        raise SagaConfigError(f"unknown trace format {fmt!r}; valid formats: {valid}") from None


def bundled_trace_path(name: str = BUNDLED_MOONCAKE) -> Path:
    """Path of a trace shipped inside saga-policy (see data/README.md for source and licence)."""
    path = Path(str(resources.files("saga.policy").joinpath("data", name)))
    if not path.is_file():
        raise SagaConfigError(f"bundled trace {name!r} is missing from the saga-policy install")
    return path
