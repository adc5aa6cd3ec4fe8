"""The simulator: determinism, conservation, and orderings known in advance."""

from __future__ import annotations

import dataclasses

import pytest

from saga.bench.sim import SimConfig, Simulation, simulate
from saga.bench.workload import Call, Task, Workload, WorkloadSpec, build_workload, dumps_tasks
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS


def _small(seed: int = 0, kind: str = "swe", n: int = 6) -> Workload:
    return build_workload(WorkloadSpec(kind, n, 1.0, seed))


def test_same_seed_same_numbers(one_node: SimConfig) -> None:
    a = simulate(PRESETS["saga"], _small(3), one_node)
    b = simulate(PRESETS["saga"], _small(3), one_node)
    assert a.to_dict() == b.to_dict()
    assert a.tct_by_task == b.tct_by_task
    assert dumps_tasks(_small(3)) == dumps_tasks(_small(3))
    assert dumps_tasks(_small(3)) != dumps_tasks(_small(4))


@pytest.mark.parametrize("preset", ["vllm", "vllm_apc", "sglang", "llumnix", "saga",
                                    "continuum", "autellix", "vllm_kvflow", "saga_kvmove",
                                    "trt_llm_scaffolding"])
def test_every_call_completes_once_and_tokens_add_up(preset: str, one_node: SimConfig) -> None:
    w = _small(1, "mixed", 8)
    sim = Simulation(PRESETS[preset].build(), one_node)
    r = sim.run(w)
    assert r.tasks == len(w.tasks)
    assert r.calls == w.calls
    assert all(s.next_call == len(s.task.calls) for s in sim.states)
    assert r.prompt_tokens == sum(t.prompt_tokens for t in w.tasks)
    assert r.output_tokens == sum(c.output_tokens for t in w.tasks for c in t.calls)
    assert r.recomputed_tokens == r.prompt_tokens - r.hit_tokens
    assert 0 <= r.reprefilled_tokens <= r.recomputed_tokens
    for inst in sim.instances:
        inst.cache.check_invariants()
        assert not inst.waiting and not inst.prefilling and not inst.decoding
        assert inst.demand_tokens == 0
    assert all(t > 0 for t in r.tct_by_task.values())


def test_no_prefix_caching_recomputes_everything(one_node: SimConfig) -> None:
    r = simulate(PRESETS["vllm"], _small(2), one_node)
    assert r.hit_tokens == 0 and r.eviction_rate == 1.0
    apc = simulate(PRESETS["vllm_apc"], _small(2), one_node)
    assert apc.hit_tokens > 0
    assert apc.tct_mean_s < r.tct_mean_s


def _spread_tasks(n: int) -> Workload:
    """Tasks far apart in time, zero tool latency: never two on the cluster at once."""
    calls = (*tuple(Call(600, 50, "t", 0.0) for _ in range(5)), Call(600, 50, None, 0.0))
    tasks = [Task(f"t{i}", "swe-bench", "default", 1000.0 * i, calls, system_key="swe",
                  system_tokens=512) for i in range(n)]
    return Workload(WorkloadSpec("swe", n, 1.0, 0), tasks)


def test_with_ample_memory_and_no_contention_prefix_caching_presets_tie(
        one_node: SimConfig) -> None:
    w = _spread_tasks(3)
    tct = {p: simulate(PRESETS[p], w, one_node).tct_mean_s
           for p in ("vllm_apc", "sglang", "saga", "saga_no_walru", "saga_no_ttl",
                     "trt_llm_scaffolding", "autellix")}
    base = tct["vllm_apc"]
    assert all(v == pytest.approx(base, rel=1e-9) for v in tct.values()), tct
    # Alone on the cluster with its prefix cached, a task runs at its ideal time.
    sim = Simulation(PRESETS["saga"].build(), one_node)
    r = sim.run(w)
    assert r.latency_vs_ideal == pytest.approx(1.0, rel=0.02)


