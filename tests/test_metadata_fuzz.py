"""Fuzzed SAGA request metadata: saga-vllm's decoder and saga-integrations' encoder.

Random field dicts (wrong types, huge ints, NaN/inf, nulls, empty strings, unknown keys, every
``prefetch``/``final``/``pending_tool`` combination) must either parse or raise the package's
typed error naming the field; the two packages must accept exactly the same field dicts; and
whatever they accept must survive the wire: encode → JSON → vLLM's ``vllm_xargs`` type → decode.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.integrations import RequestMetadata
from saga.integrations.errors import IntegrationError
from saga.policy.errors import SagaError
from saga.vllm.metadata import (
    SagaMetadataError,
    SagaRequestMeta,
    parse_saga_meta,
    saga_extra_args,
    saga_vllm_xargs,
)

FIELDS = [f.name for f in dataclasses.fields(SagaRequestMeta)]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The type vLLM's OpenAI server gives ``vllm_xargs`` (chat, completion and responses requests
# alike); validating JSON against it reproduces what the server hands the engine.
VLLM_XARGS = pydantic.TypeAdapter(dict[str, str | int | float | list[str | int | float]])

huge_ints = st.integers(min_value=-(10**400), max_value=10**400)
anything: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), huge_ints, st.floats(), st.text(max_size=12),
    st.just(""), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                      st.integers(), max_size=2))
names = st.text(min_size=1, max_size=16)
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(), huge_ints)
# Per field: mostly plausible values, sometimes anything at all.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "session_id": names | st.just(""),
    "tenant_id": names | st.just("") | st.just("default"),
    "agent_type": st.none() | names | st.just(""),
    "aeg_node": st.none() | names | st.just(""),
    "pending_tool": st.none() | names | st.just(""),
    "tool_latency_s": st.none() | numbers,
    "final": st.booleans(),
    "deadline_s": st.none() | numbers,
    "reuse_prob": st.none() | st.floats(-0.5, 1.5) | numbers,
    "prefetch": st.booleans(),
}


@st.composite
def field_dicts(draw: st.DrawFn, *, unknown: bool = False) -> dict[str, Any]:
    """A dict of SAGA fields; ``session_id`` is always present (its value may be bad)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name == "session_id" or draw(st.booleans()):
            out[name] = draw(PLAUSIBLE[name] | anything) if draw(st.integers(0, 4)) == 0 \
                else draw(PLAUSIBLE[name])
    if unknown and draw(st.booleans()):
        out[draw(st.text(max_size=8).filter(lambda k: k not in FIELDS))] = draw(anything)
    return out


def _vllm_parse(d: dict[str, Any]) -> SagaRequestMeta | SagaMetadataError:
    try:
        meta = parse_saga_meta({"saga": d})
    except SagaMetadataError as exc:
        return exc
    assert meta is not None
    return meta


def _adapter_build(d: dict[str, Any]) -> RequestMetadata | IntegrationError:
    try:
        return RequestMetadata(**d)
    except IntegrationError as exc:
        return exc


def _named_fields(message: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, message))


@FUZZ
@given(extra=st.dictionaries(st.text(max_size=10) | st.sampled_from(["saga", "saga_final"]),
                             anything, max_size=4), saga=anything | field_dicts(unknown=True))
def test_vllm_decoder_raises_only_typed_errors(extra: dict[str, Any], saga: Any) -> None:
    """Any ``extra_args`` parses or raises SagaMetadataError (a SagaError), nothing else."""
    for args in (extra, {**extra, "saga": saga}):
        try:
            meta = parse_saga_meta(args)
        except SagaMetadataError as exc:
            assert isinstance(exc, SagaError) and str(exc)
            continue
        assert meta is None or isinstance(meta, SagaRequestMeta)


