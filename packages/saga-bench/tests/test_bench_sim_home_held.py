"""The simulator routes as SAGA's coordinator does: a session whose pin lapsed before its tool
returned is routed with ``home_held`` (which only ``saga_eta``'s affinity router weighs), and
the AEG's reuse probability reaches a TTL policy that prices it even when eviction reads none."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from saga.bench.sim import SimConfig, Simulation
from saga.bench.sim.pins import PinBook
from saga.bench.workload import Workload, WorkloadSpec, build_workload
from saga.policy.presets import PRESETS
from saga.policy.routing import AffinityRouter, RouteRequest
from saga.policy.ttl_value import ValueTTL


class _Told(AffinityRouter):
    """SAGA's affinity router, keeping what each call was routed with."""

    def __init__(self, *, weigh_home_held: bool) -> None:
        super().__init__(0.8, weigh_home_held=weigh_home_held)
        self.told: list[float | None] = []

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str:
        self.told.append(request.home_held)
        return super().route(request, loads)


class _PricedTTL(ValueTTL):
    """The value TTL, keeping the reuse probabilities it was asked to price."""

    def __init__(self) -> None:
        base = ValueTTL.with_aeg_registry()
        super().__init__(source=base.source)
        self.asked: list[float] = []

    def ttl(self, tool: str, pressure: float, *, queue_delay_s: float = 0.0,
            reload_s: float = 0.0, reuse_prob: float = 1.0,
            share: float | None = None) -> float:
        self.asked.append(reuse_prob)
        return super().ttl(tool, pressure, queue_delay_s=queue_delay_s, reload_s=reload_s,
                           reuse_prob=reuse_prob, share=share)


def _work(n: int = 24) -> Workload:
    return build_workload(WorkloadSpec("swe", n, 1.0, 0))


def _tight(one_node: SimConfig) -> SimConfig:
    return dataclasses.replace(one_node, hbm_blocks=600)


def test_pin_book_tells_what_the_coordinator_tells() -> None:
    pins = PinBook()
    assert pins.home_held("s", 5.0, 1.0) is None  # no pin granted
    pins.granted("s", 10.0, 4.0)
    assert pins.home_held("s", 13.0, 3.0) is None  # the tool returned within its pin
    assert pins.home_held("s", 20.0, 10.0) is None  # told once, at the next call
    pins.granted("s", 10.0, 4.0)
    assert pins.home_held("s", 20.0, 10.0) == 0.0  # lapsed at 14: evicted at once
    pins.granted("s", 10.0, 0.0)
    assert pins.home_held("s", 10.5, 0.5) == 0.0  # a zero pin lapses at once
    pins.granted("s", 10.0, 4.0)
    pins.forget("s")
    assert pins.home_held("s", 20.0, 10.0) is None


@pytest.mark.parametrize("weigh", [True, False])
def test_the_simulator_routes_with_home_held(one_node: SimConfig, weigh: bool) -> None:
    bundle = PRESETS["saga_eta"].build()
    router = _Told(weigh_home_held=weigh)
    sim = Simulation(dataclasses.replace(bundle, router=router), _tight(one_node))
    res = sim.run(_work())
    assert len(router.told) == res.calls
    lapsed = sum(1 for h in router.told if h == 0.0)
    assert lapsed > 0 and set(router.told) <= {None, 0.0}
    assert sim.n.pins - sim.n.pins_held == lapsed  # each tool that outlived its pin
    assert len(sim.pins._granted) == 0  # every task ended: nothing left


def test_sagas_router_ignores_home_held_in_the_simulator(one_node: SimConfig) -> None:
    """With the flag off the told router routes exactly as SAGA's, call for call."""
    cfg = _tight(one_node)
    runs = []
    for router in (_Told(weigh_home_held=False), PRESETS["saga"].build().router):
        bundle = dataclasses.replace(PRESETS["saga"].build(), router=router)
        runs.append(Simulation(bundle, cfg).run(_work()).to_dict())
    assert runs[0] == runs[1]


def test_the_value_ttl_gets_the_aegs_reuse_probability_without_eta(one_node: SimConfig) -> None:
    """``saga_eta_no_eta`` evicts by prefix LRU (no hints) but its value TTL prices the AEG's
    reuse probability: the simulator learns the AEGs for it and hands the TTL their hints."""
    work = _work()
    agents = {t.agent_type for t in work.tasks}
    learnt = {}
    for name in ("saga_eta_no_eta", "saga_no_walru"):  # value TTL / SAGA's p95 TTL, no hints
        bundle = PRESETS[name].build()
        assert not bundle.engine().eviction.reads_hints and bundle.ttl is not None
        ttl = _PricedTTL() if bundle.ttl.reads_hints else bundle.ttl
        sim = Simulation(dataclasses.replace(bundle, ttl=ttl), _tight(one_node))
        sim.run(work)
        assert not sim.reads_hints and sim.needs_hints == bundle.ttl.reads_hints
        learnt[name] = sum(sim.hinter.inference.n_tasks(a) for a in agents)
        if isinstance(ttl, _PricedTTL):
            hints = {sim._hint(t.agent_type, c.tool).reuse_prob
                     for t in work.tasks for c in t.calls if c.tool is not None}
            assert ttl.asked and set(ttl.asked) <= hints
    assert learnt == {"saga_eta_no_eta": len(work.tasks), "saga_no_walru": 0}