def test_memory_pressure_makes_lru_lose_context(one_node: SimConfig) -> None:
    small = dataclasses.replace(one_node, hbm_blocks=200)
    w = _small(5, "swe", 10)
    r = simulate(PRESETS["vllm_apc"], w, small)
    assert r.eviction_rate > 0 and r.reprefilled_tokens > 0
    with pytest.raises(SagaConfigError, match="hbm_blocks"):
        simulate(PRESETS["vllm_apc"], w, dataclasses.replace(one_node, hbm_blocks=40))


def test_workload_spec_errors_name_the_field() -> None:
    with pytest.raises(SagaConfigError, match="kind"):
        WorkloadSpec(kind="nope")
    with pytest.raises(SagaConfigError, match="rate_per_s"):
        WorkloadSpec(rate_per_s=0)


def test_tool_cv_changes_spread_not_mean() -> None:
    lo = build_workload(WorkloadSpec("swe", 40, 1.0, 0, tool_cv=0.5))
    hi = build_workload(WorkloadSpec("swe", 40, 1.0, 0, tool_cv=3.0))
    for tool, lat in lo.latencies["swe"].items():
        assert lat.mean() == pytest.approx(hi.latencies["swe"][tool].mean())
        assert lat.cv() < hi.latencies["swe"][tool].cv()


def test_replayed_trace_and_tenants_workloads_build() -> None:
    w = build_workload(WorkloadSpec("trace-swe", 4, 1.0, 0))
    assert len(w.tasks) == 4 and all(len(t.calls) >= 2 for t in w.tasks)
    t = build_workload(WorkloadSpec("tenants", 20, 1.0, 0), ideal=lambda task: 10.0)
    assert {x.tenant for x in t.tasks} <= {"heavy", "medium", "light"}
    assert all(x.deadline_s == pytest.approx(x.arrival_s + 30.0) for x in t.tasks)
    m = build_workload(WorkloadSpec("swe", 6, 1.0, 0, arrival="mooncake"))
    assert [x.arrival_s for x in m.tasks] == sorted(x.arrival_s for x in m.tasks)


def test_a_rehomed_session_brings_its_kv_along(one_node: SimConfig) -> None:
    """``rehome_kv`` (saga_kvmove) copies a moved session's KV to its new home; SAGA as it
    ships does not, and the session is prefilled again there."""
    from saga.policy.presets import policy

    restless = PRESETS["saga_kvmove"].derive("saga_restless", "re-homes on any load",
                                             router=policy("router", "affinity", theta=1e-6))
    w = _small(5, "swe", 10)
    moved = simulate(restless, w, one_node)
    rebuilt = simulate(dataclasses.replace(restless, rehome_kv=False), w, one_node)
    assert moved.rehomed_kv > 0 and rebuilt.rehomed_kv == 0
    assert moved.reprefilled_tokens < rebuilt.reprefilled_tokens
    assert not any(PRESETS[p].rehome_kv for p in ("vllm_apc", "saga", "saga_no_affinity"))


def test_an_idle_instance_steals_a_call_stuck_behind_a_full_kv_pool(one_node: SimConfig) -> None:
    w = build_workload(WorkloadSpec("swe", 10, 1.0, 5, max_context=20_000))
    tight = dataclasses.replace(one_node, hbm_blocks=120)
    sim = Simulation(PRESETS["saga"].build(), tight)
    r = sim.run(w)
    assert r.steals > 0 and r.tasks == len(w.tasks)
    for inst in sim.instances:
        inst.cache.check_invariants()
    assert simulate(PRESETS["saga_no_stealing"], w, tight).steals == 0


def _one_tool_task(i: int, t0: float) -> Task:
    calls = (Call(600, 50, "t", 1.0), Call(300, 50, None, 0.0))
    return Task(f"p{i}", "swe-bench", "default", t0, calls, system_key="swe", system_tokens=512)


def test_a_pin_ends_when_its_session_returns(one_node: SimConfig) -> None:
    """TRT-LLM's fixed 300 s retention: once the session's next call is admitted its own blocks
    are no longer pinned (only the shared system prompt keeps its pin to expiry)."""
    w = Workload(WorkloadSpec("swe", 1, 1.0, 0), [_one_tool_task(0, 0.0)])
    sim = Simulation(PRESETS["trt_llm_scaffolding"].build(), one_node)
    r = sim.run(w)
    assert r.ttl_accuracy == 1.0 and len(sim.pins) == 0
    cache = sim.instances[sim.states[0].home].cache
    end = sim.states[0].done_s
    assert end is not None
    pinned = int((cache.table.pinned_until > end).sum())
    assert pinned == 512 // sim.block_tokens


