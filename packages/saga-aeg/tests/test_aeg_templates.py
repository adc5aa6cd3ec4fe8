"""Built-in templates are valid, realistic and deterministic."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG
from saga.aeg.templates import TEMPLATES, generic_agent, swe_bench_agent, template, webarena_agent


def test_swe_bench_agent_matches_the_trace() -> None:
    g = swe_bench_agent()
    # the real trace averages 40.3 LLM calls and 24,770 tokens in the last prompt
    assert g.expected_total_llm_calls() == pytest.approx(40.3, abs=2.0)
    assert 20_000 < g.expected_total_work() < 30_000
    assert g.tools() == ["edit", "format_error", "python", "search", "submit", "test"]
    test = next(n for n in g.tool_nodes() if n.tool == "test")
    assert 10.0 < test.latency.p95() < 100.0  # tens of seconds
    search = next(n for n in g.tool_nodes() if n.tool == "search")
    assert search.latency.p95() < 2.0
    assert g.successors("tool:submit") == [("end", 1.0)]


def test_webarena_agent_is_short_and_fast() -> None:
    g = webarena_agent()
    assert 10.0 <= g.expected_total_llm_calls() <= 20.0
    for node in g.tool_nodes():
        assert 0.1 < node.latency.median() < 3.0
    assert "tool:stop" not in g


def test_generic_agent_and_registry() -> None:
    assert generic_agent(expected_llm_calls=7).expected_total_llm_calls() == pytest.approx(7.0)
    assert set(TEMPLATES) == {"swe-bench", "webarena", "generic"}
    assert template("webarena", "web-1").agent_type == "web-1"
    with pytest.raises(AEGError, match="unknown AEG template 'nope'"):
        template("nope")


@pytest.mark.parametrize("build", [swe_bench_agent, webarena_agent, generic_agent])
def test_templates_sample_deterministically_and_round_trip(build: Callable[[], AEG]) -> None:
    g = build()
    assert g.sample_trace(np.random.default_rng(9)) == g.sample_trace(np.random.default_rng(9))
    assert AEG.from_json(g.to_json()) == g
    assert build() == g  # fresh objects, equal
