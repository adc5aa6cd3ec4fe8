"""ATIF (Agent Trajectory Interchange Format, Harbor's trajectory.json) as agent sessions.

ATIF v1.x: a root object with ``session_id``, ``agent`` (``name``, ``version``) and ``steps``;
each step has a ``source`` ("system", "user" or "agent"), a ``message``, an optional ISO 8601
``timestamp``, and for agent steps optional ``tool_calls`` (``function_name``, ``arguments``),
``observation`` (``results[].content``) and ``metrics`` (``prompt_tokens`` = the whole prompt,
cached tokens included; ``completion_tokens``). Mapped as:

- one trajectory = one session (``agent.name`` its agent type);
- each agent step = one LLM call with its recorded ``prompt_tokens`` and ``completion_tokens``;
  where either is missing, both are estimated from the text (characters / 4: the prompt is the
  previous call's prompt and output plus the text since, the output the step's message,
  reasoning and tool calls) and the call is counted as estimated;
- the call's tool = its first tool call's ``function_name`` (``action`` when it has an
  observation but no structured tool call, ``none`` when neither: nothing ran, 0 s);
- the call's start = its ``timestamp`` relative to the first timed agent step. ATIF records no
  tool durations, and a gap between step timestamps holds the LLM's own latency on the recording
  provider as well, so it is not used as one: tool durations are left unrecorded (null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saga.policy.errors import TraceFormatError
from saga.policy.trace_files import estimate_tokens, field_of, read_sessions, tokens, unix_time
from saga.policy.traces import AgentSession, AgentStep, Trace

SOURCES = ("system", "user", "agent")
PATTERNS = ("trajectory.json", "*.json")
"""In a directory: Harbor's per-run ``trajectory.json`` files if there are any (its config and
result files sit beside them), else every ``*.json`` file."""


def _text(value: object) -> int:
    """Characters of a text field (non-strings, e.g. structured content, as JSON)."""
    if value is None:
        return 0
    return len(value) if isinstance(value, str) else len(json.dumps(value, default=str))


def _tool_name(step: dict[str, Any], where: str) -> str:
    calls = step.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not isinstance(calls[0], dict):
            raise TraceFormatError(f"{where}: field 'tool_calls' must be a list of objects")
        fn = calls[0].get("function_name")
        if not isinstance(fn, str) or not fn:
            raise TraceFormatError(
                f"{where}: field 'tool_calls[0].function_name' must be a non-empty string")
        return fn
    return "action" if field_of(step, "observation.results") else "none"


def _observation_chars(step: dict[str, Any]) -> int:
    results = field_of(step, "observation.results")
    if not isinstance(results, list):
        return 0
    return sum(_text(r.get("content")) for r in results if isinstance(r, dict))


def parse_atif(obj: dict[str, Any], label: str) -> AgentSession:
    """One ATIF trajectory as a session; errors name the document and the field."""
    sid = obj.get("session_id")
    if not isinstance(sid, str) or not sid:
        raise TraceFormatError(f"{label}: field 'session_id' must be a non-empty string")
    raw_steps = obj.get("steps")
    if not isinstance(raw_steps, list):
        raise TraceFormatError(f"{label}: field 'steps' must be a list")
    agent = field_of(obj, "agent.name")
    steps: list[AgentStep] = []
    t0: float | None = None
    prev_t = 0.0
    base = chars = untimed = estimated = 0  # tokens known at the last call; chars since
    for k, st in enumerate(raw_steps):
        where = f"{label}: steps[{k}]"
        if not isinstance(st, dict) or st.get("source") not in SOURCES:
            raise TraceFormatError(f"{where}: field 'source' must be one of {', '.join(SOURCES)}")
        out_chars = (_text(st.get("message")) + _text(st.get("reasoning_content"))
                     + _text(st.get("tool_calls")))
        if st["source"] == "agent":
            n_in = tokens(field_of(st, "metrics.prompt_tokens"), where, "metrics.prompt_tokens")
            n_out = tokens(field_of(st, "metrics.completion_tokens"), where,
                           "metrics.completion_tokens")
            if n_in is None or n_out is None:
                n_in = max(1, base + estimate_tokens(chars))
                n_out = estimate_tokens(out_chars)
                estimated += 1
            base, chars = n_in + n_out, -out_chars
            ts = unix_time(st.get("timestamp"), where, "timestamp")
            if ts is not None and t0 is None:
                t0 = ts
            t = None if ts is None or t0 is None else ts - t0
            if t is not None and t < prev_t:
                raise TraceFormatError(f"{where}: field 'timestamp' goes back in time "
                                       f"({t:.3f} s after {prev_t:.3f} s)")
            untimed += t is None
            prev_t = prev_t if t is None else t
            steps.append(AgentStep("llm", prev_t, n_in, n_out))
            tool = _tool_name(st, where)
            steps.append(AgentStep("tool", tool=tool, duration_s=0.0 if tool == "none" else None))
        chars += out_chars + _observation_chars(st)
    while steps and steps[-1].kind == "tool":
        steps.pop()  # nothing follows the last call
    if not steps:
        raise TraceFormatError(f"{label}: field 'steps' holds no agent step (no LLM call)")
    return AgentSession(session_id=sid, agent_type=agent if isinstance(agent, str) and agent
                        else "agent", t0=t0, steps=tuple(steps), untimed_calls=untimed,
                        estimated_calls=estimated)


def read_atif(path: Path, *, name: str = "atif", skip_bad_lines: bool = False,
              limit: int | None = None) -> Trace:
    """ATIF trajectories from a ``.json`` file (one), a ``.jsonl`` file (one per line) or a
    directory (see :data:`PATTERNS`); ``limit`` counts sessions."""
    return read_sessions(Path(path), parse_atif, PATTERNS, name=name,
                         skip_bad_lines=skip_bad_lines, limit=limit)


__all__ = ["PATTERNS", "parse_atif", "read_atif"]
