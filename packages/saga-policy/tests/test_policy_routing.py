"""Routing: the spec's rule, SAGA's affinity router and the peers' routers."""

from __future__ import annotations

import pytest

from saga.policy.errors import SagaConfigError, UnknownSessionError
from saga.policy.routing import (
    AffinityRouter,
    CacheAwareRouter,
    LeastLoadedRouter,
    Move,
    PrefixAffinityRouter,
    RouteRequest,
    UnknownWorkerError,
    least_loaded,
    route,
)


def test_route_stays_home_below_theta() -> None:
    assert route("w1", {"w0": 0.1, "w1": 0.79}, theta=0.8) == "w1"


def test_route_leaves_home_at_theta() -> None:
    assert route("w1", {"w0": 0.3, "w1": 0.8, "w2": 0.2}, theta=0.8) == "w2"


def test_route_new_session_goes_least_loaded_ties_by_id() -> None:
    assert route(None, {"b": 0.5, "a": 0.5, "c": 0.9}) == "a"
    assert least_loaded({"b": 0.1, "a": 0.2}) == "b"


def test_route_errors() -> None:
    with pytest.raises(SagaConfigError, match="empty"):
        route(None, {})
    with pytest.raises(UnknownWorkerError, match="w9"):
        route("w9", {"w0": 0.0})
    with pytest.raises(SagaConfigError, match="theta"):
        route("w0", {"w0": 0.0}, theta=0.0)
    with pytest.raises(SagaConfigError, match="w0"):
        route(None, {"w0": -1.0})


def test_affinity_router_homes_and_moves() -> None:
    r = AffinityRouter(theta=0.8)
    req = RouteRequest("s1", now=1.0)
    assert r.route(req, {"a": 0.5, "b": 0.1}) == "b"
    assert r.home("s1") == "b"
    assert r.route(RouteRequest("s1", now=2.0), {"a": 0.1, "b": 0.7}) == "b"
    assert list(r.moves) == []
    assert r.route(RouteRequest("s1", now=3.0), {"a": 0.2, "b": 0.9}) == "a"
    assert list(r.moves) == [Move("s1", "b", "a", 3.0)]
    assert r.home("s1") == "a"


def test_affinity_router_rehomes_when_home_disappears() -> None:
    r = AffinityRouter()
    r.route(RouteRequest("s"), {"a": 0.0})
    assert r.route(RouteRequest("s", now=5.0), {"b": 0.3, "c": 0.2}) == "c"
    assert list(r.moves) == [Move("s", "a", "c", 5.0)]


def test_affinity_router_forget_and_reassign() -> None:
    r = AffinityRouter()
    r.route(RouteRequest("s"), {"a": 0.0, "b": 0.0})
    r.reassign("s", "b", now=1.0)
    assert r.home("s") == "b" and r.moves[-1] == Move("s", "a", "b", 1.0)
    r.forget("s")
    with pytest.raises(UnknownSessionError):
        r.home("s")
    with pytest.raises(UnknownSessionError):
        r.forget("s")
    with pytest.raises(SagaConfigError):
        AffinityRouter(theta=-1.0)


def test_least_loaded_router() -> None:
    assert LeastLoadedRouter().route(RouteRequest("s"), {"x": 0.4, "y": 0.3}) == "y"


def test_prefix_affinity_prefers_cached_prefix_when_loads_close() -> None:
    r = PrefixAffinityRouter()
    loads = {"a": 0.5, "b": 0.5}
    first = r.route(RouteRequest("s1", (1, 2, 3, 4)), loads)
    assert first == "a"  # tie: smaller id
    # b slightly less loaded: score(a) = 3*1 + 2*0 = 3, score(b) = 3*0 + 2*1 = 2 -> a.
    assert r.route(RouteRequest("s1", (1, 2, 3, 4, 5)), {"a": 0.6, "b": 0.5}) == "a"
    assert r.cached_blocks(RouteRequest("s", (1, 2, 3, 4, 5, 6)), "a") == 5


def test_prefix_affinity_partial_match_loses_to_load() -> None:
    r = PrefixAffinityRouter()
    r.blocks_stored("a", [1, 2])
    # Request of 4 blocks: a matches 2/4 -> 3*0.5 + 2*0 = 1.5; b: 0 + 2*1 = 2 -> b.
    assert r.route(RouteRequest("s", (1, 2, 3, 4)), {"a": 0.9, "b": 0.1}) == "b"


