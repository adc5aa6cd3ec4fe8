"""Trace readers for `saga replay` and `saga bench --trace`: ATIF, mini-swe-agent, the agent
format's null timings, and one registry of formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saga.policy.errors import SagaConfigError, TraceFormatError
from saga.policy.trace_files import trace_digest
from saga.policy.traces import TRACE_FORMATS, read_trace


def atif(sid: str, calls: int = 3, *, timed: bool = True, metrics: bool = True
         ) -> dict[str, Any]:
    """An ATIF v1.4 trajectory: a system and a user step, then ``calls`` agent steps."""
    steps: list[dict[str, Any]] = [
        {"step_id": 1, "source": "system", "message": "You are an agent. " * 20},
        {"step_id": 2, "source": "user", "message": "Fix the bug in utils.py"}]
    for k in range(calls):
        st: dict[str, Any] = {
            "step_id": k + 3, "source": "agent", "message": f"step {k}",
            "timestamp": f"2025-10-11T10:30:{10 + 7 * k:02d}Z" if timed else None,
            "tool_calls": [{"tool_call_id": f"c{k}", "function_name": "bash" if k else "grep",
                            "arguments": {"cmd": "ls"}}],
            "observation": {"results": [{"source_call_id": f"c{k}", "content": "x" * 800}]}}
        if metrics:
            st["metrics"] = {"prompt_tokens": 1000 + 300 * k, "completion_tokens": 50,
                             "cached_tokens": 0}
        steps.append(st)
    return {"schema_version": "ATIF-v1.4", "session_id": sid,
            "agent": {"name": "terminus-2", "version": "1.0"}, "steps": steps}


def harbor_dir(root: Path, trajs: list[dict[str, Any]]) -> Path:
    """A Harbor job folder: ``<trial>/agent/trajectory.json`` beside config and result files."""
    for i, t in enumerate(trajs):
        trial = root / f"trial-{i}"
        (trial / "agent").mkdir(parents=True)
        (trial / "agent" / "trajectory.json").write_text(json.dumps(t))
        (trial / "result.json").write_text('{"reward": 1}')
    return root


def test_atif_file_maps_agent_steps_to_calls_with_recorded_tokens(tmp_path: Path) -> None:
    p = tmp_path / "trajectory.json"
    p.write_text(json.dumps(atif("run-1")))
    t = read_trace(p, "atif")
    (s,) = t.sessions
    assert s.session_id == "run-1" and s.agent_type == "terminus-2" and s.estimated_calls == 0
    llm = [st for st in s.steps if st.kind == "llm"]
    assert [st.input_tokens for st in llm] == [1000, 1300, 1600]
    assert [st.t_start for st in llm] == [0.0, 7.0, 14.0]
    assert [st.tool for st in s.steps if st.kind == "tool"] == ["grep", "bash"]
    assert all(st.duration_s is None for st in s.steps if st.kind == "tool")
    assert [r.input_tokens for r in t.requests] == [1000, 1300, 1600]
    assert "tool durations recorded for 0 of 2 tool calls" in t.notes


def test_atif_directory_reads_each_harbor_trajectory_once(tmp_path: Path) -> None:
    root = harbor_dir(tmp_path / "job", [atif(f"run-{i}", 2 + i) for i in range(3)])
    t = read_trace(root, "atif")
    assert [s.session_id for s in t.sessions] == ["run-0", "run-1", "run-2"]
    assert len(t.requests) == 2 + 3 + 4
    assert len(read_trace(root, "atif", limit=2).sessions) == 2
    before = trace_digest(root)
    (root / "trial-1" / "agent" / "trajectory.json").write_text(json.dumps(atif("run-1", 5)))
    assert trace_digest(root) != before


def test_atif_null_timestamps_and_missing_metrics_are_named_fallbacks(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(atif("a", timed=False, metrics=False)) + "\n"
                 + json.dumps(atif("b")) + "\n")
    t = read_trace(p, "atif")
    a = t.sessions[0]
    assert a.t0 is None and a.untimed_calls == 3 and a.estimated_calls == 3
    est = [st.input_tokens for st in a.steps if st.kind == "llm"]
    assert est[0] > 0 and est == sorted(est)  # the estimated prompt grows with the history
    text = " | ".join(t.notes)
    assert "start time missing in 1 of 2 sessions" in text
    assert "start time missing for 3 of 6 LLM calls" in text
    assert "token counts estimated (characters / 4) for 3 of 6 LLM calls" in text


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["steps"][3]["metrics"].update(prompt_tokens="many"),
     "steps[3]: field 'metrics.prompt_tokens' must be an integer"),
    (lambda d: d["steps"][2].update(source="robot"), "steps[2]: field 'source' must be one of"),
    (lambda d: d["steps"][3].update(timestamp="yesterday"), "steps[3]: field 'timestamp'"),
    (lambda d: d["steps"][3].update(timestamp="2025-10-11T10:29:00Z"), "goes back in time"),
    (lambda d: d.pop("session_id"), "field 'session_id' must be a non-empty string"),
])
def test_atif_bad_line_names_line_and_field_or_is_skipped(tmp_path: Path, edit: Any,
                                                         needle: str) -> None:
    bad = atif("bad")
    edit(bad)
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in (atif("ok-1"), bad, atif("ok-2"))) + "\n")
    with pytest.raises(TraceFormatError) as err:
        read_trace(p, "atif")
    assert str(err.value).startswith("line 2: ") and needle in str(err.value)
    t = read_trace(p, "atif", skip_bad_lines=True)
    assert [s.session_id for s in t.sessions] == ["ok-1", "ok-2"]
    assert [n for n, _ in t.skipped] == [2] and needle in t.skipped[0][1]


def test_atif_bad_file_in_a_directory_is_named(tmp_path: Path) -> None:
    root = harbor_dir(tmp_path / "job", [atif("a"), atif("a")])
    with pytest.raises(TraceFormatError, match=r"trial-1/agent/trajectory.json: field "
                                               r"'session_id' 'a' is already used"):
        read_trace(root, "atif")
    (root / "trial-0" / "agent" / "trajectory.json").write_bytes(b"{not json")
    t = read_trace(root, "atif", skip_bad_lines=True)
    assert len(t.sessions) == 1 and "not valid JSON" in t.skipped[0][1]


def miniswe(with_usage: bool = True) -> dict[str, Any]:
    def reply(k: int, text: str) -> dict[str, Any]:
        extra = {"response": {"created": 1763510516 + 5 * k,
                              "usage": {"prompt_tokens": 1500 + 400 * k,
                                        "completion_tokens": 60}}}
        return {"role": "assistant", "content": text, **({"extra": extra} if with_usage else {})}
    return {"info": {"exit_status": "Submitted"}, "trajectory_format": "mini-swe-agent-1",
            "messages": [
                {"role": "system", "content": "system " * 200},
                {"role": "user", "content": "Please solve this issue: ..."},
                reply(0, "THOUGHT: look\n```bash\ncd /testbed && grep -rn foo .\n```"),
                {"role": "user", "content": "<output>" + "y" * 2000 + "</output>"},
                reply(1, "THOUGHT: test\n```bash\npython -m pytest tests/\n```"),
                {"role": "user", "content": "<output>ok</output>"},
                reply(2, "```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff\n```"),
            ]}


def test_mini_swe_agent_reads_usage_times_and_command_verbs(tmp_path: Path) -> None:
    d = tmp_path / "trajs" / "django__django-1"
    d.mkdir(parents=True)
    (d / "django__django-1.traj.json").write_text(json.dumps(miniswe()))
    t = read_trace(tmp_path / "trajs", "mini-swe-agent")
    (s,) = t.sessions
    assert s.session_id == "django__django-1" and s.estimated_calls == 0
    assert [(st.input_tokens, st.t_start) for st in s.steps if st.kind == "llm"] == [
        (1500, 0.0), (1900, 5.0), (2300, 10.0)]
    assert [st.tool for st in s.steps if st.kind == "tool"] == ["grep", "pytest"]


def test_mini_swe_agent_without_usage_estimates_and_says_so(tmp_path: Path) -> None:
    p = tmp_path / "x.traj.json"
    p.write_text(json.dumps(miniswe(with_usage=False)))
    t = read_trace(p, "mini-swe-agent")
    assert t.sessions[0].estimated_calls == 3 and t.sessions[0].t0 is None
    assert any("token counts estimated (characters / 4) for 3 of 3" in n for n in t.notes)


def test_agent_format_nulls_everywhere_fall_back_and_durations_are_read(tmp_path: Path) -> None:
    lines = [
        {"session_id": "s1", "t0_unix": None, "steps": [
            {"kind": "llm", "input_tokens": 900, "output_tokens": 10, "t_start": None},
            {"kind": "tool", "name": "pytest", "duration_s": 12.5},
            {"kind": "llm", "input_tokens": 1400, "output_tokens": 10, "t_start": None}]},
        {"session_id": "s2", "t0_unix": 100.0, "steps": [
            {"kind": "llm", "input_tokens": 900, "output_tokens": 10, "t_start": 0.0},
            {"kind": "tool", "name": "ls", "duration_s": None},
            {"kind": "llm", "input_tokens": 1400, "output_tokens": 10}]}]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    t = read_trace(p, "agent")
    assert t.sessions[0].steps[1].duration_s == 12.5 and t.sessions[1].steps[1].duration_s is None
    text = " | ".join(t.notes)
    assert "start time missing in 1 of 2 sessions" in text
    assert "start time missing for 3 of 4 LLM calls" in text
    assert "tool durations recorded for 1 of 2 tool calls" in text
    lines[1]["steps"][1]["duration_s"] = -1  # type: ignore[index]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(TraceFormatError, match=r"line 2: steps\[1\]: field 'duration_s' must"):
        read_trace(p, "agent")


def test_registry_names_every_format_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    assert set(TRACE_FORMATS) == {"agent", "atif", "mini-swe-agent", "mooncake"}
    assert not TRACE_FORMATS["mooncake"].sessions and TRACE_FORMATS["atif"].directories
    with pytest.raises(SagaConfigError, match="is a directory; --format agent reads one file"):
        read_trace(tmp_path, "agent")
    with pytest.raises(SagaConfigError, match="does not exist"):
        read_trace(tmp_path / "nope.json", "atif")
    with pytest.raises(TraceFormatError, match="holds no trajectory"):
        read_trace(tmp_path, "atif")
