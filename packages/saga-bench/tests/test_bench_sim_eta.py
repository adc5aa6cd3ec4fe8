"""``saga_eta`` in the simulator: deterministic, and its next-use model is fed what SAGA's
scheduler sees (calls arriving, calls ending with their pending tool), nothing else."""

from __future__ import annotations

import dataclasses
import math

import pytest

from saga.bench.sim import SimConfig, Simulation, simulate
from saga.bench.workload import Call, Task, Workload, WorkloadSpec, build_workload
from saga.policy.nextuse import NextUseEstimator, Phase
from saga.policy.presets import PRESETS
from saga.policy.ttl import aeg_latency_source


def _work(seed: int = 0, n: int = 10) -> Workload:
    return build_workload(WorkloadSpec("swe", n, 1.0, seed))


def _tight(one_node: SimConfig) -> SimConfig:
    """A pool small enough that sessions' contexts compete for it."""
    return dataclasses.replace(one_node, hbm_blocks=600)


def _estimators(sim: Simulation) -> list[NextUseEstimator]:
    out = [i.cache.policy.next_use_model() for i in sim.instances]
    assert all(e is not None for e in out)
    return [e for e in out if e is not None]


def test_saga_eta_same_seed_same_numbers(one_node: SimConfig) -> None:
    cfg = _tight(one_node)
    a = simulate(PRESETS["saga_eta"], _work(2), cfg)
    b = simulate(PRESETS["saga_eta"], _work(2), cfg)
    assert a.to_dict() == b.to_dict() and a.tct_by_task == b.tct_by_task
    assert a.calls == _work(2).calls


def test_the_simulator_feeds_each_instance_its_own_next_use_model(one_node: SimConfig) -> None:
    w = _work(1)
    sim = Simulation(PRESETS["saga_eta"].build(), _tight(one_node))
    sim.run(w)
    ests = _estimators(sim)
    assert len({id(e) for e in ests}) == len(ests)  # one per engine
    # Every task's last call was observed as final by the instance that served it, which
    # then forgot the session (nothing in flight or in a tool there any more).
    assert sum(e.sessions_ended for e in ests) == len(w.tasks)
    for t in w.tasks:
        assert all(e.phase(t.task_id) != Phase.IN_FLIGHT for e in ests), t.task_id
        assert all(e.session_next_use(t.task_id, 1e9) == math.inf for e in ests)
    # Calls arriving after a tool taught the tools' latency (gap since the previous call).
    tools = {c.tool for t in w.tasks for c in t.calls if c.tool is not None}
    learnt = sum(e.latency.n_observations(tool)  # type: ignore[attr-defined]
                 for e in ests for tool in tools)
    followups = sum(len(t.calls) - 1 for t in w.tasks)
    assert 0 < learnt <= followups
    # New sessions of the agent type were counted, and the instances' queueing delay set.
    agent = w.tasks[0].agent_type
    assert any(math.isfinite(e.arrivals.mean_gap(agent)) for e in ests)
    assert [e.queue_delay_s for e in ests] == [i.queue_delay_ema for i in sim.instances]


def test_other_presets_get_no_next_use_model(one_node: SimConfig) -> None:
    for name in ("saga", "vllm_apc", "vllm_kvflow"):
        sim = Simulation(PRESETS[name].build(), one_node)
        assert all(i.cache.policy.next_use_model() is None for i in sim.instances)


def test_value_ttl_pins_in_the_simulator(one_node: SimConfig) -> None:
    runs = {}
    for name in ("saga_eta", "saga_eta_no_ttl"):
        sim = Simulation(PRESETS[name].build(), one_node)
        sim.run(_work(3))
        runs[name] = sim.n
    # An uncrowded pool: the value TTL pins, and pinned sessions come back within their TTL.
    assert runs["saga_eta"].pins > 0 and runs["saga_eta"].pins_held > 0
    assert runs["saga_eta_no_ttl"].pins == 0


def test_the_model_learns_a_tool_from_the_gap_the_scheduler_sees(one_node: SimConfig) -> None:
    """A call that returns after a 7 s tool reaches its instance 7 s after the previous call
    ended: that gap, not the drawn duration read ahead nor the next call's end, is what the
    model learns (fed at arrival, as the scheduler is)."""
    calls = (Call(600, 50, "edit", 7.0), Call(300, 50, None, 0.0))
    w = Workload(WorkloadSpec("swe", 1, 1.0, 0), [Task("a", "swe-bench", "default", 0.0, calls,
                                                       system_key="swe", system_tokens=512)])
    sim = Simulation(PRESETS["saga_eta"].build(), one_node)
    sim.run(w)
    fits = [e.latency.latency("edit") for e in _estimators(sim)  # type: ignore[attr-defined]
            if e.latency.n_observations("edit")]  # type: ignore[attr-defined]
    one = aeg_latency_source()  # the same prior, told of exactly one 7 s call
    one.observe("edit", 7.0)
    assert len(fits) == 1 and fits[0].median() == pytest.approx(
        one.latency("edit").median())  # type: ignore[attr-defined]