def test_prefix_affinity_follows_removal_events() -> None:
    r = PrefixAffinityRouter()
    r.blocks_stored("a", [1, 2, 3])
    r.blocks_removed("a", [2, 3])
    assert r.cached_blocks(RouteRequest("s", (1, 2, 3)), "a") == 1
    r.forget_worker("a")
    assert r.cached_blocks(RouteRequest("s", (1, 2, 3)), "a") == 0


def test_prefix_affinity_capacity_evicts_lru() -> None:
    r = PrefixAffinityRouter(capacity_blocks=2)
    r.blocks_stored("a", [1, 2, 3])
    assert r.cached_blocks(RouteRequest("s", (1,)), "a") == 0
    assert r.cached_blocks(RouteRequest("s", (2, 3)), "a") == 2


def test_cache_aware_imbalance_rule() -> None:
    r = CacheAwareRouter()
    assert r.is_imbalanced({"a": 100, "b": 30})        # 70 > 64 and 100 > 45
    assert not r.is_imbalanced({"a": 100, "b": 40})    # 60 <= 64
    assert not r.is_imbalanced({"a": 200, "b": 135})   # 200 <= 1.5 * 135


def test_cache_aware_routes_by_prefix_when_balanced() -> None:
    r = CacheAwareRouter(cache_threshold=0.5)
    loads = {"a": 5.0, "b": 3.0}
    # Empty trees: smallest tree (tie 0) then lower load -> b.
    assert r.route(RouteRequest("s", (1, 2, 3, 4)), loads) == "b"
    assert r.tree_size("b") == 4
    # Different prompt: match rate 0 -> smallest tree -> a.
    assert r.route(RouteRequest("t", (9, 8)), loads) == "a"
    # 3 of 4 blocks match on b: rate 0.75 > 0.5 -> b, even though a is less loaded now.
    assert r.route(RouteRequest("s", (1, 2, 3, 7)), {"a": 1.0, "b": 3.0}) == "b"
    # 1 of 4 blocks match: rate 0.25 <= 0.5 -> smallest tree: a (2 blocks) vs b (5 blocks).
    assert r.route(RouteRequest("u", (1, 5, 6, 7)), {"a": 9.0, "b": 3.0}) == "a"


def test_cache_aware_shortest_queue_when_imbalanced() -> None:
    r = CacheAwareRouter()
    r.route(RouteRequest("s", (1, 2)), {"a": 0.0, "b": 0.0})
    assert r.route(RouteRequest("s", (1, 2)), {"a": 200.0, "b": 10.0}) == "b"


def test_cache_aware_validation() -> None:
    with pytest.raises(SagaConfigError, match="cache_threshold"):
        CacheAwareRouter(cache_threshold=1.5)
    with pytest.raises(SagaConfigError, match="balance"):
        CacheAwareRouter(balance_rel_threshold=0.5)
    with pytest.raises(SagaConfigError, match="empty"):
        CacheAwareRouter().route(RouteRequest("s"), {})


def test_route_requires_headroom_to_leave_home_when_asked() -> None:
    saturated = {"a": 0.95, "b": 0.85, "c": 0.9}
    assert route("a", saturated, theta=0.8) == "b"  # the literal rule chases the minimum
    assert route("a", saturated, theta=0.8, require_headroom=True) == "a"
    assert route("a", {"a": 0.95, "b": 0.5}, theta=0.8, require_headroom=True) == "b"
    assert route(None, saturated, theta=0.8, require_headroom=True) == "b"
    r = AffinityRouter(theta=0.8)
    r.route(RouteRequest("s"), {"a": 0.1, "b": 0.2})
    assert r.route(RouteRequest("s", now=1.0), saturated) == "a" and list(r.moves) == []
    literal = AffinityRouter(theta=0.8, require_headroom=False)
    literal.route(RouteRequest("s"), {"a": 0.1, "b": 0.2})
    assert literal.route(RouteRequest("s", now=1.0), saturated) == "b"


def test_affinity_router_keeps_a_bounded_log_of_moves() -> None:
    from saga.policy.routing import MOVES_KEPT

    r = AffinityRouter(theta=0.5)
    for i in range(MOVES_KEPT + 10):
        loads = {"a": 0.9, "b": 0.0} if i % 2 else {"a": 0.0, "b": 0.9}
        r.route(RouteRequest("s", now=float(i)), loads)
    assert len(r.moves) == MOVES_KEPT and r.moves[-1].now == float(MOVES_KEPT + 9)
