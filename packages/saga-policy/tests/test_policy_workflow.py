"""SessionHinter: AEG position -> reuse hints, learned from completed tasks only."""

from __future__ import annotations

import math

from saga.aeg import PatternInference
from saga.aeg.steps import tool_node_id
from saga.policy.workflow import SessionHinter


def _run_task(h: SessionHinter, sid: str) -> None:
    h.observe_call(sid, 1000, 50, "grep")
    h.observe_call(sid, 1600, 50, "edit")
    h.observe_call(sid, 2200, 50, "submit")
    h.finish(sid, "coder")


def test_learned_aeg_says_submit_ends_reuse_and_tools_continue() -> None:
    h = SessionHinter(PatternInference(theta_conf=0.7, cold_start_tasks=30))
    for i in range(30):
        _run_task(h, f"s{i}")
    assert h.inference.aeg_source("coder") == "inferred"
    done = h.hint("coder", "submit")
    assert done.reuse_prob == 0.0 and math.isinf(done.steps_to_exec)
    busy = h.hint("coder", "grep")
    assert busy.reuse_prob == 1.0
    assert busy.steps_to_exec == 1.0  # the tool node's successor is the next LLM call


def test_cold_start_uses_the_prior_not_the_few_tasks_seen() -> None:
    h = SessionHinter(PatternInference(theta_conf=0.7, cold_start_tasks=30))
    for i in range(5):
        _run_task(h, f"s{i}")
    assert h.inference.aeg_source("coder") != "inferred"
    hint = h.hint("coder", "submit")
    assert 0.0 <= hint.reuse_prob <= 1.0


def test_session_end_and_unseen_tool() -> None:
    h = SessionHinter()
    assert h.hint("coder", None).reuse_prob == 0.0
    for i in range(31):
        _run_task(h, f"s{i}")
    unseen = h.hint("coder", "never-seen-tool")
    assert 0.0 <= unseen.reuse_prob <= 1.0 and unseen.node.startswith("tool:")
    h.observe_call("live", 10, 1, "grep")
    assert list(h.active_sessions()) == ["live"]


def test_a_task_ended_while_waiting_does_not_learn_the_tool_that_never_ran() -> None:
    h = SessionHinter(PatternInference(theta_conf=0.7, cold_start_tasks=30))
    for i in range(30):
        h.observe_call(f"s{i}", 1000, 50, "grep")
        h.observe_call(f"s{i}", 1600, 50, "plan")  # ended while waiting on "plan"
        h.finish(f"s{i}", "coder", pending_tool_ran=False)
    assert h.inference.aeg_source("coder") == "inferred"
    assert h.hint("coder", "grep").reuse_prob == 1.0
    assert tool_node_id("plan") not in h.inference.aeg_for("coder")
    assert h.active_sessions() == []
