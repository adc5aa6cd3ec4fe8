"""SAGA request metadata and scheduler config: parsing, round trips, errors that name fields."""

from __future__ import annotations

import json

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.config import ENV_VAR, SagaSchedulerConfig
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


def test_config_defaults_are_stock() -> None:
    cfg = SagaSchedulerConfig()
    assert cfg.stock
    assert not SagaSchedulerConfig.all_on().stock
    assert SagaSchedulerConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"queue": "lifo"}, "queue"),
    ({"pin_cap_fraction": 1.5}, "pin_cap_fraction"),
    ({"ttl_max_s": -1.0}, "ttl_max_s"),
    ({"alpha": -0.1}, "alpha"),
    ({"walru": 1}, "walru"),
    ({"pending_tool_reuse": 2.0}, "pending_tool_reuse"),
])
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SagaConfigError, match=field):
        SagaSchedulerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    class VllmConfig:
        def __init__(self) -> None:
            self.additional_config: dict[str, object] = {}

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert SagaSchedulerConfig.resolve(VllmConfig()) == SagaSchedulerConfig()
    monkeypatch.setenv(ENV_VAR, json.dumps({"walru": True}))
    assert SagaSchedulerConfig.resolve(VllmConfig()).walru
    vc = VllmConfig()
    vc.additional_config = {"saga": {"ttl": True}}
    got = SagaSchedulerConfig.resolve(vc)
    assert got.ttl and not got.walru  # additional_config wins over the env var
    with pytest.raises(SagaConfigError, match="colour"):
        SagaSchedulerConfig.from_dict({"colour": "red"})
    monkeypatch.setenv(ENV_VAR, "{not json")
    with pytest.raises(SagaConfigError, match=ENV_VAR):
        SagaSchedulerConfig.resolve(None)
