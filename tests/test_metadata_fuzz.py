"""Fuzzed SAGA request metadata: saga-integrations encodes, saga-vllm decodes, one schema rules.

Random field dicts (wrong types, huge ints, NaN/inf, nulls, empty strings, unknown keys, every
``prefetch``/``final``/``pending_tool`` combination) must either parse or raise the typed
`MetadataError` naming the field; what is accepted must match the documented rules (an oracle
written from `RequestMetadata`'s docstring, not from its code); and whatever an adapter builds
must survive the wire: encode → JSON → vLLM's ``vllm_xargs`` type → decode → the equal object.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.aeg.errors import SagaError
from saga.aeg.metadata import MetadataError
from saga.integrations.metadata import RequestMetadata
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
RANGES = {"tool_latency_s": (0.0, math.inf), "deadline_s": (-math.inf, math.inf),
          "reuse_prob": (0.0, 1.0)}


def test_the_fuzzer_draws_every_field_and_both_packages_share_one_class() -> None:
    """A new field fails here until the fuzzer draws it; and there is one schema, not two."""
    assert set(PLAUSIBLE) == set(FIELDS) and "prefetch" in FIELDS
    assert RequestMetadata is SagaRequestMeta and SagaMetadataError is MetadataError
    assert issubclass(MetadataError, SagaError) and issubclass(MetadataError, ValueError)


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


def _finite_in(value: Any, low: float, high: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        x = float(value)
    except OverflowError:
        return False
    return math.isfinite(x) and low <= x <= high


def _valid(d: dict[str, Any]) -> bool:
    """The documented rules (RequestMetadata's docstring), for the nested form."""
    if set(d) - set(FIELDS):
        return False
    if not all(isinstance(d.get(k, "x"), str) and d.get(k, "x") for k in ("session_id",
                                                                              "tenant_id")):
        return False
    if not all(d.get(k) is None or isinstance(d[k], str) for k in ("agent_type", "aeg_node",
                                                                     "pending_tool")):
        return False
    if not all(isinstance(d.get(k, False), bool) for k in ("final", "prefetch")):
        return False
    if d.get("prefetch") and (not d.get("pending_tool") or d.get("final")):
        return False
    return all(d.get(k) is None or _finite_in(d[k], *r) for k, r in RANGES.items())


def _parse(args: dict[str, Any]) -> SagaRequestMeta | MetadataError | None:
    try:
        return parse_saga_meta(args)
    except MetadataError as exc:
        return exc


def _named_fields(message: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, message))


@FUZZ
@given(extra=st.dictionaries(st.text(max_size=10) | st.sampled_from(["saga", "saga_final"]),
                             anything, max_size=4), saga=anything | field_dicts(unknown=True))
def test_the_decoder_raises_only_typed_errors(extra: dict[str, Any], saga: Any) -> None:
    """Any ``extra_args`` parses or raises MetadataError (a SagaError), nothing else."""
    for args in (extra, {**extra, "saga": saga}):
        got = _parse(args)
        assert got is None or isinstance(got, SagaRequestMeta) or (
            isinstance(got, SagaError) and str(got))


@FUZZ
@given(d=field_dicts(unknown=True))
def test_the_decoder_follows_the_documented_rules(d: dict[str, Any]) -> None:
    """Accepts exactly what the rules allow; a refusal names a field the caller gave (or the
    missing ``session_id``), in the nested form's spelling and in the flat form's."""
    nested = _parse({"saga": d})
    assert isinstance(nested, SagaRequestMeta) == _valid(d), (d, nested)
    flat = _parse({"saga_" + k: v for k, v in d.items()})
    if isinstance(nested, MetadataError):
        assert _named_fields(str(nested), r"saga\.(\w+)") & (set(d) | {"session_id"}), nested
        assert nested.field is None or nested.field in d
    else:
        assert flat == nested  # the flat form also takes "true"/1 flags: at least as much
    if isinstance(flat, MetadataError):
        assert _named_fields(str(flat), r"saga_(\w+)") & (set(d) | {"session_id"}), flat
    elif isinstance(nested, MetadataError):
        # Only a flag given as a form word or 1/0 ("true", 0) separates the two forms.
        words = {"true": True, "false": False, "1": True, "0": False, 1: True, 0: False}
        flags = {k: words[v.strip().lower() if isinstance(v, str) else v]
                 for k, v in d.items() if k in ("final", "prefetch") and type(v) is not bool}
        assert flags and _parse({"saga": {**d, **flags}}) == flat


