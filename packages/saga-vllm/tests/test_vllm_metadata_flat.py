"""The flat ``saga_<field>`` form that vLLM's OpenAI server can carry in ``vllm_xargs``."""

from __future__ import annotations

import pytest

from saga.vllm.metadata import (
    SagaMetadataError,
    SagaRequestMeta,
    parse_saga_meta,
    saga_extra_args,
    saga_vllm_xargs,
)


def test_flat_keys_parse_like_the_nested_dict() -> None:
    meta = SagaRequestMeta("s1", tenant_id="acme", agent_type="coder", pending_tool="grep",
                           tool_latency_s=1.5)
    flat = saga_vllm_xargs(meta)
    assert flat == {"saga_session_id": "s1", "saga_tenant_id": "acme",
                    "saga_agent_type": "coder", "saga_pending_tool": "grep",
                    "saga_tool_latency_s": 1.5}
    assert all(isinstance(v, str | int | float) for v in flat.values())  # what vllm_xargs takes
    assert parse_saga_meta({**flat, "other": 1}) == meta == parse_saga_meta(saga_extra_args(meta))


@pytest.mark.parametrize(("value", "expected"), [("true", True), (1, True), ("0", False),
                                                 (False, False)])
def test_flat_final_accepts_json_and_form_booleans(value: object, expected: bool) -> None:
    meta = parse_saga_meta({"saga_session_id": "s", "saga_final": value})
    assert meta is not None and meta.final is expected


@pytest.mark.parametrize(("extra", "needle"), [
    ({"saga_session_id": "s", "saga_final": "maybe"}, "saga_final must be true/false"),
    ({"saga_session_id": "s", "saga_sesion": "x"}, "unknown SAGA field(s) ['saga_sesion']"),
    ({"saga_tenant_id": "t"}, "saga_session_id is required"),
    ({"saga_session_id": "s", "saga_tool_latency_s": "abc"},
     "saga_tool_latency_s must be a number"),
    ({"saga_session_id": "s", "saga_reuse_prob": 2.0}, "saga_reuse_prob must be in [0"),
    ({"saga": {"session_id": "s"}, "saga_session_id": "s"}, "not both"),
])
def test_flat_form_errors_name_the_field(extra: dict[str, object], needle: str) -> None:
    with pytest.raises(SagaMetadataError) as err:
        parse_saga_meta(extra)
    assert needle in str(err.value)


def test_no_saga_keys_is_a_plain_request() -> None:
    assert parse_saga_meta({"other": 1}) is None


def test_flat_prefetch_flag_round_trips() -> None:
    meta = SagaRequestMeta("s", pending_tool="grep", prefetch=True)
    flat = saga_vllm_xargs(meta)
    assert flat["saga_prefetch"] is True
    assert parse_saga_meta({**flat, "saga_prefetch": "true"}) == meta
    with pytest.raises(SagaMetadataError, match="saga_prefetch must be true/false"):
        parse_saga_meta({**flat, "saga_prefetch": "soon"})
