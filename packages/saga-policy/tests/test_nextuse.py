"""The next-use estimator, the block value and the ``eta`` eviction policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saga.policy import registry
from saga.policy.cache import CacheManager
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import ETAPolicy
from saga.policy.nextuse import NextUseEstimator, block_value, recompute_flops
from saga.policy.nextuse_gaps import GapEWMA, GapRegressor, make_gap_model, remaining_time
from saga.policy.replay import replay_trace
from saga.policy.traces import Trace, TraceRequest
from saga.policy.ttl import aeg_latency_source, pin_return_eta


def _cache(est: NextUseEstimator, blocks: int = 64) -> CacheManager:
    return CacheManager(blocks, ETAPolicy(estimator=est))


def _serve(cache: CacheManager, est: NextUseEstimator, hashes: list[int], now: float,
           **session: object) -> None:
    if session.get("session_id") is not None:
        est.call_started(str(session["session_id"]), now)
    cache.allocate(hashes, now)
    cache.release(hashes, now)
    est.observe_request(hashes, now, **session)  # type: ignore[arg-type]


def _slots(cache: CacheManager, hashes: list[int]) -> np.ndarray:
    return np.array([cache._index[h] for h in hashes], np.int64)


def test_block_value_formula_and_bounds() -> None:
    assert block_value(0.5, 8.0, 2.0, 4.0) == pytest.approx(0.5 * 8.0 / (2.0 * 4.0))
    assert block_value(1.0, 1.0, 1.0, math.inf) == 0.0
    assert block_value(1.0, 1.0, 1.0, -3.0) == block_value(1.0, 1.0, 1.0, 0.0)  # floored
    cost = recompute_flops(np.array([0, 10, 100]), 16)
    assert cost[0] < cost[1] < cost[2]  # deeper costs more to recompute


def test_waiting_session_uses_the_tools_conditional_median() -> None:
    est = NextUseEstimator()
    cache = _cache(est)
    for k in range(20):  # the "pytest" tool always takes 10 s between calls
        _serve(cache, est, [1, 2], 10.0 * k, session_id="s", pending_tool="pytest")
    t_last = 190.0
    for elapsed in (0.0, 5.0, 30.0):
        want = pin_return_eta(est.latency.latency("pytest"), elapsed)  # type: ignore[arg-type]
        got = est.session_next_use("s", t_last + elapsed)
        assert got == pytest.approx(t_last + elapsed + want)
    assert est.session_next_use("s", t_last) == pytest.approx(t_last + 10.0, rel=0.05)
    nxt, p = est.predict(_slots(cache, [1, 2]), t_last + 1.0)
    assert nxt[0] == nxt[1] == pytest.approx(est.session_next_use("s", t_last + 1.0))
    assert p.tolist() == [1.0, 1.0]
    est.call_started("s", 200.0)
    assert est.session_next_use("s", 200.5) == 200.5  # a call in flight: wanted now


def test_ending_session_is_never_used_again_and_evicted_first() -> None:
    est = NextUseEstimator()
    cache = _cache(est)
    _serve(cache, est, [1, 2, 3], 0.0, session_id="done", pending_tool="submit", final=True)
    _serve(cache, est, [11, 12, 13], 0.0, session_id="live", pending_tool="ls",
           reuse_prob=0.9)
    assert est.session_next_use("done", 1.0) == math.inf
    nxt, p = est.predict(_slots(cache, [3, 13]), 1.0)
    assert nxt[0] == math.inf and p[0] == 0.0 and p[1] == pytest.approx(0.9)
    assert sorted(cache.evict(3, 1.0)) == [1, 2, 3]


def test_terminal_probability_weights_the_value() -> None:
    est = NextUseEstimator()
    cache = _cache(est)
    _serve(cache, est, [1], 0.0, session_id="a", pending_tool="ls", reuse_prob=0.2)
    _serve(cache, est, [2], 0.0, session_id="b", pending_tool="ls", reuse_prob=0.8)
    assert cache.evict(1, 0.5) == [1]  # same tool, same time: the likelier end goes


def test_shared_prefix_takes_the_earliest_user() -> None:
    est = NextUseEstimator(latency=aeg_latency_source())
    cache = _cache(est)
    for _k in range(10):  # "slow" returns after 100 s, "fast" after 1 s
        est.latency.observe("slow", 100.0)
        est.latency.observe("fast", 1.0)
    _serve(cache, est, [7, 8], 0.0, session_id="a", pending_tool="slow")
    _serve(cache, est, [7, 9], 0.0, session_id="b", pending_tool="fast")
    nxt, _ = est.predict(_slots(cache, [7, 8, 9]), 0.5)
    assert nxt[0] == pytest.approx(est.session_next_use("b", 0.5))
    assert nxt[1] == pytest.approx(est.session_next_use("a", 0.5))
    assert nxt[0] < nxt[1]
    est.call_started("b", 0.6)  # b in flight: the shared block is wanted now
    nxt, _ = est.predict(_slots(cache, [7]), 0.7)
    assert nxt[0] == 0.7


@pytest.mark.parametrize("name", ["ewma", "regressor"])
def test_gap_estimators_converge_on_a_periodic_block(name: str) -> None:
    gaps = make_gap_model(name)
    gaps.attach(8)
    for k in range(600):  # block 1 every 5 s, block 2 every 50 s, each in its own slot
        gaps.observe([1], [0], 5.0 * k)
        if k % 10 == 0:
            gaps.observe([2], [1], 5.0 * k)
    now = 5.0 * 599 + 1.0
    nxt, p = gaps.predict(np.array([0, 1], np.int64), now)
    assert nxt[0] == pytest.approx(5.0 * 600, rel=0.02)
    assert nxt[1] == pytest.approx(5.0 * 590 + 50.0, rel=0.02)
    assert 0.9 < p[0] <= 1.0


def test_gap_model_without_history_ranks_as_lru_and_inherits_from_the_prefix() -> None:
    assert remaining_time(np.zeros(2), np.array([1.0, 3.0])).tolist() == [1.0, 3.0]
    g = GapEWMA(use_reuse_prob=False)
    g.attach(4)
    g.observe([1, 2], [0, 1], 0.0)
    g.observe([1, 3], [0, 2], 8.0)  # 3 is new: it inherits 1's 8 s gap
    nxt, _ = g.predict(np.array([2], np.int64), 9.0)
    assert nxt[0] == pytest.approx(16.0)
    with pytest.raises(SagaConfigError):
        make_gap_model("nope")
    with pytest.raises(SagaConfigError):
        GapRegressor(ridge=0.0)


def test_estimator_is_deterministic_and_serves_one_cache() -> None:
    def run() -> list[float]:
        est = NextUseEstimator()
        cache = _cache(est, 6)
        for k in range(30):
            _serve(cache, est, [k % 5, 100 + k % 3], float(k), session_id=f"s{k % 4}",
                   pending_tool=("ls", "cat")[k % 2])
        slots = np.array(sorted(cache._index.values()), np.int64)
        return est.predict(slots, 31.0)[0].tolist()

    assert run() == run()
    est = NextUseEstimator()
    _cache(est)
    with pytest.raises(SagaConfigError):
        _cache(est)


def test_eta_is_registered_and_replays_online() -> None:
    assert "eta" in registry.names("eviction")
    policy = registry.replay_eviction("eta")
    assert policy.leaves_only and policy.next_use_model() is not None
    reqs = tuple(TraceRequest(index=i, arrival_s=float(i), input_tokens=64, output_tokens=1,
                              block_hashes=(i % 7, 100 + i % 7), block_tokens=32,
                              session_id=f"s{i % 7}", call_index=i // 7, pending_tool="ls")
                 for i in range(70))
    trace = Trace(name="t", block_tokens=32, requests=reqs)
    res = replay_trace(trace, policy, 8)
    lru = replay_trace(trace, registry.replay_eviction("lru"), 8)
    assert res.miss_blocks <= lru.miss_blocks


def test_shared_prefix_of_ended_sessions_falls_back_to_its_history() -> None:
    est = NextUseEstimator(gaps=GapEWMA())  # the regressor needs more samples to fit
    cache = _cache(est)
    for k in range(6):  # six one-call sessions read the same prompt block 0, every 10 s
        _serve(cache, est, [0, 100 + k], 10.0 * k, session_id=f"s{k}", pending_tool=None)
    nxt, p = est.predict(_slots(cache, [0, 105]), 51.0)
    assert nxt[0] == pytest.approx(60.0, rel=0.05) and p[0] > 0.5
    assert nxt[1] == math.inf
