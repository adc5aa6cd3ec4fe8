"""One preset, one set of policies everywhere: for each of the 24 presets by name, the
simulator's instances, a ``SagaScheduler`` in a real vLLM engine (tiny model) and a
``CoordinatorCore`` hold the same policy classes with the same parameters.

The engine is started once; each preset gets a fresh scheduler built by vLLM's own constructor
from the engine's config (``saga.vllm.testing.swap_scheduler``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from saga.bench.sim import SimConfig, Simulation
from saga.coordinator.core import CoordinatorCore
from saga.policy.presets import PRESETS
from saga.policy.spec import REFERENCE_CLUSTER, ClusterSpec
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.models import scoped_env
from saga.vllm.testing import (
    build_tiny_llama,
    kv_bytes_for_blocks,
    swap_scheduler,
    tiny_engine_kwargs,
)

BLOCKS = 24
TWO = ClusterSpec(**{**REFERENCE_CLUSTER.__dict__, "nodes": 1, "instances": 2})


def settings(obj: object | None) -> tuple[type, dict[str, Any]] | None:
    """An object's class and public scalar settings (what its constructor was given)."""
    if obj is None:
        return None
    return type(obj), {k: v for k, v in vars(obj).items()
                       if not k.startswith("_") and isinstance(v, int | float | str | bool)}


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from vllm import LLM

    gc.collect()  # let earlier modules' engines go before this one starts
    model = build_tiny_llama(Path(tmp_path_factory.getbasetemp()) / "tiny-llama")
    with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):  # the scheduler in this process
        engine = LLM(**tiny_engine_kwargs(model, kv_bytes_for_blocks(BLOCKS),
                                          saga=SagaSchedulerConfig()))
    yield engine
    del engine


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_simulator_the_engine_and_the_coordinator_hold_the_same_policies(
        llm: Any, name: str) -> None:
    sim = Simulation(PRESETS[name].build(), SimConfig(cluster=TWO))
    inst = sim.instances[0]
    cfg = SagaSchedulerConfig.from_preset(name)
    sched = swap_scheduler(llm, cfg.to_dict())
    try:
        core = CoordinatorCore.from_preset(name)
        engine = sched.policies
        # Engine-local layers: the simulator's instance and the vLLM scheduler.
        assert settings(engine.eviction) == settings(inst.cache.policy)
        assert settings(engine.queue) == settings(inst.queue)
        # AFS's capacity is each deployment's own (the instance's prefill rate, the engine's
        # configured tokens/s, the coordinator's): the class and the other settings agree.
        for afs in (engine.fairness, core.afs):
            assert (afs is None) == (inst.fairness is None)
            if afs is not None:
                assert type(afs) is type(inst.fairness)
                assert afs.epoch_s == inst.fairness.epoch_s  # type: ignore[union-attr]
        # The TTL policy: one per deployment, same class and TTL_max everywhere.
        assert settings(engine.ttl) == settings(sim.ttl) == settings(core.ttl)
        # Deployment-wide layers: the simulator's and the coordinator's.
        assert settings(core.router) == settings(sim.router)
        assert settings(core.stealer) == settings(sim.stealer)
        assert sched.saga_stats()["preset"] == core.preset == sim.preset.name == name
    finally:
        swap_scheduler(llm, SagaSchedulerConfig().to_dict())


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.ttl is not None))
def test_the_tool_latency_prior_is_the_same_everywhere(llm: Any, name: str) -> None:
    """A tool nobody has seen yet gets the same pin everywhere (saga-aeg's prior)."""
    sim_ttl = Simulation(PRESETS[name].build(), SimConfig(cluster=TWO)).ttl
    sched = swap_scheduler(llm, SagaSchedulerConfig.from_preset(name).to_dict())
    try:
        core_ttl = CoordinatorCore.from_preset(name).ttl
        pins = {t.ttl("never-seen", 0.5, queue_delay_s=0.1, reload_s=0.2)  # type: ignore[union-attr]
                for t in (sim_ttl, sched.ttl_policy, core_ttl)}
        assert len(pins) == 1, pins
    finally:
        swap_scheduler(llm, SagaSchedulerConfig().to_dict())
