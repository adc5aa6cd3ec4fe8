"""Trace parsing: schemas enforced with the line number and field, bundled data intact."""

from __future__ import annotations

import hashlib
import json

import pytest

from saga.policy.errors import SagaConfigError, TraceFormatError
from saga.policy.traces import (
    BUNDLED_AGENT,
    BUNDLED_MOONCAKE,
    bundled_trace_path,
    get_trace_format,
    parse_agent,
    parse_mooncake,
)

GOOD = '{"timestamp": 3000, "input_length": 1030, "output_length": 5, "hash_ids": [0, 7, 9]}'


def test_mooncake_record_fields_and_block_tokens() -> None:
    t = parse_mooncake([GOOD])
    (r,) = t.requests
    assert r.arrival_s == 3.0 and r.input_tokens == 1030 and r.block_hashes == (0, 7, 9)
    # 1030 tokens in 512-token blocks: two full, the last holds 1030 - 1024 = 6
    assert r.block_token_counts() == [512, 512, 6]
    assert t.block_refs == 3


@pytest.mark.parametrize(("line", "needle"), [
    ("{", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"input_length": 1, "output_length": 1, "hash_ids": [1]}', "missing field 'timestamp'"),
    ('{"timestamp": "0", "input_length": 1, "output_length": 1, "hash_ids": [1]}',
     "'timestamp' must be an integer"),
    ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": 1}',
     "'hash_ids' must be a list"),
    ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": ["a"]}',
     "'hash_ids' must hold integers"),
    ('{"timestamp": 0, "input_length": 1025, "output_length": 1, "hash_ids": [1, 2]}',
     "needs ceil(1025/512) = 3"),
    ('{"timestamp": -1, "input_length": 1, "output_length": 1, "hash_ids": [1]}', ">= 0"),
])
def test_mooncake_bad_line_names_line_and_field(line: str, needle: str) -> None:
    with pytest.raises(TraceFormatError) as err:
        parse_mooncake([GOOD, "", line])
    assert "line 3" in str(err.value) and needle in str(err.value)


def test_mooncake_time_going_back_is_an_error_or_skipped() -> None:
    back = GOOD.replace("3000", "0")
    with pytest.raises(TraceFormatError, match="line 2: field 'timestamp' goes back"):
        parse_mooncake([GOOD, back])
    t = parse_mooncake([GOOD, back, GOOD], skip_bad_lines=True)
    assert len(t.requests) == 2 and [ln for ln, _ in t.skipped] == [2]
    assert [r.index for r in t.requests] == [0, 1]


def test_limit_and_unknown_format() -> None:
    assert len(parse_mooncake([GOOD] * 5, limit=2).requests) == 2
    with pytest.raises(SagaConfigError, match="valid formats: agent, atif, mini-swe-agent, "
                                              "mooncake"):
        get_trace_format("csv")


def _session(sid: str, t0: float, steps: list[dict[str, object]]) -> str:
    return json.dumps({"session_id": sid, "agent": "a", "t0_unix": t0, "steps": steps})


def test_agent_sessions_interleave_by_time_and_extend_prefixes() -> None:
    a = _session("s1", 100.0, [
        {"kind": "llm", "input_tokens": 1100, "output_tokens": 5, "t_start": 0.0},
        {"kind": "tool", "name": "grep"},
        {"kind": "llm", "input_tokens": 1600, "output_tokens": 5, "t_start": 10.0},
        {"kind": "tool", "name": "submit"}])
    b = _session("s2", 105.0, [
        {"kind": "llm", "input_tokens": 600, "output_tokens": 5, "t_start": 0.0},
        {"kind": "tool", "name": "submit"}])
    t = parse_agent([a, b], block_tokens=512)
    assert [(r.session_id, r.arrival_s) for r in t.requests] == [
        ("s1", 0.0), ("s2", 5.0), ("s1", 10.0)]
    first, _, second = t.requests
    # full blocks only: 1100 // 512 = 2, 1600 // 512 = 3; the later call extends the prefix
    assert len(first.block_hashes) == 2 and second.block_hashes[:2] == first.block_hashes
    assert len(second.block_hashes) == 3
    assert first.pending_tool == "grep" and second.pending_tool == "submit"
    assert sum(second.block_token_counts()) == 3 * 512 <= second.input_tokens
    assert t.requests[1].block_hashes[0] not in first.block_hashes  # sessions do not share


@pytest.mark.parametrize(("steps", "needle"), [
    ([], "must start with an 'llm' step"),
    ([{"kind": "tool", "name": "x"}], "must start with an 'llm' step"),
    ([{"kind": "llm", "input_tokens": -1, "output_tokens": 1, "t_start": 0}], "steps[0]"),
    ([{"kind": "llm", "input_tokens": 1, "output_tokens": 1, "t_start": 0},
      {"kind": "tool"}], "steps[1]: field 'name'"),
    ([{"kind": "sleep"}], "field 'kind'"),
])
def test_agent_bad_record(steps: list[dict[str, object]], needle: str) -> None:
    with pytest.raises(TraceFormatError) as err:
        parse_agent([_session("s", 0.0, steps)])
    assert "line 1" in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize(("name", "sha256", "lines"), [
    (BUNDLED_MOONCAKE, "a84c73ade67ccecd1972e6d4d048178ae336380efcaa59bb7912161c8fc30ba2", 3000),
    (BUNDLED_AGENT, "64215c676956fe43dba7e5a2e000387e1138c2a23dc5fd8a461a967deb9fedf9", 120),
])
def test_bundled_traces_are_the_documented_bytes(name: str, sha256: str, lines: int) -> None:
    data = bundled_trace_path(name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256
    assert data.count(b"\n") == lines


def test_bundled_traces_parse() -> None:
    with bundled_trace_path().open() as fh:
        assert len(parse_mooncake(fh).requests) == 3000
    with bundled_trace_path(BUNDLED_AGENT).open() as fh:
        t = parse_agent(fh)
    assert len(t.sessions) == 120
    assert sum(1 for r in t.requests if r.pending_tool == "submit") >= 120
