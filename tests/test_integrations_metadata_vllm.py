"""saga-integrations builds SAGA's request metadata without importing saga-vllm; saga-vllm's
own parser must read both shapes it emits (nested ``extra_args["saga"]`` and the flat
``vllm_xargs`` form) as the same request, field for field."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saga.integrations import RequestMetadata, WorkflowFeed
from saga.integrations.langchain import LangChainTracker
from saga.vllm.metadata import SagaRequestMeta, parse_saga_meta, saga_extra_args, saga_vllm_xargs

names = st.text(min_size=1, max_size=12)
maybe_name = st.none() | names


@given(session=names, tenant=names, agent=maybe_name, node=maybe_name, tool=maybe_name,
       latency=st.none() | st.floats(0, 1e4), final=st.booleans(),
       deadline=st.none() | st.floats(-1e4, 1e4), reuse=st.none() | st.floats(0, 1))
def test_both_shapes_parse_to_the_same_request(
        session: str, tenant: str, agent: str | None, node: str | None, tool: str | None,
        latency: float | None, final: bool, deadline: float | None,
        reuse: float | None) -> None:
    ours = RequestMetadata(session, tenant, agent, node, tool, latency, final, deadline, reuse)
    nested = parse_saga_meta(ours.extra_args({"other": 1}))
    flat = parse_saga_meta(ours.vllm_xargs())
    expected = SagaRequestMeta(**dataclasses.asdict(ours))
    assert nested == flat == expected
    # ... and saga-vllm would have sent exactly the same dicts.
    assert ours.extra_args() == saga_extra_args(expected)
    assert ours.vllm_xargs() == saga_vllm_xargs(expected)
    assert ours.openai_extra_body() == {"vllm_xargs": saga_vllm_xargs(expected)}


def test_the_adapters_and_the_engine_share_one_schema() -> None:
    assert RequestMetadata is SagaRequestMeta


def test_what_an_adapter_emits_during_a_task_is_accepted() -> None:
    feed = WorkflowFeed()
    t = LangChainTracker(feed, agent_type="coder", tenant_id="acme", tools=("grep",),
                         clock=iter(range(100)).__next__)
    m1 = t.llm_started("c1", None, "fix it")
    t.llm_ended("c1", input_tokens=40, output_tokens=5, output_text="", tool_calls=("grep",))
    t.chain_started("root", None, "coder")
    t.llm_started("c2", "root", "fix it")
    t.llm_ended("c2", input_tokens=40, output_tokens=5, output_text="", tool_calls=("grep",))
    t.tool_started("g", "root", "grep")
    t.tool_ended("g")
    m3 = t.llm_started("c3", "root", "fix it")
    for m in (m1, m3):
        parsed = parse_saga_meta(m.extra_args())
        assert parsed is not None and parsed.session_id == m.session_id
        assert parse_saga_meta(m.vllm_xargs()) == parsed
    assert parse_saga_meta(m3.extra_args()) == SagaRequestMeta(
        "root", "acme", "coder", "llm@tool:grep", "grep", 1.0)


def test_the_engine_rejects_what_the_adapter_would_never_send() -> None:
    from saga.vllm.metadata import SagaMetadataError

    bad = RequestMetadata("s").extra_args()
    bad["saga"]["typo_field"] = 1
    with pytest.raises(SagaMetadataError, match="typo_field"):
        parse_saga_meta(bad)
