"""Reading trajectory files: one JSON document per run, in a file, a JSONL file or a directory.

Agent frameworks write one trajectory JSON file per run (Harbor: ``<trial>/agent/trajectory.json``;
mini-swe-agent: ``<instance>.traj.json``). The readers of those formats (``trace_atif``,
``trace_miniswe``) share this module: listing the documents, decoding each with errors that name
the file (or line) and field, skipping bad ones on request, and a content digest of the whole
trace so a stored bench run can say which trace it ran.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saga.policy.errors import TraceFormatError
from saga.policy.traces import (
    MAX_AGENT_TOKENS,
    AgentSession,
    Trace,
    check_unique_session,
    sessions_trace,
)

CHARS_PER_TOKEN = 4
"""Token estimate where a trajectory recorded no counts: characters / 4 (on code-heavy agent
text this undercounts by about 20 %; see the agent-trace README)."""


def estimate_tokens(chars: int) -> int:
    """Tokens of ``chars`` characters of text: ceil(chars / 4)."""
    return -(-chars // CHARS_PER_TOKEN)


def documents(path: Path, patterns: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """``(label, raw JSON)`` of every document under ``path``, in a stable order.

    A directory: every file matching the first of ``patterns`` that matches any, searched
    recursively, sorted by relative path (label: that path). A ``.jsonl`` file: each non-blank
    line (label ``line N``). Any other file: the whole file, one document (label: its name)."""
    if path.is_dir():
        files: list[Path] = []
        for pat in patterns:
            files = sorted(p for p in path.rglob(pat) if p.is_file())
            if files:
                break
        for p in files:
            yield str(p.relative_to(path)), p.read_bytes()
    elif path.suffix == ".jsonl":
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield f"line {lineno}", line
    else:
        yield path.name, path.read_bytes()


def load_object(raw: bytes, label: str) -> dict[str, Any]:
    """A document's JSON object; bad UTF-8, bad JSON and non-objects name the document."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TraceFormatError(f"{label}: not valid UTF-8 (byte at offset {exc.start}); save "
                               "the trajectory as UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise TraceFormatError(f"{label}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{label}: expected a JSON object, got {type(obj).__name__}")
    return obj


def field_of(obj: Mapping[str, Any], dotted: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``; None where a level is absent or not an object."""
    cur: Any = obj
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def tokens(value: object, where: str, name: str) -> int | None:
    """A token count: None when null or absent, else an integer in [0, 2^24]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AGENT_TOKENS:
        raise TraceFormatError(f"{where}: field {name!r} must be an integer >= 0 and <= 2^24 "
                               f"or null, got {str(value)[:40]!r}")
    return value


def unix_time(value: object, where: str, name: str) -> float | None:
    """A timestamp as Unix seconds: an ISO 8601 string (no zone: UTC) or a number; None when
    null or absent."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and 0 <= value < 2**40:
            return float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return dt.timestamp()
    raise TraceFormatError(f"{where}: field {name!r} must be an ISO 8601 time, Unix seconds or "
                           f"null, got {str(value)[:40]!r}")


SessionParser = Callable[[dict[str, Any], str], AgentSession]


def read_sessions(path: Path, parse: SessionParser, patterns: tuple[str, ...], *, name: str,
                  skip_bad_lines: bool = False, limit: int | None = None) -> Trace:
    """Every document under ``path`` parsed into one session (``limit``: the first N).

    A bad document raises `TraceFormatError` naming it and the field, or with
    ``skip_bad_lines`` is counted in ``Trace.skipped`` (its 1-based number, the reason)."""
    sessions: list[AgentSession] = []
    skipped: list[tuple[int, str]] = []
    seen: dict[str, str] = {}
    for k, (label, raw) in enumerate(documents(path, patterns), start=1):
        if limit is not None and len(sessions) >= limit:
            break
        try:
            session = parse(load_object(raw, label), label)
            check_unique_session(session, seen, label)
        except TraceFormatError as exc:
            if not skip_bad_lines:
                raise
            skipped.append((k, str(exc)))
            continue
        sessions.append(session)
    if not sessions and not skipped:
        raise TraceFormatError(f"{str(path)!r} holds no trajectory (looked for "
                               f"{' or '.join(patterns)})")
    return sessions_trace(sessions, name=name, skipped=skipped)


def trace_digest(path: Path) -> str:
    """SHA-256 of a trace's content: of the file, or of a directory's files (relative path and
    bytes of each, in sorted order), so that a changed or moved file changes it."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    else:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


__all__ = ["CHARS_PER_TOKEN", "documents", "estimate_tokens", "field_of", "load_object",
           "read_sessions", "tokens", "trace_digest", "unix_time"]
