"""The coordinator tells its router how much of a session's KV the home still holds: nothing
changes while the session is pinned or its tool returned in time; once its pin ran out, an
affinity router that weighs it (``weigh_home_held``) moves it to a lighter
worker as it would a new session, and SAGA's own router ignores it."""

from __future__ import annotations

import math

import pytest

from saga.coordinator.core import CoordinatorCore, CoordinatorError
from saga.policy.presets import Preset, get_preset

LOADS = {"w0": 0.5, "w1": 0.0}  # w0, the home, is below theta: the spec rule keeps it home


def _weighing() -> Preset:
    """SAGA with its affinity router told to weigh ``home_held``."""
    p = get_preset("saga")
    return p.derive("saga_weighing", "weighs home_held",
                    router=p.router.with_kwargs(weigh_home_held=True))


def _core(core: CoordinatorCore | None = None, **kw: float) -> CoordinatorCore:
    core = core or CoordinatorCore(bundle=_weighing().build(), final_grace_s=5.0,
                                   session_idle_s=600.0, **kw)
    for w in LOADS:
        core.register(w, f"node-{w}", 4, 0.0)
    assert core.route("s", "t", 0.0).worker_id == "w0"
    for w, load in LOADS.items():
        core.heartbeat(w, load, -1.0, (), 0.0, 0.5)
    return core


def _pinned(core: CoordinatorCore, now: float = 1.0) -> float:
    ttl = core.tool_started("s", "search", 0.5, now)
    assert ttl > 0
    return ttl


def test_a_pinned_session_stays_home() -> None:
    core = _core()
    ttl = _pinned(core)
    entry = core.session("s")
    assert core.home_held(entry, 1.0 + ttl / 2) == 1.0
    d = core.route("s", "t", 1.0 + ttl / 2)
    assert (d.worker_id, d.reason) == ("w0", "HOME")


def test_a_tool_that_returned_within_its_pin_keeps_the_session_home() -> None:
    core = _core()
    ttl = _pinned(core)
    core.tool_finished("s", "search", ttl / 2)
    assert core.home_held(core.session("s"), 1.0 + ttl * 5) is None
    assert core.route("s", "t", 1.0 + ttl * 5).reason == "HOME"


def test_a_pin_that_ran_out_moves_the_session_to_the_lighter_worker() -> None:
    core = _core()
    ttl = _pinned(core)
    late = 1.0 + ttl + 1.0
    assert core.home_held(core.session("s"), late) == 0.0
    d = core.route("s", "t", late)
    assert (d.worker_id, d.reason) == ("w1", "OVERLOADED")
    assert core.session("s").moves == 1 and core.moves == 1
    # The call rebuilt the KV on w1: nothing lapsed any more.
    assert core.home_held(core.session("s"), late + 100.0) is None
    assert core.check_invariants() == []


def test_a_tool_reported_past_its_pin_counts_from_when_the_pin_ended() -> None:
    core = _core(kv_residence_s=10.0)
    ttl = _pinned(core)
    core.tool_finished("s", "search", ttl + 5.0)  # the tool outlived the pin
    entry = core.session("s")
    assert entry.pin_lapsed_at == pytest.approx(1.0 + ttl)
    at = 1.0 + ttl + 5.0
    assert core.home_held(entry, at) == pytest.approx(math.exp(-0.5))
    # About 61 % still held: the move costs theta * 0.61 / 0.39 > 0.5 of load, so it stays.
    assert core.route("s", "t", at).reason == "HOME"


def test_sagas_own_router_ignores_a_lapsed_pin() -> None:
    core = _core(CoordinatorCore.from_preset("saga", final_grace_s=5.0, session_idle_s=600.0))
    ttl = _pinned(core)
    late = 1.0 + ttl + 1.0
    assert core.home_held(core.session("s"), late) == 0.0  # told, but not weighed
    assert core.route("s", "t", late).reason == "HOME"


def test_no_preset_weighs_a_lapsed_pin_yet() -> None:
    """Weighing is measured slower in the simulator (residence 0): no preset turns it on."""
    assert not CoordinatorCore.from_preset("saga_eta").router.weigh_home_held  # type: ignore[attr-defined]
    assert _weighing().build().router.weigh_home_held  # type: ignore[attr-defined]


def test_a_lapsed_pin_with_no_lighter_worker_stays_home() -> None:
    core = _core()
    core.heartbeat("w1", 0.5, -1.0, (), 0.0, 0.6)  # as loaded as the home
    ttl = _pinned(core)
    assert core.route("s", "t", 1.0 + ttl + 1.0).reason == "HOME"


def test_without_a_ttl_policy_routing_is_unchanged() -> None:
    core = CoordinatorCore.from_preset("saga_no_ttl")
    assert core.ttl is None
    for w in LOADS:
        core.register(w, f"node-{w}", 4, 0.0)
    assert core.route("s", "t", 0.0).worker_id == "w0"
    assert core.tool_started("s", "search", 0.5, 1.0) == 0.0
    assert core.home_held(core.session("s"), 1000.0) is None


def test_kv_residence_must_be_a_finite_non_negative_number() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(CoordinatorError, match="kv_residence_s"):
            CoordinatorCore.from_preset("saga", kv_residence_s=bad)
