"""Request traces for cache replay: schemas, parsing with line-numbered errors, bundled data.

Parsing takes lines, not paths, so it stays free of I/O; the CLI opens the file (in binary
mode, so a line that is not UTF-8 is one bad line, not a crash). Every malformed line raises
`TraceFormatError` naming the line and the field; nothing else escapes a parser.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, cast

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
    notes: tuple[str, ...] = field(default=())
    """What the reader assumed where the trace is silent (missing timings, estimated tokens)."""

    @property
    def block_refs(self) -> int:
        return sum(len(r.block_hashes) for r in self.requests)


MAX_TRACE_INT = 2**53
"""Largest timestamp or token count a trace line may hold (exact as a float; 285,000 years
in ms); larger values are typos or garbage, and would overflow float arithmetic."""

MAX_BLOCK_ID = 2**63 - 1
"""Block ids are int64 keys in the cache and in saga-kernels."""

MAX_AGENT_TOKENS = 2**24
"""Most tokens one agent call may hold (16.7M): the call's prompt is expanded into
``input_tokens // block_tokens`` block ids, so a garbage count must not allocate billions."""

TraceLine = str | bytes
"""A line as read from a text file (``str``) or a binary one (``bytes``, decoded as UTF-8)."""


def _load_json(line: TraceLine, lineno: int) -> dict[str, Any]:
    """A line's JSON object; bad UTF-8, bad JSON and non-objects raise `TraceFormatError`."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceFormatError(
                f"line {lineno}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column "
                f"{exc.start + 1}); save the trace as UTF-8") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"line {lineno}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting 10^5 deep
        raise TraceFormatError(f"line {lineno}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _show(value: object) -> str:
    """A value for an error message: short, and safe for huge ints (whose repr can fail)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _field(obj: Mapping[str, Any], name: str, kind: type, lineno: int) -> Any:
    if name not in obj:
        raise TraceFormatError(f"line {lineno}: missing field {name!r}")
    value = obj[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TraceFormatError(
            f"line {lineno}: field {name!r} must be an integer, got {_show(value)}")
    if kind is int and not 0 <= value <= MAX_TRACE_INT:
        raise TraceFormatError(
            f"line {lineno}: field {name!r} must be an integer >= 0 and <= 2^53, got "
            f"{_show(value)}")
    if kind is list and not isinstance(value, list):
        raise TraceFormatError(
            f"line {lineno}: field {name!r} must be a list, got {_show(value)}")
    return value


def _time(value: object, where: str, name: str) -> float | None:
    """A timing field: None when null or absent (the caller's fallback applies), else a finite
    number (JSON's NaN, Infinity and numbers past float's range are errors)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if math.isfinite(x) and abs(x) <= MAX_TRACE_INT:
            return x
    raise TraceFormatError(
        f"{where}: field {name!r} must be a finite number of seconds or null, got {_show(value)}")


def parse_mooncake_line(line: TraceLine, lineno: int, index: int) -> TraceRequest:
    """Parse one Mooncake JSONL record; raise `TraceFormatError` naming the line and field.

    Every field is required (the format has no nulls): ``timestamp``, ``input_length`` and
    ``output_length`` are integers in [0, 2^53], ``hash_ids`` int64 ids >= 0.
    """
    obj = _load_json(line, lineno)
    ts = _field(obj, "timestamp", int, lineno)
    n_in = _field(obj, "input_length", int, lineno)
    n_out = _field(obj, "output_length", int, lineno)
    hashes = _field(obj, "hash_ids", list, lineno)
    if any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= MAX_BLOCK_ID
           for h in hashes):
        raise TraceFormatError(
            f"line {lineno}: field 'hash_ids' must hold integers in [0, 2^63) only")
    expected = -(-n_in // MOONCAKE_BLOCK_TOKENS)
    if len(hashes) != expected:
        raise TraceFormatError(
            f"line {lineno}: field 'hash_ids' has {len(hashes)} ids but input_length {n_in} "
            f"needs ceil({n_in}/{MOONCAKE_BLOCK_TOKENS}) = {expected}")
    return TraceRequest(index=index, arrival_s=ts / 1000.0, input_tokens=n_in,
                        output_tokens=n_out, block_hashes=tuple(hashes),
                        block_tokens=MOONCAKE_BLOCK_TOKENS)


def parse_mooncake(lines: Iterable[TraceLine], *, name: str = "mooncake",
                   skip_bad_lines: bool = False, limit: int | None = None) -> Trace:
    """Parse a Mooncake trace (JSONL, 512-token chained block ids) from its lines.

    A malformed line raises `TraceFormatError` with its 1-based line number, or with
    ``skip_bad_lines`` is recorded in ``Trace.skipped`` and left out. Blank lines are ignored.
    Arrival times must not decrease (the trace is replayed in order). Lines may be ``str`` or
    ``bytes`` (a file opened in binary mode: each line is decoded as UTF-8 on its own, so one
    bad byte costs one line). The format has no nulls: every field is required.
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
    """One step of an agent session: an LLM call (token counts) or a tool call (name, and its
    recorded duration when the trace has one)."""

    kind: str  # "llm" or "tool"
    t_start: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tool: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class AgentSession:
    """A recorded agent task: its start time and alternating LLM/tool steps.

    ``t0`` None: the trace did not record the start (see :func:`agent_requests`);
    ``untimed_calls``: LLM calls whose start was missing and was put right after the previous
    call; ``estimated_calls``: LLM calls whose token counts the reader estimated."""

    session_id: str
    agent_type: str
    t0: float | None
    steps: tuple[AgentStep, ...]
    untimed_calls: int = 0
    estimated_calls: int = 0


def _session_block_id(session_id: str, j: int) -> int:
    """Stable 63-bit id of block ``j`` of a session's prompt chain (independent of hash seed)."""
    digest = hashlib.blake2b(f"{session_id}\x00{j}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _name(value: object, where: str, name: str) -> str:
    """A non-empty string field that is valid Unicode (JSON's ``"\\ud800"`` escapes are not)."""
    if not isinstance(value, str) or not value:
        raise TraceFormatError(f"{where}: field {name!r} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TraceFormatError(
            f"{where}: field {name!r} holds an unpaired UTF-16 surrogate escape") from None
    return value


def _agent_step(st: object, where: str, prev_t: float) -> AgentStep:
    """One step; an LLM call's ``t_start`` null or absent becomes ``prev_t`` (right after the
    session's previous call, or at its start for the first call)."""
    if not isinstance(st, dict) or st.get("kind") not in ("llm", "tool"):
        raise TraceFormatError(f"{where}: field 'kind' must be 'llm' or 'tool'")
    if st["kind"] == "tool":
        dur = _time(st.get("duration_s"), where, "duration_s")
        if dur is not None and dur < 0:
            raise TraceFormatError(f"{where}: field 'duration_s' must be >= 0 or null, got {dur}")
        return AgentStep("tool", tool=_name(st.get("name"), where, "name"), duration_s=dur)
    n_in, n_out = st.get("input_tokens"), st.get("output_tokens")
    for field_name, v in (("input_tokens", n_in), ("output_tokens", n_out)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_AGENT_TOKENS:
            raise TraceFormatError(
                f"{where}: fields 'input_tokens' and 'output_tokens' must be integers >= 0 and "
                f"<= 2^24; {field_name} is {_show(v)}")
    ts = _time(st.get("t_start"), where, "t_start")
    if ts is not None and ts < 0:
        raise TraceFormatError(f"{where}: field 't_start' must be a number >= 0, got {ts}")
    if ts is not None and ts < prev_t:
        raise TraceFormatError(
            f"{where}: field 't_start' goes back in time ({ts} s after {prev_t} s)")
    return AgentStep("llm", prev_t if ts is None else ts, int(n_in), int(n_out))  # type: ignore[arg-type]


def parse_agent_line(line: TraceLine, lineno: int) -> AgentSession:
    """Parse one agent-trajectory record (see data/README.md); errors name the line and field.

    Timings may be null or absent (real trajectories lose them): ``t0_unix`` null leaves
    ``t0`` None (placed by :func:`agent_requests`), an LLM step's ``t_start`` null places the
    call right after the session's previous call (at the session's start for the first call).
    Everything else is required; ``agent`` null or absent reads as ``"agent"``.
    """
    obj = _load_json(line, lineno)
    sid = _name(obj.get("session_id"), f"line {lineno}", "session_id")
    t0 = _time(obj.get("t0_unix"), f"line {lineno}", "t0_unix")
    raw_steps = _field(obj, "steps", list, lineno)
    steps: list[AgentStep] = []
    prev_t = 0.0
    untimed = 0
    for k, st in enumerate(raw_steps):
        step = _agent_step(st, f"line {lineno}: steps[{k}]", prev_t)
        untimed += step.kind == "llm" and isinstance(st, dict) and st.get("t_start") is None
        prev_t = step.t_start if step.t_start is not None else prev_t
        steps.append(step)
    if not steps or steps[0].kind != "llm":
        raise TraceFormatError(f"line {lineno}: field 'steps' must start with an 'llm' step")
    agent = obj.get("agent")
    if agent is not None:
        agent = _name(agent, f"line {lineno}", "agent")
    return AgentSession(session_id=sid, agent_type=agent or "agent", t0=t0, steps=tuple(steps),
                        untimed_calls=untimed)


def _session_starts(sessions: Sequence[AgentSession]) -> list[float]:
    """Each session's ``t0``; a missing one is the previous session's (sessions without one
    before the first that has one take that first one; 0.0 when none has one)."""
    first = next((s.t0 for s in sessions if s.t0 is not None), 0.0)
    out: list[float] = []
    for s in sessions:
        out.append(s.t0 if s.t0 is not None else (out[-1] if out else first))
    return out


def agent_requests(sessions: Sequence[AgentSession], block_tokens: int) -> list[TraceRequest]:
    """Every LLM call of every session as a request, in arrival order (``t0 + t_start``).

    A call's prompt is the session's history, so its blocks are the first ``input // block``
    blocks of one session-local chain; the partial tail is always prefilled (vLLM hashes full
    blocks only). The tool step after a call is its pending tool. A session whose ``t0`` is
    None starts with the session before it (see :func:`_session_starts`).
    """
    out: list[tuple[float, int, int, TraceRequest]] = []
    for s_idx, (sess, t0) in enumerate(zip(sessions, _session_starts(sessions), strict=True)):
        calls = [i for i, st in enumerate(sess.steps) if st.kind == "llm"]
        for c, i in enumerate(calls):
            st = sess.steps[i]
            nxt = sess.steps[i + 1] if i + 1 < len(sess.steps) else None
            arrival = t0 + (st.t_start or 0.0)
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


def parse_agent(lines: Iterable[TraceLine], *, name: str = "agent", skip_bad_lines: bool = False,
                limit: int | None = None, block_tokens: int = AGENT_BLOCK_TOKENS) -> Trace:
    """Parse agent trajectories (one session per JSONL line) into a request trace.

    ``limit`` counts sessions. Arrival times are relative to the first call of the trace.
    Missing timings have a fallback instead of an error (see :func:`parse_agent_line`): a
    call without ``t_start`` comes right after the session's previous call, a session without
    ``t0_unix`` starts with the session on the line before it. Session ids are unique.
    Malformed lines raise `TraceFormatError` naming the line and field, or with
    ``skip_bad_lines`` are counted in ``Trace.skipped`` and left out.
    """
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
        raise SagaConfigError(f"block_tokens must be an integer >= 1, got {block_tokens!r}")
    sessions: list[AgentSession] = []
    skipped: list[tuple[int, str]] = []
    first_line: dict[str, str] = {}
    for lineno, raw in enumerate(lines, start=1):
        if limit is not None and len(sessions) >= limit:
            break
        if not raw.strip():
            continue
        try:
            session = parse_agent_line(raw, lineno)
            check_unique_session(session, first_line, f"line {lineno}")
            sessions.append(session)
        except TraceFormatError as exc:
            if not skip_bad_lines:
                raise
            skipped.append((lineno, str(exc)))
    return sessions_trace(sessions, name=name, skipped=skipped, block_tokens=block_tokens)


def check_unique_session(session: AgentSession, seen: dict[str, str], where: str) -> None:
    """Two sessions of one id would merge two tasks into one prompt chain: refuse the second."""
    first = seen.setdefault(session.session_id, where)
    if first != where:
        raise TraceFormatError(
            f"{where}: field 'session_id' {session.session_id[:60]!r} is already used on "
            f"{first}; each session needs its own id")


def timing_notes(sessions: Sequence[AgentSession]) -> list[str]:
    """What was assumed for the timings the sessions lack, and how many were recorded."""
    notes: list[str] = []
    n_untimed = sum(s.t0 is None for s in sessions)
    if n_untimed:
        notes.append(f"start time missing in {n_untimed} of {len(sessions)} sessions: each "
                     "starts with the session before it (0 s when none has one)")
    calls = sum(st.kind == "llm" for s in sessions for st in s.steps)
    untimed_calls = sum(s.untimed_calls for s in sessions)
    if untimed_calls:
        notes.append(f"start time missing for {untimed_calls} of {calls} LLM calls: each is "
                     "placed right after the session's previous call")
    estimated = sum(s.estimated_calls for s in sessions)
    if estimated:
        notes.append(f"token counts estimated (characters / 4) for {estimated} of {calls} LLM "
                     "calls: the trace did not record them")
    tools = [st.duration_s for s in sessions for st in s.steps if st.kind == "tool"]
    timed = sum(d is not None for d in tools)
    notes.append(f"tool durations recorded for {timed} of {len(tools)} tool calls")
    return notes


def sessions_trace(sessions: Sequence[AgentSession], *, name: str,
                   skipped: Sequence[tuple[int, str]] = (),
                   block_tokens: int = AGENT_BLOCK_TOKENS) -> Trace:
    """A trace of agent sessions: their calls as requests, and notes on missing timings."""
    return Trace(name=name, block_tokens=block_tokens,
                 requests=tuple(agent_requests(sessions, block_tokens)), skipped=tuple(skipped),
                 sessions=tuple(sessions), notes=tuple(timing_notes(sessions)))


TraceReader = Callable[..., Trace]
"""``read(path, *, name, skip_bad_lines, limit) -> Trace``."""


@dataclass(frozen=True)
class TraceFormat:
    """A trace format `saga replay` and `saga bench --trace` read: its reader, whether it
    records agent sessions (LLM calls and the tool calls between them) and whether PATH may be
    a directory (one trajectory JSON file per run)."""

    name: str
    read: TraceReader
    sessions: bool
    directories: bool
    summary: str


def _line_reader(parser: TraceReader) -> TraceReader:
    def read(path: Path, **kw: Any) -> Trace:
        with path.open("rb") as fh:  # binary: a bad byte costs one line (see module doc)
            return parser(fh, **kw)
    return read


def _lazy_reader(module: str, func: str) -> TraceReader:
    """A reader imported on first use (the reader modules import this one)."""
    def read(path: Path, **kw: Any) -> Trace:
        return cast(Trace, getattr(importlib.import_module(module), func)(path, **kw))
    return read


TRACE_FORMATS: Mapping[str, TraceFormat] = {f.name: f for f in (
    TraceFormat("agent", _line_reader(parse_agent), True, False,
                "SAGA's agent-trace JSONL, one session per line (data/README.md)"),
    TraceFormat("atif", _lazy_reader("saga.policy.trace_atif", "read_atif"), True, True,
                "Agent Trajectory Interchange Format (Harbor): a trajectory JSON file, a "
                ".jsonl of them, or a directory of them"),
    TraceFormat("mini-swe-agent",
                _lazy_reader("saga.policy.trace_miniswe", "read_mini_swe_agent"), True, True,
                "mini-swe-agent .traj.json files (a file or a directory of them)"),
    TraceFormat("mooncake", _line_reader(parse_mooncake), False, False,
                "Mooncake request JSONL (independent requests, 512-token block ids)"),
)}
"""Every trace format, by name: the one registry `saga replay` and `saga bench` share."""


def get_trace_format(fmt: str) -> TraceFormat:
    """The trace format of that name; unknown names list the valid ones."""
    try:
        return TRACE_FORMATS[fmt]
    except KeyError:
        valid = ", ".join(sorted(TRACE_FORMATS))
        raise SagaConfigError(f"unknown trace format {fmt!r}; valid formats: {valid}") from None


def read_trace(path: Path, fmt: str, *, skip_bad_lines: bool = False,
               limit: int | None = None) -> Trace:
    """Read a trace file (or directory, where the format allows) with its format's reader.

    Malformed input raises `TraceFormatError` naming the line (or file) and field; with
    ``skip_bad_lines`` it is counted in ``Trace.skipped`` instead."""
    f = get_trace_format(fmt)
    path = Path(path)
    if path.is_dir() and not f.directories:
        dirs = ", ".join(n for n, g in TRACE_FORMATS.items() if g.directories)
        raise SagaConfigError(f"trace {str(path)!r} is a directory; --format {fmt} reads one "
                              f"file (directories: {dirs})")
    if not path.exists():
        raise SagaConfigError(f"trace file {str(path)!r} does not exist")
    return f.read(path, name=path.name, skip_bad_lines=skip_bad_lines, limit=limit)


def bundled_trace_path(name: str = BUNDLED_MOONCAKE) -> Path:
    """Path of a trace shipped inside saga-policy (see data/README.md for source and licence)."""
    path = Path(str(resources.files("saga.policy").joinpath("data", name)))
    if not path.is_file():
        raise SagaConfigError(f"bundled trace {name!r} is missing from the saga-policy install")
    return path
