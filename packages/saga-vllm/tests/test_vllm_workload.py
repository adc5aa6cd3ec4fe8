"""The compare workload: deterministic by seed, shaped to the tiny model, clear config errors."""

from __future__ import annotations

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.workload import WorkloadConfig, build_workload


def test_same_seed_same_workload_other_seed_other_workload() -> None:
    a = build_workload(WorkloadConfig(seed=3))
    assert a == build_workload(WorkloadConfig(seed=3))
    assert a != build_workload(WorkloadConfig(seed=4))


def test_sessions_are_shaped_to_the_config() -> None:
    cfg = WorkloadConfig(sessions=8, kind="mixed", seed=1, max_steps=6, max_context=2500,
                         max_tool_s=2.0, arrival_gap_s=0.5)
    w = build_workload(cfg)
    assert len(w.sessions) == 8
    assert sorted(s.agent_type for s in w.sessions).count("swe-bench") == 4
    arrivals = [s.arrival_s for s in w.sessions]
    assert arrivals == sorted(arrivals) and arrivals[-1] > arrivals[0]
    for s in w.sessions:
        assert 2 <= len(s.calls) <= cfg.max_steps
        assert s.max_context <= cfg.max_context
        assert s.calls[-1].final and s.calls[-1].tool_s == 0.0
        assert all(not c.final and c.tool for c in s.calls[:-1])
        assert all(0.0 <= c.tool_s <= cfg.max_tool_s for c in s.calls)
        assert all(cfg.min_output <= c.max_tokens <= cfg.max_output for c in s.calls)
        for c in s.calls[1:]:
            assert cfg.min_growth <= len(c.new_tokens) <= cfg.max_growth
        assert all(1 <= t < cfg.vocab_size for c in s.calls for t in c.new_tokens)
    # Prompts grow: every call's prompt is the last prompt + output + new tokens.
    s = w.sessions[0]
    assert s.prompt_tokens == sum(
        sum(len(c.new_tokens) + c.max_tokens for c in s.calls[:i]) + len(s.calls[i].new_tokens)
        for i in range(len(s.calls)))


def test_sessions_of_one_agent_type_share_a_system_prompt_only() -> None:
    cfg = WorkloadConfig(sessions=4, kind="mixed", system_tokens=100)
    w = build_workload(cfg)
    firsts = {s.session_id: s.calls[0].new_tokens for s in w.sessions}
    swe = [v for k, v in firsts.items() if k.startswith("swe")]
    web = [v for k, v in firsts.items() if k.startswith("web")]
    assert swe[0][:100] == swe[1][:100] and web[0][:100] == web[1][:100]
    assert swe[0][:100] != web[0][:100]
    assert swe[0][100:] != swe[1][100:]


def test_single_kind_workloads_and_tenants() -> None:
    w = build_workload(WorkloadConfig(sessions=3, kind="web", tenants=2))
    assert {s.agent_type for s in w.sessions} == {"webarena"}
    assert {s.tenant for s in w.sessions} == {"tenant-0", "tenant-1"}
    assert build_workload(WorkloadConfig(sessions=2, kind="swe")).summary()["sessions"] == 2


@pytest.mark.parametrize(("field", "value", "match"), [
    ("kind", "chat", "workload kind"),
    ("sessions", 0, "sessions"),
    ("max_context", 100, "max_context"),
    ("tool_scale", -1.0, "tool_scale"),
    ("token_scale", 0.0, "token_scale"),
])
def test_bad_config_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(SagaConfigError, match=match):
        WorkloadConfig(**{field: value})  # type: ignore[arg-type]
