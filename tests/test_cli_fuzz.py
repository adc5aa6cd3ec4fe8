"""No Python traceback from the `saga` CLI, whatever the trace file or option values.

`saga replay` is driven with fuzzed trace files (random bytes, non-UTF-8, broken JSON, wrong
types, huge and negative numbers, NaN, nulls, rich-markup look-alikes) and fuzzed option
values; every run ends with exit 0 (a replay) or 2 (``error: ...`` / typer's usage error) and
no uncaught exception. With ``--skip-bad-lines`` the count it prints is the parser's count.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from saga.cli.main import app
from saga.policy.errors import TraceFormatError
from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path, parse_agent, parse_mooncake

runner = CliRunner()
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PARSERS = {"mooncake": parse_mooncake, "agent": parse_agent}
GOOD = {
    "mooncake": [line.encode() for line in bundled_trace_path().read_text().splitlines()[:4]],
    "agent": [line.encode() for line in
              bundled_trace_path(BUNDLED_AGENT).read_text().splitlines()[:2]],
}
odd_values: st.SearchStrategy[Any] = st.sampled_from(
    [None, -1, 10**30, 10**400, 1.5, "NaN", "[/x]", "", [], {}, True])


def _invoke(args: list[str]) -> Any:
    res = runner.invoke(app, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        args, repr(res.exception), res.output)
    assert res.exit_code in (0, 2), (args, res.exit_code, res.output)
    assert "Traceback" not in res.output
    return res


@st.composite
def trace_lines(draw: st.DrawFn, fmt: str) -> list[bytes]:
    """Good lines of the format, some mutated: a field set to an odd value, bytes cut or
    replaced, or the line swapped for random bytes."""
    lines = list(draw(st.lists(st.sampled_from(GOOD[fmt]), min_size=1, max_size=4)))
    for i in range(len(lines)):
        how = draw(st.integers(0, 4))
        if how == 1:
            obj = json.loads(lines[i])
            obj[draw(st.sampled_from(sorted(obj)))] = draw(odd_values)
            lines[i] = json.dumps(obj).encode()
        elif how == 2:
            cut = draw(st.integers(0, len(lines[i])))
            # A line holds no newline: one inside would make it two lines of the file.
            junk = draw(st.binary(max_size=4)).replace(b"\n", b" ")
            lines[i] = lines[i][:cut] + junk + lines[i][cut + 1:]
        elif how == 3:
            lines[i] = draw(st.binary(max_size=30)).replace(b"\n", b" ")
    return lines


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(PARSERS)), skip=st.booleans())
def test_replay_of_fuzzed_trace_files(data: st.DataObject, fmt: str, skip: bool) -> None:
    lines = data.draw(trace_lines(fmt))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace[red].jsonl"  # a name that is rich markup, too
        path.write_bytes(b"\n".join(lines) + b"\n")
        args = ["replay", str(path), "--format", fmt, "--policies", "lru",
                "--capacity-blocks", "8"]
        res = _invoke(args + (["--skip-bad-lines"] if skip else []))
    try:
        trace = PARSERS[fmt](lines, skip_bad_lines=skip)
    except TraceFormatError as exc:
        assert res.exit_code == 2 and str(exc).split(":")[0] in res.output
        return
    if not trace.requests:
        assert res.exit_code == 2 and "holds no valid request" in res.output
        return
    assert res.exit_code == 0, res.output
    assert f"trace[red].jsonl: {len(trace.requests):,} requests" in res.output
    if trace.skipped:
        assert f"{len(trace.skipped)} malformed line(s) skipped" in res.output


option_text = st.one_of(st.text(max_size=12), st.sampled_from(
    ["0", "-1", "1e3", "nan", "inf", "10" * 30, "1,,2", "[/x]", "٣", "lru,[bold]", ",", " "]))


@FUZZ
@given(option=st.sampled_from(["--capacity-blocks", "--policies", "--format", "--dram-blocks",
                               "--limit"]), value=option_text)
def test_replay_with_fuzzed_option_values(option: str, value: str) -> None:
    _invoke(["replay", "--limit", "5", "--policies", "lru", "--capacity-blocks", "8",
             option, value])


@pytest.mark.parametrize("args", [
    ["replay", "--capacity-blocks", str(10**20), "--limit", "5"],  # was a 745 GiB allocation
    ["replay", "--dram-blocks", str(10**20), "--limit", "5"],
    ["replay", "--policies", "[/foo]", "--limit", "5"],  # was rich's MarkupError
    ["replay", "--format", "[/x]"],
    ["replay", "/nonexistent/[/x].jsonl"],
])
def test_known_cli_defects_stay_fixed(args: list[str]) -> None:
    assert _invoke(args).exit_code == 2


def test_non_utf8_trace_is_a_line_error_or_skipped(tmp_path: Path) -> None:
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(GOOD["mooncake"][0] + b"\n" + b'{"x": "caf\xe9"}\n' + GOOD["mooncake"][1] + b"\n")
    res = _invoke(["replay", str(p), "--policies", "lru", "--capacity-blocks", "8"])
    assert res.exit_code == 2 and "line 2: not valid UTF-8" in res.output
    res = _invoke(["replay", str(p), "--policies", "lru", "--capacity-blocks", "8",
                   "--skip-bad-lines"])
    assert res.exit_code == 0 and "1 malformed line(s) skipped" in res.output
    assert "2 requests" in res.output


def test_agent_trace_with_null_timings_replays(tmp_path: Path) -> None:
    """A real session with its timings nulled replays (the fallback), not a stop at line 1."""
    sessions = [json.loads(x) for x in GOOD["agent"]]
    sessions[0]["t0_unix"] = None
    for st_ in sessions[1]["steps"]:
        if st_["kind"] == "llm":
            st_["t_start"] = None
    p = tmp_path / "nulls.jsonl"
    p.write_text("\n".join(json.dumps(s) for s in sessions) + "\n")
    res = _invoke(["replay", str(p), "--format", "agent", "--policies", "lru",
                   "--capacity-blocks", "64"])
    assert res.exit_code == 0, res.output
    assert "malformed" not in res.output