def _over_the_wire(xargs: dict[str, Any]) -> dict[str, Any]:
    """What vLLM's OpenAI server hands the engine for ``vllm_xargs`` sent as JSON."""
    body = json.dumps({"vllm_xargs": xargs}, allow_nan=False)
    return VLLM_XARGS.validate_python(json.loads(body)["vllm_xargs"])


@FUZZ
@given(d=field_dicts())
def test_what_the_adapter_encodes_the_engine_parses_to_the_equal_object(
        d: dict[str, Any]) -> None:
    """saga-integrations builds and encodes; saga-vllm decodes every form to the equal
    object: nested extra_args, vllm_xargs over JSON and vLLM's field type, and plain JSON."""
    try:
        ours = RequestMetadata(**d)
    except MetadataError as exc:
        assert not _valid(d) and exc.field in d, (d, exc)
        return
    assert _valid(d), d
    assert parse_saga_meta(ours.extra_args({"other": 1})) == ours
    assert parse_saga_meta(_over_the_wire(ours.vllm_xargs())) == ours
    assert parse_saga_meta(_over_the_wire(ours.openai_extra_body()["vllm_xargs"])) == ours
    assert RequestMetadata.from_dict(json.loads(json.dumps(ours.to_dict()))) == ours
    assert ours.vllm_xargs() == saga_vllm_xargs(ours)
    assert ours.extra_args() == saga_extra_args(ours)
    # Nothing is lost: every field the caller gave survives, normalised as documented.
    for name in FIELDS:
        given_value = d.get(name)
        got = getattr(ours, name)
        if name in RANGES and given_value is not None:
            assert got == float(given_value)
        elif name in ("agent_type", "aeg_node", "pending_tool"):
            assert got == (given_value or None)
        elif name in d:
            assert got == given_value


@settings(max_examples=100, deadline=None)
@given(prefetch=st.booleans(), final=st.booleans(), tool=st.none() | st.just("") | names)
def test_prefetch_needs_a_pending_tool_and_is_never_final(prefetch: bool, final: bool,
                                                          tool: str | None) -> None:
    d = {"session_id": "s", "prefetch": prefetch, "final": final, "pending_tool": tool}
    valid = not (prefetch and (final or not tool))
    assert isinstance(_parse({"saga": d}), SagaRequestMeta) == valid
    assert isinstance(_parse({"saga_" + k: v for k, v in d.items() if v is not None}),
                      SagaRequestMeta) == valid
    if not valid:
        with pytest.raises(MetadataError, match=r"saga\.prefetch") as err:
            RequestMetadata(**d)  # type: ignore[arg-type]
        assert err.value.field == "prefetch"


def test_known_defects_stay_fixed() -> None:
    """Inputs that once escaped as OverflowError/ValueError or were accepted on one side only."""
    for bad in ({"tool_latency_s": 10**400}, {"deadline_s": float("inf")},
                {"tool_latency_s": float("inf")}, {"final": 10**5000}, {"tenant_id": ""},
                {"pending_tool": 3}, {"prefetch": True}):
        d = {"session_id": "s", **bad}
        field = next(iter(bad))
        err = _parse({"saga": d})
        assert isinstance(err, MetadataError) and err.field == field, (d, err)
        assert f"saga.{field}" in str(err)
    with pytest.raises(MetadataError, match="saga_final"):
        parse_saga_meta({"saga_session_id": "s", "saga_final": 10**5000})
    # An empty hint is no hint, in both forms (vllm_xargs cannot carry null).
    assert parse_saga_meta({"saga": {"session_id": "s", "agent_type": ""}}) == \
        parse_saga_meta({"saga_session_id": "s", "saga_agent_type": ""}) == RequestMetadata("s")
