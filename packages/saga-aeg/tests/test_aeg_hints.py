"""WorkflowHint validation and the prior AEG a hint implies."""

from __future__ import annotations

import math

import pytest

from saga.aeg.errors import AEGError
from saga.aeg.hints import PLACEHOLDER_TOOL, WorkflowHint, hint_aeg
from saga.aeg.templates import swe_bench_agent


def test_hint_coerces_sequences_to_tuples() -> None:
    hint = WorkflowHint("a", tools=["x", "y"], steps=["llm", "x", "llm"])  # type: ignore[arg-type]
    assert hint.tools == ("x", "y")
    assert hint.steps == ("llm", "x", "llm")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agent_type": ""}, "agent_type"),
        ({"agent_type": "a", "tools": "bash"}, "not one string"),
        ({"agent_type": "a", "tools": ("x", "x")}, "duplicates"),
        ({"agent_type": "a", "tools": ("",)}, "non-empty"),
        ({"agent_type": "a", "tools": ("llm",)}, "rename that tool"),
        ({"agent_type": "a", "tools": ("x",), "steps": ("llm", "fly")}, "step #1 'fly'"),
        ({"agent_type": "a", "steps": ()}, "must not be empty"),
        ({"agent_type": "a", "expected_llm_calls": 0.5}, "expected_llm_calls"),
        ({"agent_type": "a", "expected_llm_calls": math.nan}, "expected_llm_calls"),
        ({"agent_type": "a", "aeg": swe_bench_agent()}, "must match"),
        ({"agent_type": "a", "framework": ""}, "framework"),
    ],
)
def test_hint_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(AEGError, match=match):
        WorkflowHint(**kwargs)  # type: ignore[arg-type]


def test_hint_aeg_from_tools_has_expected_calls() -> None:
    aeg = hint_aeg(WorkflowHint("a", tools=("search", "edit"), expected_llm_calls=8))
    assert aeg.expected_total_llm_calls() == pytest.approx(8.0)
    assert aeg.tools() == ["edit", "search"]
    assert dict(aeg.successors("llm@start")) == {
        "end": pytest.approx(1 / 8),
        "tool:search": pytest.approx(7 / 16),
        "tool:edit": pytest.approx(7 / 16),
    }


def test_hint_aeg_without_tools_uses_placeholder_and_default_calls() -> None:
    aeg = hint_aeg(WorkflowHint("a"), default_llm_calls=12)
    assert aeg.tools() == [PLACEHOLDER_TOOL]
    assert aeg.expected_total_llm_calls() == pytest.approx(12.0)
    assert hint_aeg(WorkflowHint("a", expected_llm_calls=1)).expected_total_llm_calls() == (
        pytest.approx(1.0)
    )


def test_hint_aeg_from_declared_steps() -> None:
    aeg = hint_aeg(WorkflowHint("a", steps=("llm", "search", "llm", "search", "llm")))
    assert aeg.expected_total_llm_calls() == pytest.approx(3.0)
    assert dict(aeg.successors("llm@tool:search")) == {"tool:search": 0.5, "end": 0.5}


def test_explicit_aeg_wins() -> None:
    g = swe_bench_agent("a")
    assert hint_aeg(WorkflowHint("a", tools=("x",), aeg=g)) is g