@FUZZ
@given(d=field_dicts(unknown=True))
def test_vllm_errors_name_the_field_in_both_forms(d: dict[str, Any]) -> None:
    nested = _vllm_parse(d)
    flat_args = {"saga_" + k: v for k, v in d.items()}
    try:
        flat: SagaRequestMeta | SagaMetadataError = parse_saga_meta(flat_args)  # type: ignore[assignment]
    except SagaMetadataError as exc:
        flat = exc
    if isinstance(nested, SagaMetadataError):
        assert _named_fields(str(nested), r"saga\.(\w+)") & (set(d) | {"session_id"}), nested
    else:
        # Flat flags also take "true"/1, so the flat form accepts at least what nested does.
        assert flat == nested
    if isinstance(flat, SagaMetadataError):
        # The flat form names the keys as the caller wrote them.
        assert _named_fields(str(flat), r"saga_(\w+)") & (set(d) | {"session_id"}), flat
    elif isinstance(nested, SagaMetadataError):
        # Only a flag given as a form word or 1/0 ("true", 0) separates the two forms.
        words = {"true": True, "false": False, "1": True, "0": False, 1: True, 0: False}
        flags = {k: words[v.strip().lower() if isinstance(v, str) else v]
                 for k, v in d.items() if k in ("final", "prefetch") and type(v) is not bool}
        assert flags and _vllm_parse({**d, **flags}) == flat


@FUZZ
@given(d=field_dicts())
def test_both_packages_accept_and_reject_the_same_fields(d: dict[str, Any]) -> None:
    """The cross-check: saga-integrations builds exactly what saga-vllm accepts."""
    engine, adapter = _vllm_parse(d), _adapter_build(d)
    assert isinstance(engine, SagaMetadataError) == isinstance(adapter, IntegrationError), (
        d, engine, adapter)
    if isinstance(adapter, IntegrationError):
        assert _named_fields(str(adapter), r"RequestMetadata\.(\w+)") & set(d), adapter
    else:
        assert isinstance(engine, SagaRequestMeta)
        assert dataclasses.asdict(adapter) == dataclasses.asdict(engine)


def _over_the_wire(xargs: dict[str, Any]) -> dict[str, Any]:
    """What vLLM's OpenAI server hands the engine for ``vllm_xargs`` sent as JSON."""
    body = json.dumps({"vllm_xargs": xargs}, allow_nan=False)
    return VLLM_XARGS.validate_python(json.loads(body)["vllm_xargs"])


@FUZZ
@given(d=field_dicts())
def test_what_the_adapter_accepts_round_trips(d: dict[str, Any]) -> None:
    """encode → vllm_xargs → JSON → vLLM's field type → decode equals the original."""
    ours = _adapter_build(d)
    if isinstance(ours, IntegrationError):
        return
    expected = SagaRequestMeta(**dataclasses.asdict(ours))
    assert parse_saga_meta(ours.extra_args({"other": 1})) == expected
    assert parse_saga_meta(_over_the_wire(ours.vllm_xargs())) == expected
    assert parse_saga_meta(_over_the_wire(saga_vllm_xargs(expected))) == expected
    assert parse_saga_meta(saga_extra_args(expected)) == expected
    assert ours.vllm_xargs() == saga_vllm_xargs(expected)


@settings(max_examples=100, deadline=None)
@given(prefetch=st.booleans(), final=st.booleans(), tool=st.none() | st.just("") | names)
def test_prefetch_combinations_agree(prefetch: bool, final: bool, tool: str | None) -> None:
    d = {"session_id": "s", "prefetch": prefetch, "final": final, "pending_tool": tool}
    valid = tool != "" and not (prefetch and (final or tool is None))
    assert isinstance(_vllm_parse(d), SagaRequestMeta) == valid
    assert isinstance(_adapter_build(d), RequestMetadata) == valid


def test_known_defects_stay_fixed() -> None:
    """Inputs that once escaped as OverflowError/ValueError or were accepted on one side only."""
    for bad in ({"tool_latency_s": 10**400}, {"deadline_s": float("inf")},
                {"tool_latency_s": float("inf")}, {"final": 10**5000}, {"tenant_id": ""},
                {"agent_type": ""}, {"prefetch": True}):
        d = {"session_id": "s", **bad}
        field = next(iter(bad))
        for err in (_vllm_parse(d), _adapter_build(d)):
            assert isinstance(err, SagaMetadataError | IntegrationError), (d, err)
            assert field in str(err)
    with pytest.raises(SagaMetadataError, match="saga_final"):
        parse_saga_meta({"saga_session_id": "s", "saga_final": 10**5000})
