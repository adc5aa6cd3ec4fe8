"""Routing weighed by how much of a session's KV its home still holds (``home_held``): the pure
functions, the rule, and the guarantee that a request without it routes exactly as before."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import pytest

from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS
from saga.policy.routing import (
    THETA,
    AffinityRouter,
    RouteRequest,
    expected_home_held,
    least_loaded,
    move_cost,
    route,
)


def _spec_rule(home: str | None, loads: Mapping[str, float], theta: float,
               require_headroom: bool) -> str:
    """The rule as it stood before ``home_held`` existed, written out independently."""
    if home is None:
        return min(loads, key=lambda w: (loads[w], w))
    if loads[home] < theta:
        return home
    dst = min(loads, key=lambda w: (loads[w], w))
    return home if require_headroom and loads[dst] >= theta else dst


def _loads(rng: random.Random, n: int) -> dict[str, float]:
    # Coarse values so that ties (equal loads, load == theta) occur often.
    return {f"w{i}": rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.4, 2.0]) for i in range(n)}


def test_expected_home_held_is_one_while_pinned_and_decays_after() -> None:
    assert expected_home_held(5.0, 10.0) == 1.0
    assert expected_home_held(10.0, 10.0) == 0.0  # lapsed, and evicted at once by default
    assert expected_home_held(12.0, 10.0, residence_s=2.0) == pytest.approx(math.exp(-1.0))
    assert expected_home_held(9.0, 10.0, residence_s=2.0) == 1.0
    with pytest.raises(SagaConfigError, match="residence_s must be >= 0"):
        expected_home_held(1.0, 0.0, residence_s=-1.0)
    with pytest.raises(SagaConfigError, match="now must be finite"):
        expected_home_held(math.nan, 0.0)


def test_move_cost_runs_from_free_to_never() -> None:
    assert move_cost(0.0) == 0.0
    assert move_cost(0.5, theta=0.8) == pytest.approx(0.8)
    assert move_cost(1.0) == math.inf
    assert move_cost(0.25) < move_cost(0.5) < move_cost(0.75)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(SagaConfigError, match=r"home_held must be a share in \[0, 1\]"):
            move_cost(bad)


def test_a_home_that_holds_nothing_routes_like_a_new_session() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        loads = _loads(rng, rng.randint(1, 5))
        home = rng.choice(sorted(loads))
        for headroom in (False, True):
            got = route(home, loads, THETA, require_headroom=headroom, home_held=0.0)
            new = least_loaded(loads)
            # A new session's worker, or home when home is as light (a tie keeps the session).
            assert loads[got] == loads[new]
            assert got in (home, new)
            if loads[home] > loads[new]:
                assert got == new


def test_held_fully_or_unknown_is_the_spec_rule_exactly() -> None:
    rng = random.Random(4)
    for _ in range(3000):
        loads = _loads(rng, rng.randint(1, 5))
        home = rng.choice([None, *sorted(loads)])
        theta = rng.choice([0.5, 0.8, 1.2])
        headroom = rng.random() < 0.5
        want = _spec_rule(home, loads, theta, headroom)
        assert route(home, loads, theta, require_headroom=headroom) == want
        assert route(home, loads, theta, require_headroom=headroom, home_held=1.0) == want


def test_partial_hold_moves_only_for_a_gain_above_the_cost() -> None:
    loads = {"a": 0.5, "b": 0.1}  # home a is below theta: the spec rule keeps it home
    assert route("a", loads, 0.8) == "a"
    # Half the context held costs theta = 0.8 of load; the gain is 0.4: stay.
    assert route("a", loads, 0.8, home_held=0.5) == "a"
    # A fifth held costs 0.2: the gain of 0.4 pays for the move.
    assert route("a", loads, 0.8, home_held=0.2) == "b"
    # Saturated everywhere with require_headroom: the spec rule stays; a lapsed home moves.
    hot = {"a": 2.0, "b": 1.0}
    assert route("a", hot, 0.8, require_headroom=True) == "a"
    assert route("a", hot, 0.8, require_headroom=True, home_held=0.0) == "b"
    assert route("a", hot, 0.8, require_headroom=True, home_held=0.9) == "a"


def test_the_affinity_router_ignores_home_held_unless_told_to_weigh_it() -> None:
    plain = AffinityRouter()
    assert not plain.weigh_home_held
    loads = {"a": 0.0, "b": 0.0}
    assert plain.route(RouteRequest("s", now=0.0), loads) == "a"
    busy = {"a": 0.5, "b": 0.1}
    for held in (0.0, 0.3, 1.0):  # the spec rule keeps it home, whatever the home holds
        assert plain.route(RouteRequest("s", now=1.0, home_held=held), busy) == "a"
    assert not plain.moves
    with pytest.raises(SagaConfigError, match="home_held"):  # still checked
        plain.route(RouteRequest("s", now=4.0, home_held=2.0), busy)


def test_the_affinity_router_reads_home_held_and_records_the_move() -> None:
    r = AffinityRouter(weigh_home_held=True)
    loads = {"a": 0.0, "b": 0.0}
    assert r.route(RouteRequest("s", now=0.0), loads) == "a"
    busy = {"a": 0.5, "b": 0.1}
    assert r.route(RouteRequest("s", now=1.0), busy) == "a"
    assert r.route(RouteRequest("s", now=2.0, home_held=1.0), busy) == "a"
    assert r.route(RouteRequest("s", now=3.0, home_held=0.0), busy) == "b"
    assert [(m.src, m.dst, m.now) for m in r.moves] == [("a", "b", 3.0)]
    with pytest.raises(SagaConfigError, match="home_held"):
        r.route(RouteRequest("s", now=4.0, home_held=2.0), busy)
    assert r.home("s") == "b"  # the bad request changed nothing


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_routes_as_before_without_home_held(name: str) -> None:
    """Each preset's router, driven call by call: a request without ``home_held`` gives the
    decisions of the spec rule for the affinity router, and any ``home_held`` changes nothing
    for routers that do not weigh it (what the simulator relies on)."""
    plain = PRESETS[name].build().router
    told = PRESETS[name].build().router
    rng = random.Random(sum(map(ord, name)))
    homes: dict[str, str] = {}
    for i in range(600):
        loads = _loads(rng, 4)
        sid = f"s{rng.randrange(12)}"
        hashes = tuple(rng.randrange(6) for _ in range(rng.randrange(4)))
        req = RouteRequest(sid, hashes, 16 * len(hashes), float(i))
        got = plain.route(req, loads)
        held = rng.choice([None, 1.0])
        if isinstance(plain, AffinityRouter):
            if not plain.weigh_home_held:
                held = rng.choice([None, rng.random()])
            home = homes.get(sid)
            want = _spec_rule(home if home in loads else None, loads, plain.theta,
                              plain.require_headroom)
            assert got == want
            homes[sid] = got
        else:
            held = rng.random()
        other = told.route(RouteRequest(sid, hashes, 16 * len(hashes), float(i),
                                        home_held=held), loads)
        assert other == got
