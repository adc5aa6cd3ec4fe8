"""The one request-metadata schema: its rules, its three encodings, and errors that name fields."""

from __future__ import annotations

import json
import pickle

import pytest

from saga.aeg.errors import SagaError
from saga.aeg.metadata import FLAT_PREFIX, SAGA_KEY, MetadataError, RequestMetadata

FULL = RequestMetadata("s1", "acme", "coder", "llm@tool:grep", "grep", 1.5, False, 30.0, 0.9,
                       True)


def test_defaults_are_left_out_and_restored() -> None:
    plain = RequestMetadata("s1")
    assert plain.to_dict() == {"session_id": "s1"}
    assert plain.extra_args({"keep": 1}) == {"keep": 1, SAGA_KEY: {"session_id": "s1"}}
    assert plain.vllm_xargs() == {"saga_session_id": "s1"}
    assert RequestMetadata.from_dict({"session_id": "s1"}) == plain
    assert plain.tenant_id == "default" and not plain.final and not plain.prefetch


def test_every_field_round_trips_through_every_encoding() -> None:
    assert FULL.to_dict() == {
        "session_id": "s1", "tenant_id": "acme", "agent_type": "coder",
        "aeg_node": "llm@tool:grep", "pending_tool": "grep", "tool_latency_s": 1.5,
        "deadline_s": 30.0, "reuse_prob": 0.9, "prefetch": True}
    assert RequestMetadata.from_dict(json.loads(json.dumps(FULL.to_dict()))) == FULL
    assert RequestMetadata.from_extra_args(FULL.extra_args({"other": 1})) == FULL
    flat = FULL.vllm_xargs()
    assert all(k.startswith(FLAT_PREFIX) for k in flat)
    assert RequestMetadata.from_vllm_xargs({**flat, "other_plugin": 3}) == FULL
    assert RequestMetadata.from_extra_args(flat) == FULL
    assert FULL.openai_extra_body() == {"vllm_xargs": flat}


def test_numbers_become_floats_and_blank_hints_become_none() -> None:
    m = RequestMetadata.from_dict({"session_id": "s", "tool_latency_s": 2, "reuse_prob": 1,
                                   "agent_type": "", "pending_tool": ""})
    assert m.tool_latency_s == 2.0 and isinstance(m.tool_latency_s, float)
    assert m.reuse_prob == 1.0 and m.agent_type is None and m.pending_tool is None
    assert m == RequestMetadata("s", tool_latency_s=2.0, reuse_prob=1.0)


@pytest.mark.parametrize(("fields", "field"), [
    ({"session_id": ""}, "session_id"),
    ({"session_id": 3}, "session_id"),
    ({"session_id": "s", "tenant_id": ""}, "tenant_id"),
    ({"session_id": "s", "tenant_id": None}, "tenant_id"),
    ({"session_id": "s", "aeg_node": 7}, "aeg_node"),
    ({"session_id": "s", "final": "yes"}, "final"),
    ({"session_id": "s", "prefetch": 1}, "prefetch"),
    ({"session_id": "s", "prefetch": True}, "prefetch"),
    ({"session_id": "s", "prefetch": True, "pending_tool": ""}, "prefetch"),
    ({"session_id": "s", "prefetch": True, "pending_tool": "t", "final": True}, "prefetch"),
    ({"session_id": "s", "tool_latency_s": -1.0}, "tool_latency_s"),
    ({"session_id": "s", "tool_latency_s": True}, "tool_latency_s"),
    ({"session_id": "s", "tool_latency_s": 10**400}, "tool_latency_s"),
    ({"session_id": "s", "deadline_s": float("nan")}, "deadline_s"),
    ({"session_id": "s", "reuse_prob": 1.5}, "reuse_prob"),
])
def test_a_broken_rule_names_its_field_in_each_spelling(fields: dict[str, object],
                                                         field: str) -> None:
    with pytest.raises(MetadataError, match=rf"saga\.{field}") as err:
        RequestMetadata(**fields)  # type: ignore[arg-type]
    assert err.value.field == field
    with pytest.raises(MetadataError, match=rf"saga\.{field}"):
        RequestMetadata.from_dict(fields)
    with pytest.raises(MetadataError, match=rf"saga_{field}") as flat:
        RequestMetadata.from_vllm_xargs({FLAT_PREFIX + k: v for k, v in fields.items()})
    assert flat.value.field == field


def test_containers_are_checked_too() -> None:
    with pytest.raises(MetadataError, match="session_id is required"):
        RequestMetadata.from_dict({"tenant_id": "t"})
    with pytest.raises(MetadataError, match=r"unknown SAGA field\(s\) \['saga\.sesion'\]"):
        RequestMetadata.from_dict({"session_id": "s", "sesion": "x"})
    with pytest.raises(MetadataError, match="must be a dict"):
        RequestMetadata.from_dict(["session_id"])
    with pytest.raises(MetadataError, match="must be a dict"):
        RequestMetadata.from_extra_args({SAGA_KEY: "s1"})
    with pytest.raises(MetadataError, match="not both"):
        RequestMetadata.from_extra_args({SAGA_KEY: {"session_id": "s"}, "saga_session_id": "s"})
    with pytest.raises(MetadataError, match="saga_session_id is required"):
        RequestMetadata.from_vllm_xargs({"other": 1})
    assert RequestMetadata.from_extra_args(None) is None
    assert RequestMetadata.from_extra_args({"other": 1}) is None


@pytest.mark.parametrize(("value", "expected"), [("true", True), (" FALSE ", False), (1, True),
                                                 ("0", False), (False, False)])
def test_flat_flags_take_form_words(value: object, expected: bool) -> None:
    m = RequestMetadata.from_vllm_xargs({"saga_session_id": "s", "saga_final": value})
    assert m.final is expected
    with pytest.raises(MetadataError, match="saga_final must be true/false"):
        RequestMetadata.from_vllm_xargs({"saga_session_id": "s", "saga_final": 2})


def test_the_error_is_a_saga_error_a_value_error_and_pickles_with_its_field() -> None:
    assert issubclass(MetadataError, SagaError) and issubclass(MetadataError, ValueError)
    with pytest.raises(MetadataError) as err:
        RequestMetadata("s", reuse_prob=2.0)
    back = pickle.loads(pickle.dumps(err.value))
    assert type(back) is MetadataError and back.field == "reuse_prob"
    assert str(back) == str(err.value)


def test_metadata_is_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        FULL.final = True  # type: ignore[misc]
    assert len({FULL, RequestMetadata.from_dict(FULL.to_dict())}) == 1
