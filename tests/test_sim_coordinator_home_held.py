"""The simulator and SAGA's coordinator tell the router the same ``home_held`` for the same pin
and tool latency, and an affinity router that weighs it turns it into the same decision in both."""

from __future__ import annotations

import pytest

from saga.bench.sim.pins import PinBook
from saga.coordinator.core import CoordinatorCore
from saga.policy.presets import Preset, get_preset, policy
from saga.policy.routing import RouteRequest


def _weighing() -> Preset:
    """saga_eta with its affinity router told to weigh ``home_held``."""
    p = get_preset("saga_eta")
    return p.derive("saga_eta_weighing", "weighs home_held",
                    router=p.router.with_kwargs(weigh_home_held=True))


def _core(ttl: float) -> CoordinatorCore:
    preset = _weighing().derive("saga_eta_fixed_pin", "a fixed pin",
                                ttl=policy("ttl", "fixed", ttl_max=ttl))
    core = CoordinatorCore(bundle=preset.build(), final_grace_s=5.0, session_idle_s=600.0)
    for w in ("w0", "w1"):
        core.register(w, f"node-{w}", 4, 0.0)
    assert core.route("s", "t", 0.0).worker_id == "w0"
    core.heartbeat("w0", 0.5, -1.0, (), 0.0, 0.5)  # home below theta: the spec rule stays
    core.heartbeat("w1", 0.0, -1.0, (), 0.0, 0.5)
    return core


@pytest.mark.parametrize(("ttl", "latency"), [(4.0, 1.0), (4.0, 4.0), (4.0, 9.0), (0.0, 2.0)])
def test_simulator_and_coordinator_route_a_returning_session_alike(ttl: float,
                                                                   latency: float) -> None:
    start = 1.0
    core = _core(ttl)
    assert core.tool_started("s", "search", 0.5, start) == ttl
    core.tool_finished("s", "search", latency)
    told = core.home_held(core.session("s"), start + latency)

    pins = PinBook()
    pins.granted("s", start, ttl)
    sim_told = pins.home_held("s", start + latency, latency)
    assert sim_told == told
    assert (told is None) == (latency <= ttl)

    router = _weighing().build().router
    loads = {"w0": 0.0, "w1": 0.0}
    assert router.route(RouteRequest("s", now=0.0), loads) == "w0"
    sim_dst = router.route(RouteRequest("s", now=start + latency, home_held=sim_told),
                           {"w0": 0.5, "w1": 0.0})
    assert core.route("s", "t", start + latency).worker_id == sim_dst
    assert sim_dst == ("w0" if latency <= ttl else "w1")