def test_pin_cap_releases_the_pin_expected_back_last(one_node: SimConfig) -> None:
    from saga.bench.sim.pins import PinBook
    from saga.policy.ttl import ToolCallTTL

    sim = Simulation(PRESETS["saga"].build(), dataclasses.replace(one_node, hbm_blocks=40,
                                                          block_tokens=16))
    inst = sim.instances[0]
    ttl = ToolCallTTL.with_aeg_registry()
    for _ in range(5):
        ttl.observe("fast", 0.5)
        ttl.observe("slow", 50.0)
    book = PinBook(0.5, ttl)
    fast = [1000 + i for i in range(8)]
    slow = [2000 + i for i in range(8)]
    new = [3000 + i for i in range(8)]
    for hashes in (slow, fast, new):
        inst.cache.allocate(hashes, 0.0)
        inst.cache.release(hashes, 0.0)
    book.pin(inst, "slow", slow, 0, "slow", 0.0, 100.0)
    book.pin(inst, "fast", fast, 0, "fast", 0.0, 100.0)
    assert len(book) == 2 and book.cap_releases == 0
    book.pin(inst, "new", new, 0, "fast", 0.0, 100.0)  # 24 blocks > cap of 20
    assert book.cap_releases == 1 and len(book) == 2
    assert inst.cache.pinned_until(slow[0]) == float("-inf")
    assert inst.cache.pinned_until(fast[0]) == 100.0 and inst.cache.pinned_until(new[0]) == 100.0
    book.release("fast")
    assert inst.cache.pinned_until(fast[0]) == float("-inf") and len(book) == 1


def test_llumnix_live_migrates_running_calls_off_a_full_instance(one_node: SimConfig) -> None:
    """Under KV pressure Llumnix's rescheduler moves decoding calls with their KV; every call
    still completes once and both caches stay consistent."""
    w = build_workload(WorkloadSpec("swe", 10, 1.0, 5, max_context=20_000))
    tight = dataclasses.replace(one_node, hbm_blocks=120)
    sim = Simulation(PRESETS["llumnix"].build(), tight)
    r = sim.run(w)
    assert r.migrations > 0 and r.tasks == len(w.tasks) and r.calls == w.calls
    for inst in sim.instances:
        inst.cache.check_invariants()
        assert inst.demand_tokens == 0 and not inst.decoding
    off = dataclasses.replace(PRESETS["llumnix"], migration=False)
    assert simulate(off, w, tight).migrations == 0


def test_a_swap_in_delays_only_the_call_that_needs_it(one_node: SimConfig) -> None:
    """A call whose prefix is in DRAM waits for its PCIe load; a call admitted with it whose
    prefix is in HBM starts its prefill at once."""
    from saga.bench.sim.entities import Request, TaskState
    from saga.policy.queueing import QueuedRequest

    sim = Simulation(PRESETS["vllm_apc"].build(), dataclasses.replace(one_node, hbm_blocks=8))
    inst = sim.instances[0]
    cold, warm = list(range(100, 104)), list(range(200, 204))
    inst.cache.allocate(cold, 0.0)
    inst.cache.release(cold, 0.0)
    assert inst.cache.swap_out(cold, 0.0) > 0
    calls = []
    for i, hashes in enumerate((cold, warm)):
        st = TaskState(_spread_tasks(2).tasks[i], i)
        req = Request(st, 0, 0.0, 4 * 256 + 10, 8, 0, hashes)
        req.queued = QueuedRequest(req.request_id, st.task_id, 0.0)
        inst.enqueue(req)
        calls.append(req)
    admitted = inst.admit(0.0)
    assert admitted == calls
    assert [r for _, _, r in inst.loading] == [calls[0]] and list(inst.prefilling) == [calls[1]]
    ready = inst.loading[0][0]
    assert ready > 0 and inst.plan(0.0) is not None
    inst.advance(ready)
    assert not inst.loading and calls[0] in inst.prefilling
