"""The scheduler config: presets, layer overrides, plain-data round trips, resolution order,
and the policy objects a scheduler builds from it (the same classes the simulator's bundle has)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from typing import Any

import pytest

from saga.policy.errors import SagaConfigError
from saga.policy.eviction import KVFlowPolicy, LRUPolicy, WALRUPolicy
from saga.policy.presets import PRESETS, get_preset
from saga.policy.queueing import FCFSQueue, HybridQueue
from saga.policy.ttl import ContinuumTTL, FixedTTL, ToolCallTTL
from saga.vllm.config import ENV_VAR, PRESET_ENV_VAR, SagaSchedulerConfig
from saga.vllm.policies import (
    NATIVE_LRU,
    STEPS_TO_EXEC,
    WALRU_SCORE,
    build_scheduler_policies,
)


class VllmConfig:
    def __init__(self, saga: Any = None) -> None:
        self.additional_config: dict[str, Any] = {} if saga is None else {"saga": saga}


def test_default_is_the_stock_engine() -> None:
    cfg = SagaSchedulerConfig()
    assert cfg.preset == "vllm_apc" and cfg.stock
    assert SagaSchedulerConfig.from_dict(cfg.to_dict()) == cfg
    assert SagaSchedulerConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_accepted_and_simulated_as_is(name: str) -> None:
    cfg = SagaSchedulerConfig.from_preset(name)
    preset = cfg.effective_preset()
    # The preset unchanged, except that the TTL takes the engine's cap and tool prior.
    assert replace(preset, ttl=PRESETS[name].ttl) == PRESETS[name]
    if preset.ttl is not None:
        assert dict(preset.ttl.kwargs) == {"ttl_max": cfg.ttl_max_s,
                                           "default_p95_s": cfg.default_tool_p95_s}
    assert SagaSchedulerConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize(("name", "stock"), [
    ("vllm_apc", True), ("vllm", True), ("sglang", True), ("llumnix", True),
    ("saga", False), ("vllm_kvflow", False), ("trt_llm_scaffolding", False),
    ("autellix", False), ("continuum", False)])
def test_stock_means_vllms_own_scheduler(name: str, stock: bool) -> None:
    assert SagaSchedulerConfig.from_preset(name).stock is stock


def test_layer_overrides() -> None:
    cfg = SagaSchedulerConfig.from_preset("saga", ttl="off", queue="fcfs", fairness="off",
                                          eviction="lru")
    p = cfg.effective_preset()
    assert p.ttl is None and p.fairness is None and p.queue.name == "fcfs"
    assert p.eviction.name == "lru" and dict(p.eviction.kwargs) == {}  # walru's weights dropped
    assert p.router == PRESETS["saga"].router  # not the engine's: left as the preset has it
    assert "ttl=off" in p.name and cfg.stock
    tuned = SagaSchedulerConfig.from_preset(
        "saga", policy_kwargs={"eviction": {"alpha": 0.6}, "queue": {"max_active": 4}})
    p = tuned.effective_preset()
    assert dict(p.eviction.kwargs) == {"alpha": 0.6, "beta": 0.5, "gamma": 0.2}
    assert dict(p.queue.kwargs) == {"max_active": 4}
    assert SagaSchedulerConfig.from_dict(json.loads(tuned.to_json())) == tuned
    continuum = SagaSchedulerConfig(ttl="continuum", ttl_max_s=60.0).effective_preset()
    assert continuum.ttl is not None and continuum.ttl.kwargs["ttl_max"] == 60.0


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"preset": "vllm_v2"}, "valid presets: autellix, continuum"),
    ({"queue": "lifo"}, "queue must be one of atlas, bfs, dfs, fcfs, hybrid"),
    ({"eviction": "off"}, "eviction must be one of"),
    ({"ttl": True}, "ttl must be one of continuum, fixed, tool_call, value, off"),
    ({"pin_cap_fraction": 1.5}, "pin_cap_fraction"),
    ({"ttl_max_s": -1.0}, "ttl_max_s"),
    ({"pending_tool_reuse": 2.0}, "pending_tool_reuse"),
    ({"policy_kwargs": {"router": {}}}, "unknown layer(s) ['router']"),
    ({"policy_kwargs": {"eviction": {"alpha": -0.1}}}, "alpha"),
    ({"policy_kwargs": {"queue": {"depth": 3}}}, "the queue policy fcfs(depth=3) cannot be built"),
    ({"policy_kwargs": {"ttl": {"seconds": 3}}}, "ttl layer is off"),
    ({"ttl": "fixed", "policy_kwargs": {"ttl": {"ttl_max": 3}}}, "set the engine knob ttl_max_s"),
])
def test_errors_say_what_is_wrong(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(SagaConfigError) as err:
        SagaSchedulerConfig(**kwargs)
    assert needle in str(err.value)


def test_unknown_fields_and_old_switches_are_rejected_by_name() -> None:
    with pytest.raises(SagaConfigError,
                       match=r"unknown SagaSchedulerConfig field\(s\) \['walru'\]"):
        SagaSchedulerConfig.from_preset("saga", walru=True)
    with pytest.raises(SagaConfigError, match="colour"):
        SagaSchedulerConfig.from_dict({"colour": "red"})


def test_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(PRESET_ENV_VAR, raising=False)
    assert SagaSchedulerConfig.resolve(VllmConfig()) == SagaSchedulerConfig()
    monkeypatch.setenv(PRESET_ENV_VAR, "sglang")
    assert SagaSchedulerConfig.resolve(VllmConfig()).preset == "sglang"
    monkeypatch.setenv(ENV_VAR, json.dumps({"preset": "saga", "fairness": "off"}))
    got = SagaSchedulerConfig.resolve(VllmConfig())
    assert got.preset == "saga" and got.fairness == "off"  # the whole config wins
    assert SagaSchedulerConfig.resolve(VllmConfig("autellix")).preset == "autellix"
    assert SagaSchedulerConfig.resolve(VllmConfig({"ttl": "fixed"})).ttl == "fixed"
    monkeypatch.setenv(ENV_VAR, "{not json")
    with pytest.raises(SagaConfigError, match=ENV_VAR):
        SagaSchedulerConfig.resolve(None)
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv(PRESET_ENV_VAR, "nope")
    with pytest.raises(SagaConfigError, match="unknown preset 'nope'"):
        SagaSchedulerConfig.resolve(None)


def _same_params(a: object, b: object) -> bool:
    """Same type and the same dataclass fields, a fresh estimator aside."""
    fields = [f.name for f in dataclasses.fields(a) if f.name != "estimator"]  # type: ignore[arg-type]
    return type(a) is type(b) and all(getattr(a, n) == getattr(b, n) for n in fields) and \
        type(getattr(a, "estimator", None)) is type(getattr(b, "estimator", None))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_scheduler_policies_are_the_simulators(name: str) -> None:
    """The objects a scheduler runs are those the simulator builds from the same preset."""
    cfg = SagaSchedulerConfig.from_preset(name)
    got = build_scheduler_policies(cfg)
    sim = get_preset(name).build()
    sim_engine = sim.engine(capacity_per_s=cfg.afs_capacity_tokens_per_s)
    # Frozen dataclasses compare type and parameters; eta's carries its own estimator (state).
    assert got.eviction == sim_engine.eviction or _same_params(got.eviction, sim_engine.eviction)
    assert type(got.queue) is type(sim_engine.queue)
    assert type(got.fairness) is type(sim_engine.fairness)
    assert type(got.ttl) is type(sim.ttl)
    assert got.bundle.preset == cfg.effective_preset()


def test_enactment_follows_the_policy_object() -> None:
    def built(name: str, **kw: Any) -> Any:
        return build_scheduler_policies(SagaSchedulerConfig.from_preset(name, **kw))

    saga = built("saga", policy_kwargs={"eviction": {"alpha": 0.7}})
    assert isinstance(saga.eviction, WALRUPolicy) and saga.enactment.mode == WALRU_SCORE
    assert saga.enactment.queue_kwargs == {"walru": True, "alpha": 0.7, "beta": 0.5,
                                           "gamma": 0.2}
    assert isinstance(saga.queue, HybridQueue) and not saga.native_queue
    assert isinstance(saga.ttl, ToolCallTTL) and saga.ttl.ttl_max == 300.0
    kvflow = built("vllm_kvflow")
    assert isinstance(kvflow.eviction, KVFlowPolicy) and kvflow.enactment.mode == STEPS_TO_EXEC
    plain = built("vllm")
    assert isinstance(plain.eviction, LRUPolicy) and plain.enactment.mode == NATIVE_LRU
    assert isinstance(plain.queue, FCFSQueue) and plain.native_queue
    fixed = built("trt_llm_scaffolding", ttl_max_s=42.0).ttl
    assert isinstance(fixed, FixedTTL) and fixed.ttl("any", 0.0) == 42.0
    assert isinstance(built("continuum").ttl, ContinuumTTL)
    assert not built("saga", queue="fcfs").native_queue  # AFS still orders across tenants
