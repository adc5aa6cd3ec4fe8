"""SAGA request metadata: parsing, round trips, errors that name fields (the scheduler config
is tested in test_vllm_config.py)."""

from __future__ import annotations

import pytest

from saga.vllm.metadata import (
    SagaMetadataError,
    SagaRequestMeta,
    parse_saga_meta,
    saga_extra_args,
)


def test_missing_saga_key_is_a_plain_request() -> None:
    assert parse_saga_meta(None) is None
    assert parse_saga_meta({}) is None
    assert parse_saga_meta({"other": 1}) is None


def test_round_trip_through_extra_args() -> None:
    meta = SagaRequestMeta(session_id="s", tenant_id="acme", agent_type="swe",
                           aeg_node="edit", pending_tool="bash", tool_latency_s=1.5,
                           final=False, deadline_s=30.0, reuse_prob=0.25)
    args = saga_extra_args(meta, base={"keep": 1})
    assert args["keep"] == 1
    assert parse_saga_meta(args) == meta
    # Defaults are omitted on the wire and restored on parse.
    plain = SagaRequestMeta(session_id="s")
    assert saga_extra_args(plain) == {"saga": {"session_id": "s"}}
    assert parse_saga_meta(saga_extra_args(plain)) == plain


def test_ints_are_accepted_as_floats() -> None:
    meta = parse_saga_meta({"saga": {"session_id": "s", "tool_latency_s": 2, "reuse_prob": 1}})
    assert meta is not None
    assert meta.tool_latency_s == 2.0 and isinstance(meta.tool_latency_s, float)
    assert meta.reuse_prob == 1.0


@pytest.mark.parametrize(("payload", "field"), [
    ({"session_id": 3}, "session_id"),
    ({"session_id": ""}, "session_id"),
    ({}, "session_id"),
    ({"session_id": "s", "tenant_id": None}, "tenant_id"),
    ({"session_id": "s", "pending_tool": 7}, "pending_tool"),
    ({"session_id": "s", "final": "yes"}, "final"),
    ({"session_id": "s", "tool_latency_s": "1"}, "tool_latency_s"),
    ({"session_id": "s", "tool_latency_s": -1.0}, "tool_latency_s"),
    ({"session_id": "s", "tool_latency_s": True}, "tool_latency_s"),
    ({"session_id": "s", "reuse_prob": 1.5}, "reuse_prob"),
    ({"session_id": "s", "deadline_s": float("nan")}, "deadline_s"),
    ({"session_id": "s", "sesion": "typo"}, "sesion"),
])
def test_malformed_fields_are_named(payload: dict[str, object], field: str) -> None:
    with pytest.raises(SagaMetadataError, match=field):
        parse_saga_meta({"saga": payload})


def test_saga_value_must_be_a_dict() -> None:
    with pytest.raises(SagaMetadataError, match="must be a dict"):
        parse_saga_meta({"saga": "session-1"})
    assert issubclass(SagaMetadataError, ValueError)
