"""The framework-free core: metadata shapes, session traces, the feed, framework detection."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from saga.aeg.errors import SagaError
from saga.aeg.inference import PatternInference
from saga.aeg.steps import LLMStep, ParallelStep, ToolStep
from saga.integrations import (
    FRAMEWORKS,
    FrameworkNotInstalledError,
    IntegrationError,
    RequestMetadata,
    SessionTrace,
    WorkflowFeed,
    WorkflowHint,
    estimate_tokens,
    framework_status,
    require,
)
from saga.integrations import frameworks as fw
from saga.integrations.metadata import MetadataError


def test_metadata_leaves_out_what_the_engine_assumes() -> None:
    m = RequestMetadata("s1")
    assert m.extra_args() == {"saga": {"session_id": "s1"}}
    full = RequestMetadata("s1", "acme", "coder", "llm@tool:grep", "grep", 1.5, True, 30.0, 0.9)
    assert full.vllm_xargs() == {
        "saga_session_id": "s1", "saga_tenant_id": "acme", "saga_agent_type": "coder",
        "saga_aeg_node": "llm@tool:grep", "saga_pending_tool": "grep",
        "saga_tool_latency_s": 1.5, "saga_final": True, "saga_deadline_s": 30.0,
        "saga_reuse_prob": 0.9}
    assert full.extra_args({"x": 1})["x"] == 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"session_id": ""}, "session_id"),
    ({"session_id": "s", "tenant_id": ""}, "tenant_id"),
    ({"session_id": "s", "pending_tool": 7}, "pending_tool"),
    ({"session_id": "s", "final": 1}, "final"),
    ({"session_id": "s", "tool_latency_s": -1.0}, "tool_latency_s"),
    ({"session_id": "s", "reuse_prob": 1.5}, "reuse_prob"),
    ({"session_id": "s", "tool_latency_s": True}, "tool_latency_s"),
    ({"session_id": "s", "prefetch": True}, "prefetch"),
])
def test_bad_metadata_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(MetadataError, match=field) as err:
        RequestMetadata(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field and isinstance(err.value, SagaError)


def test_a_blank_hint_is_no_hint() -> None:
    """Hints may be sent as "" by clients that always send every key; they mean None."""
    m = RequestMetadata("s", agent_type="", aeg_node="", pending_tool="")
    assert m == RequestMetadata("s") and m.agent_type is m.aeg_node is m.pending_tool is None


def test_session_steps_nodes_and_latency() -> None:
    s = SessionTrace("s", "coder", "test")
    assert s.next_llm_node() == "llm@start"
    c = s.llm_started(0.0, 100)
    s.llm_finished(c, 1.0, output_tokens=10, tool_calls=["grep"])
    t = s.tool_started("grep", 1.0)
    assert s.tool_calls[0].duration_s is None
    s.tool_finished(t, 3.5)
    assert s.next_llm_node() == "llm@tool:grep" and s.last_tool_latency() == 2.5
    z = s.tool_started("noop", 3.5)
    s.tool_finished(z, 3.5)  # measured as zero: saga-aeg fits positive durations only
    assert s.steps() == [LLMStep(100, 10), ToolStep("grep", 2.5), ToolStep("noop", None)]
    s.finish(4.0)
    assert s.outcome == "finished" and s.duration_s == 4.0
    with pytest.raises(IntegrationError, match="finished"):
        s.tool_started("late", 5.0)
    assert s.to_dict()["steps"][1] == {"kind": "tool", "name": "grep", "duration_s": 2.5}


def test_estimate_tokens() -> None:
    assert [estimate_tokens(x) for x in ("", "abc", "abcd", "abcde")] == [0, 1, 1, 2]


def test_feed_learns_finished_tasks_only_and_tells_listeners() -> None:
    feed = WorkflowFeed(PatternInference(cold_start_tasks=1))
    seen: list[str] = []
    feed.subscribe(lambda s: seen.append(s.outcome))
    ok = feed.start_session("a", "test", 0.0, session_id="one")
    with pytest.raises(IntegrationError, match="already running"):
        feed.start_session("a", "test", 0.0, session_id="one")
    c = ok.llm_started(0.0, 5)
    ok.llm_finished(c, 1.0, output_tokens=1)
    feed.finish_session(ok, 1.0)
    feed.finish_session(ok, 2.0)  # closing twice is harmless
    bad = feed.start_session("a", "test", 0.0)
    bad.llm_started(0.0, 5)
    feed.finish_session(bad, 1.0, failed=True)
    assert seen == ["finished", "failed"]
    assert feed.inference.n_tasks("a") == 1 and not feed.active_sessions
    assert [s.outcome for s in feed.sessions] == ["finished", "failed"]


def test_feed_admits_a_hint_once_and_predicts_declared_tools_only() -> None:
    feed = WorkflowFeed()
    s = feed.start_session("b", "test", 0.0)
    # The generic prior's tool has no name: nothing is predicted rather than a made-up name.
    assert feed.metadata(s).pending_tool is None
    hint = WorkflowHint("c", tools=("search",))
    session = feed.start_session("c", "test", 0.0, hint=hint)
    feed.admit(hint)
    assert feed.inference.hint("c") is hint
    assert feed.metadata(session).pending_tool == "search"
    assert feed.metadata(session, final=True).pending_tool is None
    assert feed.predict_pending_tool("c", "llm@nowhere") is None
    with pytest.raises(IntegrationError, match="agent_type"):
        feed.start_session("d", "test", 0.0, hint=hint)
    with pytest.raises(IntegrationError, match="keep"):
        WorkflowFeed(keep=0)


def test_framework_status_of_the_installed_frameworks() -> None:
    for name in FRAMEWORKS:
        status = framework_status(name)
        assert status.attachable, status.reason
        assert all(v is not None for v in status.versions.values())
    with pytest.raises(IntegrationError, match="unknown framework"):
        framework_status("haystack")


def test_missing_or_unsupported_framework_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = fw._installed
    monkeypatch.setattr(fw, "_installed",
                        lambda d: None if d == "crewai" else "0.6.0" if d == "langchain-core"
                        else real(d))
    with pytest.raises(FrameworkNotInstalledError,
                       match=r"crewai is not installed.*saga-integrations\[crewai\]"):
        require("crewai")
    with pytest.raises(FrameworkNotInstalledError, match=r"0\.6\.0 is outside the supported"):
        require("langchain")
    assert fw.in_range("1.6.1rc1", "1.6.1", "2") and not fw.in_range("2.0", "1.0", "2")


def test_importing_the_adapters_needs_no_framework() -> None:
    """In a fresh interpreter where every framework import fails, the package and all adapter
    modules import, and attach() says which extra to install."""
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in {'langchain', 'langchain_core', 'langgraph',
                                          'autogen_agentchat', 'autogen_core', 'crewai'}:
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        import saga.integrations, saga.integrations.langchain, saga.integrations.autogen
        import saga.integrations.crewai
        from saga.integrations import FrameworkNotInstalledError
        for mod, args in ((saga.integrations.langchain, ()), (saga.integrations.crewai, ()),
                          (saga.integrations.autogen, (object(),))):
            try:
                mod.attach(*args)
            except FrameworkNotInstalledError as e:
                assert 'pip install' in str(e) and 'saga-integrations[' in str(e), e
            else:
                raise SystemExit('attach did not fail')
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_reply_asking_for_several_tools_or_sub_agents_is_one_fan_out() -> None:
    s = SessionTrace("s", "orchestrator", "test")
    c = s.llm_started(0.0, 100)
    s.llm_finished(c, 1.0, output_tokens=10, tool_calls=("search", "coder"))
    a = s.tool_started("search", 1.0)
    b = s.tool_started("coder", 1.0, agent=True)
    s.tool_finished(a, 3.0)
    assert s.last_tool_latency() is None  # the sub-agent is still running: no join yet
    s.tool_finished(b, 9.0)
    assert s.last_tool_latency() == 8.0
    assert s.next_llm_node() == "llm@par:search+@coder"
    assert s.steps()[1] == ParallelStep((ToolStep("search", 2.0),), (ToolStep("coder", 8.0),))
    # A name that cannot spell a fan-out id is recorded call by call.
    t = SessionTrace("t", "x", "test")
    c = t.llm_started(0.0, 100)
    t.llm_finished(c, 1.0, output_tokens=10, tool_calls=("a+b", "c"))
    for name in ("a+b", "c"):
        t.tool_finished(t.tool_started(name, 1.0), 2.0)
    assert t.steps()[1:] == [ToolStep("a+b", 1.0), ToolStep("c", 1.0)]
    # A reply that asked for two tools of which one ran is that one call.
    u = SessionTrace("u", "x", "test")
    c = u.llm_started(0.0, 100)
    u.llm_finished(c, 1.0, output_tokens=10, tool_calls=("a", "b"))
    u.tool_finished(u.tool_started("a", 1.0), 2.0)
    assert u.steps()[1:] == [ToolStep("a", 1.0)] and u.last_tool_latency() == 1.0
