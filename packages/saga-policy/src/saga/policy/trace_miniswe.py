"""mini-swe-agent trajectories (``<instance>.traj.json``) as agent sessions.

A trajectory is ``{"info": {...}, "messages": [...], "trajectory_format": ...}``; messages are
OpenAI chat messages (``role``, ``content``) with an ``extra`` field. Mapped as the bundled agent
traces were built (see the agent-trace README):

- each assistant message = one LLM call, with the provider's ``extra.response.usage``
  (``prompt_tokens``: the whole prompt; ``completion_tokens``) where recorded; where not, both
  are estimated from the text (characters / 4: the prompt is the previous call's prompt and
  output plus the messages since, the output the message itself) and the call is counted as
  estimated;
- its start = ``extra.response.created`` (or ``extra.timestamp``), Unix seconds, relative to the
  first call's; absent: right after the previous call;
- the message that follows (the observation) = the tool call, named by the verb of the
  assistant's bash block (``submit`` for the final submission, ``format_error`` when the reply
  held not exactly one bash block, ``bash`` for a structured tool call). mini-swe-agent records
  no command durations: they are left null.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saga.policy.errors import TraceFormatError
from saga.policy.trace_files import estimate_tokens, field_of, read_sessions, tokens, unix_time
from saga.policy.traces import AgentSession, AgentStep, Trace

PATTERNS = ("*.traj.json", "*.traj", "*.json")
_BASH = re.compile(r"```(?:bash|sh)\s*\n(.*?)```", re.DOTALL)
_PREFIX = re.compile(r"^(sudo|env|nohup|timeout|[A-Za-z_][A-Za-z0-9_]*=\S*)$")
_NOT_A_COMMAND = ("cd", "export", "echo", "printf", "{", "}", "(", ")")
_SUBMIT = ("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", "MINI_SWE_AGENT_FINAL_OUTPUT")


def _content(msg: dict[str, Any]) -> str:
    """A message's text (a list of content parts is joined)."""
    c = msg.get("content")
    if isinstance(c, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in c)
    return c if isinstance(c, str) else ""


def _segment_verb(seg: str) -> str | None:
    toks = seg.split()
    while toks and (_PREFIX.match(toks[0]) or toks[0].isdigit()):
        toks.pop(0)  # sudo, env, nohup, timeout N, VAR=value
    if not toks or toks[0].startswith("#") or toks[0] in _NOT_A_COMMAND:
        return None
    base = toks[0].rsplit("/", 1)[-1]
    if base.startswith("python"):
        return {"pytest": "pytest", "pip": "pip"}.get(toks[2] if toks[1:2] == ["-m"]
                                                      and len(toks) > 2 else "", "python")
    if base in ("cat", "tee") and "<<" in seg:
        return "write_file"
    return base


def command_verb(text: str) -> str:
    """The verb of the reply's one bash command (``cd x && grep y`` → ``grep``; the agent-trace
    README's rules, simplified)."""
    if any(s in text for s in _SUBMIT):
        return "submit"
    blocks = _BASH.findall(text)
    if len(blocks) != 1:
        return "format_error"
    for line in blocks[0].splitlines():
        for seg in re.split(r"&&|\|\||;|\|", line):
            verb = _segment_verb(seg)
            if verb is not None:
                return verb
    return "format_error"


def _session_id(obj: dict[str, Any], label: str) -> str:
    sid = obj.get("instance_id") or field_of(obj, "info.instance_id")
    if isinstance(sid, str) and sid:
        return sid
    base = label.rsplit("/", 1)[-1]
    for suffix in (".traj.json", ".traj", ".json"):
        base = base.removesuffix(suffix)
    return base or label


def parse_mini_swe_agent(obj: dict[str, Any], label: str) -> AgentSession:
    """One mini-swe-agent trajectory as a session; errors name the document and the field."""
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        raise TraceFormatError(f"{label}: field 'messages' must be a list")
    steps: list[AgentStep] = []
    t0: float | None = None
    prev_t = 0.0
    base = chars = untimed = estimated = 0  # tokens known at the last call; chars since
    for k, msg in enumerate(msgs):
        where = f"{label}: messages[{k}]"
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise TraceFormatError(f"{where}: field 'role' must be a string")
        text = _content(msg)
        if msg["role"] == "assistant":
            n_in = tokens(field_of(msg, "extra.response.usage.prompt_tokens"), where,
                          "extra.response.usage.prompt_tokens")
            n_out = tokens(field_of(msg, "extra.response.usage.completion_tokens"), where,
                           "extra.response.usage.completion_tokens")
            if n_in is None or n_out is None:
                n_in, n_out = max(1, base + estimate_tokens(chars)), estimate_tokens(len(text))
                estimated += 1
            base, chars = n_in + n_out, -len(text)
            created = field_of(msg, "extra.response.created")
            ts = unix_time(created if created is not None else field_of(msg, "extra.timestamp"),
                           where, "extra.response.created")
            t0 = ts if t0 is None else t0
            t = None if ts is None or t0 is None else ts - t0
            if t is not None and t < prev_t:
                raise TraceFormatError(f"{where}: field 'extra.response.created' goes back in "
                                       f"time ({t:.3f} s after {prev_t:.3f} s)")
            untimed += t is None
            prev_t = prev_t if t is None else t
            steps.append(AgentStep("llm", prev_t, n_in, n_out))
            tool = "bash" if msg.get("tool_calls") else command_verb(text)
            steps.append(AgentStep("tool", tool=tool))
        chars += len(text)
    while steps and steps[-1].kind == "tool":
        steps.pop()
    if not steps:
        raise TraceFormatError(f"{label}: field 'messages' holds no assistant message")
    return AgentSession(session_id=_session_id(obj, label), agent_type="mini-swe-agent", t0=t0,
                        steps=tuple(steps), untimed_calls=untimed, estimated_calls=estimated)


def read_mini_swe_agent(path: Path, *, name: str = "mini-swe-agent",
                        skip_bad_lines: bool = False, limit: int | None = None) -> Trace:
    """mini-swe-agent trajectories from a file or a directory of ``*.traj.json`` files."""
    return read_sessions(Path(path), parse_mini_swe_agent, PATTERNS, name=name,
                         skip_bad_lines=skip_bad_lines, limit=limit)


__all__ = ["PATTERNS", "command_verb", "parse_mini_swe_agent", "read_mini_swe_agent"]
