"""Presets: the registry, fresh builds, and ablations that differ from SAGA in one field."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from saga.policy import presets as presets_module
from saga.policy import registry
from saga.policy.afs import AFS
from saga.policy.autellix import ATLAS, AutellixRouter
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import (
    BeladyPolicy,
    KVFlowPolicy,
    LRUPolicy,
    PrefixLRUPolicy,
    RadixLRUPolicy,
    WALRUPolicy,
)
from saga.policy.presets import PRESETS, PolicySpec, Preset, get_preset, policy
from saga.policy.queueing import FCFSQueue, HybridQueue, ProgramFCFSQueue
from saga.policy.routing import (
    AffinityRouter,
    CacheAwareRouter,
    LeastLoadedRouter,
    PrefixAffinityRouter,
)
from saga.policy.stealing import WorkStealer
from saga.policy.ttl import ContinuumTTL, FixedTTL, ToolCallTTL

SPEC_PRESETS = {
    "vllm", "vllm_apc", "sglang", "llumnix", "trt_llm_scaffolding", "vllm_kvflow", "saga",
    "saga_no_walru", "saga_no_ttl", "saga_no_prefetch", "saga_no_affinity", "saga_no_stealing",
    "saga_no_afs",
}

ETA_PRESETS = {"saga_eta", "saga_eta_no_eta", "saga_eta_no_ttl", "saga_eta_no_value_ttl",
               "saga_eta_no_prefetch", "saga_eta_no_affinity", "saga_eta_no_stealing",
               "saga_eta_no_afs"}


def test_registry_has_spec_presets_and_peers() -> None:
    assert set(PRESETS) == SPEC_PRESETS | {"continuum", "autellix", "saga_kvmove"} | ETA_PRESETS
    assert all(name == p.name for name, p in PRESETS.items())
    assert all(p.description for p in PRESETS.values())


def test_get_preset_unknown_lists_valid_names() -> None:
    with pytest.raises(SagaConfigError, match=r"unknown preset .nope.*saga_no_afs"):
        get_preset("nope")
    assert get_preset("saga") is PRESETS["saga"]


def test_saga_builds_its_policies() -> None:
    b = get_preset("saga").build()
    e = b.engine()
    assert isinstance(e.eviction, WALRUPolicy)
    assert (e.eviction.alpha, e.eviction.beta, e.eviction.gamma) == (0.3, 0.5, 0.2)
    assert isinstance(b.ttl, ToolCallTTL)
    assert isinstance(b.router, AffinityRouter) and b.router.theta == 0.8
    assert isinstance(b.stealer, WorkStealer)
    assert (b.stealer.t_idle, b.stealer.r_max) == (0.1, 2.0)
    assert isinstance(e.queue, HybridQueue)
    assert isinstance(e.fairness, AFS)
    assert b.dram_tier and b.prefetch and b.prefix_caching and not b.migration
    # The real SAGA coordinator re-homes a session and the new engine prefills: no KV moves.
    assert not b.rehome_kv and b.rescheduler is None


def test_build_makes_fresh_objects() -> None:
    a, b = get_preset("saga").build(), get_preset("saga").build()
    assert a.router is not b.router and a.ttl is not b.ttl
    assert a.engine().queue is not a.engine().queue


ABLATION_FIELD = {
    "saga_no_walru": "eviction", "saga_no_ttl": "ttl", "saga_no_prefetch": "prefetch",
    "saga_no_affinity": "router", "saga_no_stealing": "stealing", "saga_no_afs": "fairness",
}


@pytest.mark.parametrize(("name", "changed"), sorted(ABLATION_FIELD.items()))
def test_ablation_differs_from_saga_in_one_field(name: str, changed: str) -> None:
    saga, ablation = get_preset("saga"), get_preset(name)
    diff = {f.name for f in dataclasses.fields(Preset)
            if f.compare and getattr(saga, f.name) != getattr(ablation, f.name)}
    assert diff == {"name", "description", changed}
    # The ablation's mechanism list loses what the replaced field modelled, nothing else.
    assert {m.field for m in saga.mechanisms} - {m.field for m in ablation.mechanisms} == {
        changed}


def test_saga_kvmove_is_saga_plus_kv_movement_and_says_so() -> None:
    saga, kvmove = get_preset("saga"), get_preset("saga_kvmove")
    diff = {f.name for f in dataclasses.fields(Preset)
            if f.compare and getattr(saga, f.name) != getattr(kvmove, f.name)}
    assert diff == {"name", "description", "rehome_kv"} and kvmove.rehome_kv
    assert "not the real SAGA" in kvmove.description
    assert kvmove.layers()["movement"] == "rehome"


def test_ablation_builds() -> None:
    assert isinstance(get_preset("saga_no_walru").build().engine().eviction, PrefixLRUPolicy)
    assert get_preset("saga_no_ttl").build().ttl is None
    nopf = get_preset("saga_no_prefetch").build()
    assert nopf.dram_tier and not nopf.prefetch
    assert isinstance(get_preset("saga_no_affinity").build().router, LeastLoadedRouter)
    assert get_preset("saga_no_stealing").build().stealer is None
    assert get_preset("saga_no_afs").build().engine().fairness is None


@pytest.mark.parametrize(
    ("name", "eviction", "router", "queue", "ttl"),
    [
        ("vllm", LRUPolicy, LeastLoadedRouter, FCFSQueue, None),
        ("vllm_apc", PrefixLRUPolicy, PrefixAffinityRouter, FCFSQueue, None),
        ("sglang", RadixLRUPolicy, CacheAwareRouter, FCFSQueue, None),
        ("llumnix", PrefixLRUPolicy, LeastLoadedRouter, FCFSQueue, None),
        ("trt_llm_scaffolding", RadixLRUPolicy, LeastLoadedRouter, FCFSQueue, FixedTTL),
        ("vllm_kvflow", KVFlowPolicy, PrefixAffinityRouter, FCFSQueue, None),
        ("continuum", PrefixLRUPolicy, PrefixAffinityRouter, ProgramFCFSQueue, ContinuumTTL),
        ("autellix", PrefixLRUPolicy, AutellixRouter, ATLAS, None),
    ],
)
def test_peer_presets(name: str, eviction: type, router: type, queue: type,
                      ttl: type | None) -> None:
    b = get_preset(name).build()
    e = b.engine()
    assert type(e.eviction) is eviction
    assert type(b.router) is router
    assert type(e.queue) is queue
    assert (b.ttl is None) if ttl is None else isinstance(b.ttl, ttl)
    assert b.stealer is None and e.fairness is None


def test_flags_of_peers() -> None:
    assert not get_preset("vllm").prefix_caching and not get_preset("vllm").dram_tier
    assert get_preset("llumnix").migration and get_preset("llumnix").build().rescheduler
    kv = get_preset("vllm_kvflow")
    assert kv.dram_tier and kv.prefetch
    # vLLM's CPU offloading, SGLang's HiCache, TensorRT-LLM's host offloading.
    for name in ("vllm_apc", "sglang", "llumnix", "trt_llm_scaffolding", "continuum",
                 "autellix"):
        assert get_preset(name).dram_tier and not get_preset(name).prefetch, name
    assert not any(p.rehome_kv for p in PRESETS.values() if not p.is_saga)


def test_no_preset_uses_belady() -> None:
    assert all(p.eviction.factory is not BeladyPolicy for p in PRESETS.values())


def test_policy_spec_build_and_overrides() -> None:
    spec = policy("router", "affinity", theta=0.7)
    assert spec == PolicySpec("router", "affinity", {"theta": 0.7})
    assert spec.factory is AffinityRouter
    assert spec.build().theta == 0.7
    assert spec.build(theta=0.9).theta == 0.9
    assert spec.with_kwargs(theta=0.5).build().theta == 0.5
    assert spec.describe() == "affinity(theta=0.7)"
    with pytest.raises(TypeError):
        spec.kwargs["theta"] = 1.0  # type: ignore[index]
    with pytest.raises(SagaConfigError, match=r"unknown router policy 'nope'.*affinity"):
        policy("router", "nope")
    with pytest.raises(SagaConfigError, match=r"unknown policy layer 'routers'"):
        policy("routers", "affinity")


def test_a_preset_rejects_a_policy_of_the_wrong_layer() -> None:
    with pytest.raises(SagaConfigError, match=r"its router is a queue policy"):
        get_preset("saga").derive("bad", "", router=policy("queue", "fcfs"))


def test_layers_names_every_layer_and_switch() -> None:
    layers = get_preset("saga").layers()
    assert set(registry.LAYERS) <= set(layers) and {"tier", "movement"} <= set(layers)
    assert layers["eviction"] == {"name": "walru",
                                  "kwargs": {"alpha": 0.3, "beta": 0.5, "gamma": 0.2}}
    assert (layers["tier"], layers["movement"]) == ("dram_prefetch", "none")
    assert get_preset("llumnix").layers()["movement"] == "migrate"
    assert get_preset("vllm").layers()["tier"] == "hbm"
    for layer in (*registry.LAYERS, *registry.SWITCH_LAYERS):
        assert registry.names(layer)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_round_trips_through_its_layers(name: str) -> None:
    p = PRESETS[name]
    back = Preset.from_layers(p.name, json.loads(json.dumps(p.layers())), p.description)
    assert back == p


def test_from_layers_names_what_is_wrong() -> None:
    layers = get_preset("saga").layers()
    with pytest.raises(SagaConfigError, match=r"unknown layer\(s\) \['routing'\]"):
        Preset.from_layers("x", {**layers, "routing": None})
    with pytest.raises(SagaConfigError, match=r"layer 'router' is required"):
        Preset.from_layers("x", {**layers, "router": None})
    with pytest.raises(SagaConfigError, match=r"unknown tier policy 'ssd'"):
        Preset.from_layers("x", {**layers, "tier": "ssd"})
    with pytest.raises(SagaConfigError, match=r"unknown queue policy 'lifo'"):
        Preset.from_layers("x", {**layers, "queue": {"name": "lifo"}})


def test_prefetch_without_dram_is_rejected() -> None:
    with pytest.raises(SagaConfigError, match="prefetch"):
        dataclasses.replace(get_preset("saga"), dram_tier=False)


def test_no_branching_on_preset_names() -> None:
    source = inspect.getsource(presets_module)
    for name in PRESETS:
        assert f'== "{name}"' not in source and f"== '{name}'" not in source


def test_saga_eta_is_saga_with_next_use_eviction_and_the_value_ttl() -> None:
    from saga.policy.eviction import ETAPolicy
    from saga.policy.ttl_value import ValueTTL

    eta, saga = get_preset("saga_eta"), get_preset("saga")
    b = eta.build()
    e = b.engine()
    assert isinstance(e.eviction, ETAPolicy) and e.eviction.next_use_model() is not None
    assert b.engine().eviction.next_use_model() is not e.eviction.next_use_model()
    assert isinstance(b.ttl, ValueTTL) and eta.is_saga
    same = ("queue", "stealing", "fairness", "dram_tier", "prefetch", "rehome_kv")
    assert all(getattr(eta, f) == getattr(saga, f) for f in same)
    # The router is SAGA's affinity: weighing how much KV a lapsed pin left measured slower.
    assert eta.router == saga.router
    assert not b.router.weigh_home_held  # type: ignore[attr-defined]
    assert not saga.build().router.weigh_home_held  # type: ignore[attr-defined]
    assert saga.eviction.name == "walru"  # SAGA stays the paper's policy
    # Each ablation differs from saga_eta in exactly one layer.
    for name in ETA_PRESETS - {"saga_eta"}:
        diff = [k for k, v in get_preset(name).layers().items() if eta.layers()[k] != v]
        assert len({d.removesuffix("_tier") for d in diff} - {"tier"}) == 1, (name, diff)
    assert isinstance(get_preset("saga_eta_no_value_ttl").build().ttl, ToolCallTTL)
