"""Fuzzed trace files: random bytes, non-UTF-8, non-JSON, wrong types, huge and negative
numbers, NaN, nulls. A parser either returns a trace that keeps its invariants or raises
`TraceFormatError` naming the line (and, for a JSON object, the field); with
``skip_bad_lines`` it never raises and counts every line it left out. Nulls in timings (which
the agent format allows) have a documented fallback."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.policy.errors import TraceFormatError
from saga.policy.replay import replay_policies
from saga.policy.traces import (
    MAX_BLOCK_ID,
    Trace,
    parse_agent,
    parse_mooncake,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSERS = {"mooncake": parse_mooncake, "agent": parse_agent}
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
AGENT_FIELDS = ("session_id", "t0_unix", "steps", "kind", "input_tokens", "output_tokens",
                "t_start", "name", "agent")

huge = st.integers(min_value=-(10**30), max_value=10**30) | st.sampled_from(
    [2**53, 2**53 + 1, 2**63, -(2**63), 10**400])
weird: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), huge, st.floats(), st.text(max_size=5),
    st.just(""), st.just([]), st.just({}), st.just("\ud800"))


def _dump(obj: Any) -> str:
    """JSON as Python writes it (NaN, Infinity; huge ints as digits; lone surrogates escaped)."""
    return json.dumps(obj)


def _blank(line: str | bytes) -> bool:
    return not line.strip()


def _check_trace(trace: Trace, lines: list[Any]) -> None:
    """Invariants of any parsed trace."""
    arrivals = [r.arrival_s for r in trace.requests]
    assert all(math.isfinite(a) and a >= 0 for a in arrivals)
    assert arrivals == sorted(arrivals)
    assert [r.index for r in trace.requests] == list(range(len(trace.requests)))
    for r in trace.requests:
        assert r.input_tokens >= 0 and r.output_tokens >= 0
        assert all(0 <= h <= MAX_BLOCK_ID for h in r.block_hashes)
        assert len(r.block_hashes) * r.block_tokens <= r.input_tokens + r.block_tokens
    for lineno, reason in trace.skipped:
        assert reason.startswith(f"line {lineno}:")
        assert not _blank(lines[lineno - 1])
    if trace.sessions:  # agent: calls of a session keep their order
        for s in trace.sessions:
            calls = [r.call_index for r in trace.requests if r.session_id == s.session_id]
            assert calls == sorted(calls)


def _parse_all_ways(fmt: str, lines: list[Any]) -> None:
    parser = PARSERS[fmt]
    try:
        trace = parser(lines)
    except TraceFormatError as exc:
        m = re.match(r"line (\d+):", str(exc))
        assert m is not None, exc
        assert not _blank(lines[int(m.group(1)) - 1])
    else:
        _check_trace(trace, lines)
        assert not trace.skipped
    lenient = parser(lines, skip_bad_lines=True)
    _check_trace(lenient, lines)
    kept = len(lenient.sessions) if fmt == "agent" else len(lenient.requests)
    assert kept + len(lenient.skipped) == sum(not _blank(x) for x in lines)


@FUZZ
@given(fmt=st.sampled_from(sorted(PARSERS)),
       lines=st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode),
                      max_size=5))
def test_random_bytes_never_escape_as_anything_but_trace_errors(fmt: str,
                                                                 lines: list[bytes]) -> None:
    _parse_all_ways(fmt, lines)


def _or_bad(draw: st.DrawFn, good: st.SearchStrategy[Any]) -> Any:
    """Mostly a valid value, one time in ten anything at all."""
    return draw(weird) if draw(st.integers(0, 9)) == 0 else draw(good)


def _mooncake_record(draw: st.DrawFn) -> dict[str, Any]:
    n_in = _or_bad(draw, st.integers(0, 3000))
    good_len = -(-n_in // 512) if isinstance(n_in, int) and 0 <= n_in < 10**6 else 1
    rec: dict[str, Any] = {
        "timestamp": _or_bad(draw, st.integers(0, 10**6)),
        "input_length": n_in,
        "output_length": _or_bad(draw, st.integers(0, 100)),
        "hash_ids": _or_bad(draw, st.lists(st.integers(0, 50), min_size=good_len,
                                           max_size=good_len) | st.lists(weird, max_size=3)),
    }
    if draw(st.integers(0, 9)) == 0:
        del rec[draw(st.sampled_from(MOONCAKE_FIELDS))]
    return rec


def _agent_step(draw: st.DrawFn, llm: bool) -> dict[str, Any]:
    if not llm:
        return {"kind": _or_bad(draw, st.just("tool")), "name": _or_bad(draw, st.just("grep")),
                "duration_s": None}
    step = {"kind": "llm", "input_tokens": _or_bad(draw, st.integers(0, 3000)),
            "output_tokens": _or_bad(draw, st.integers(0, 50)),
            "t_start": _or_bad(draw, st.none() | st.floats(0, 100))}
    if draw(st.integers(0, 4)) == 0:
        del step["t_start"]
    return step


def _agent_record(draw: st.DrawFn) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "session_id": _or_bad(draw, st.sampled_from(["s1", "s2", "s3"])),
        "agent": _or_bad(draw, st.none() | st.just("coder")),
        "t0_unix": _or_bad(draw, st.none() | st.floats(0, 1e9)),
        "steps": [_agent_step(draw, k % 2 == 0) for k in range(draw(st.integers(0, 5)))],
    }
    if draw(st.integers(0, 9)) == 0:
        del rec[draw(st.sampled_from(["t0_unix", "agent", "steps"]))]
    return rec


@st.composite
def json_lines(draw: st.DrawFn, fmt: str) -> list[str]:
    make = _mooncake_record if fmt == "mooncake" else _agent_record
    return [_dump(make(draw)) if draw(st.integers(0, 5)) else draw(st.sampled_from(
        ["", "null", "[1]", "{", '{"a": NaN}', "1" * 5000, "[" * 5000]))
        for _ in range(draw(st.integers(1, 5)))]


def _names_a_field(message: str, fields: tuple[str, ...]) -> bool:
    return any(f"'{f}'" in message for f in fields) or any(
        s in message for s in ("not valid JSON", "expected a JSON object", "UTF-8"))


@FUZZ
@given(lines=json_lines("mooncake"))
def test_mooncake_records_with_wrong_types_and_numbers(lines: list[str]) -> None:
    _parse_all_ways("mooncake", lines)
    for lineno, reason in parse_mooncake(lines, skip_bad_lines=True).skipped:
        assert _names_a_field(reason, MOONCAKE_FIELDS), (lineno, reason)


@FUZZ
@given(lines=json_lines("agent"))
def test_agent_records_with_wrong_types_nulls_and_numbers(lines: list[str]) -> None:
    _parse_all_ways("agent", lines)
    trace = parse_agent(lines, skip_bad_lines=True)
    for _lineno, reason in trace.skipped:
        assert _names_a_field(reason, AGENT_FIELDS), reason
    if trace.requests:
        # What parsed also replays (duplicate session ids, zero-token calls, fallback timings).
        replay_policies(trace, ["lru", "walru"], capacity_blocks=4)


def test_null_timings_fall_back_to_the_previous_call_and_session() -> None:
    def session(sid: str, t0: float | None, starts: list[float | None]) -> str:
        steps: list[dict[str, Any]] = []
        for t in starts:
            steps += [{"kind": "llm", "input_tokens": 600, "output_tokens": 1, "t_start": t},
                      {"kind": "tool", "name": "grep", "duration_s": None}]
        return json.dumps({"session_id": sid, "t0_unix": t0, "steps": steps})

    t = parse_agent([session("a", None, [0.0, 5.0]), session("b", 100.0, [None, 2.0, None]),
                     session("c", None, [None])])
    got = [(r.session_id, r.call_index, r.arrival_s) for r in t.requests]
    # "a" has no t0: it starts with the first session that has one (b, at 100).
    # b's first call has no t_start: at its start; its third: right after its second.
    # "c" has no t0: it starts with the session before it (b).
    assert got == [("a", 0, 0.0), ("b", 0, 0.0), ("c", 0, 0.0), ("b", 1, 2.0), ("b", 2, 2.0),
                   ("a", 1, 5.0)]
    assert t.sessions[0].t0 is None and t.sessions[1].t0 == 100.0


@pytest.mark.parametrize(("line", "needle"), [
    (b'{"timestamp": 1e400}', "line 1: field 'timestamp' must be an integer"),
    (f'{{"timestamp": {10**30}, "input_length": 0, "output_length": 0, "hash_ids": []}}',
     "line 1: field 'timestamp' must be an integer >= 0 and <= 2^53"),
    (f'{{"timestamp": 0, "input_length": {10**400}, "output_length": 0, "hash_ids": []}}',
     "line 1: field 'input_length'"),
    ('{"timestamp": 0, "input_length": 1, "output_length": 0, "hash_ids": [-1]}',
     "line 1: field 'hash_ids' must hold integers in [0, 2^63)"),
    (b"\xff\xfe{}", "line 1: not valid UTF-8 (byte 0xff at column 1)"),
    ("[" * 100_000, "line 1: not valid JSON"),
    ("1" * 5000, "line 1: not valid JSON"),
])
def test_mooncake_defects_stay_fixed(line: str | bytes, needle: str) -> None:
    with pytest.raises(TraceFormatError) as err:
        parse_mooncake([line])
    assert needle in str(err.value)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"t0_unix": float("nan")}, "field 't0_unix' must be a finite number"),
    ({"t0_unix": 10**400}, "field 't0_unix' must be a finite number"),
    ({"session_id": "\ud800"}, "field 'session_id' holds an unpaired UTF-16 surrogate"),
    ({"steps": [{"kind": "llm", "input_tokens": 10**12, "output_tokens": 0, "t_start": 0}]},
     "steps[0]: fields 'input_tokens' and 'output_tokens' must be integers >= 0 and <= 2^24"),
    ({"steps": [{"kind": "llm", "input_tokens": 1, "output_tokens": 0, "t_start": float("inf")}]},
     "steps[0]: field 't_start' must be a finite number"),
    ({"steps": [{"kind": "llm", "input_tokens": 1, "output_tokens": 0, "t_start": 5},
                {"kind": "llm", "input_tokens": 1, "output_tokens": 0, "t_start": 1}]},
     "steps[1]: field 't_start' goes back in time"),
    ({"agent": 7}, "field 'agent' must be a non-empty string"),
    ({"session_id": "dup"}, "field 'session_id' 'dup' is already used on line 1"),
])
def test_agent_defects_stay_fixed(fields: dict[str, Any], needle: str) -> None:
    rec: dict[str, Any] = {"session_id": "s", "t0_unix": 0.0, "steps": [
        {"kind": "llm", "input_tokens": 1, "output_tokens": 0, "t_start": 0.0}], **fields}
    first = json.dumps({"session_id": "dup", "t0_unix": 0.0, "steps": [
        {"kind": "llm", "input_tokens": 1, "output_tokens": 0, "t_start": 0.0}]})
    with pytest.raises(TraceFormatError) as err:
        parse_agent([first, json.dumps(rec)])
    assert "line 2" in str(err.value) and needle in str(err.value)
