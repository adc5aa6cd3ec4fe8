"""The next-use estimator's queueing delay and its arrival rate of new sessions per agent type."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saga.policy.cache import CacheManager
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import ETAPolicy
from saga.policy.nextuse import NextUseEstimator
from saga.policy.nextuse_gaps import SessionArrivals


def _serve(cache: CacheManager, est: NextUseEstimator, hashes: list[int], now: float,
           **session: object) -> None:
    cache.allocate(hashes, now)
    cache.release(hashes, now)
    est.observe_request(hashes, now, **session)  # type: ignore[arg-type]


def test_a_returning_call_is_expected_after_its_tool_and_the_queue() -> None:
    est = NextUseEstimator()
    cache = CacheManager(16, ETAPolicy(estimator=est))
    _serve(cache, est, [1, 2], 0.0, session_id="s", pending_tool="grep")
    base = est.session_next_use("s", 1.0)
    est.set_queue_delay(2.5)
    assert est.session_next_use("s", 1.0) == pytest.approx(base + 2.5)
    est.call_started("s", 3.0)  # in flight: now, whatever the queue
    assert est.session_next_use("s", 3.0) == 3.0
    with pytest.raises(SagaConfigError, match="queue delay"):
        est.set_queue_delay(-1.0)


def _shared_prompt(agent: str | None) -> tuple[NextUseEstimator, CacheManager]:
    """Two sessions read a shared system prompt (blocks 1, 2) at t = 0 and 2, then end."""
    est = NextUseEstimator()
    cache = CacheManager(16, ETAPolicy(estimator=est))
    for i, t in enumerate((0.0, 2.0)):
        _serve(cache, est, [1, 2, 10 + i], t, session_id=f"s{i}", pending_tool="t",
               agent_type=agent)
    for i in range(2):
        est.call_started(f"s{i}", 3.0)
        _serve(cache, est, [1, 2, 10 + i], 3.0, session_id=f"s{i}", final=True,
               agent_type=agent)
    return est, cache


def test_a_shared_prefix_whose_users_ended_waits_for_the_next_session_of_their_type() -> None:
    est, cache = _shared_prompt("swe")
    assert est.arrivals.mean_gap("swe") == pytest.approx(2.0)
    slots = np.array([cache._index[h] for h in (1, 2)], np.int64)
    nxt, p = est.predict(slots, 100.0)
    assert nxt.tolist() == pytest.approx([102.0, 102.0]) and p.tolist() == [1.0, 1.0]
    # Without the agent type only the blocks' own history speaks: much later.
    plain, cache2 = _shared_prompt(None)
    later, _ = plain.predict(np.array([cache2._index[h] for h in (1, 2)], np.int64), 100.0)
    assert np.all(later > 102.0)
    # A session's own blocks are never read again once it ended.
    own, _ = est.predict(np.array([cache._index[10]], np.int64), 100.0)
    assert own[0] == math.inf


def test_session_arrivals_average_the_gaps_per_agent_type() -> None:
    a = SessionArrivals(weight=0.5)
    assert a.mean_gap("x") == math.inf and a.mean_gap(None) == math.inf
    for t in (0.0, 4.0, 6.0):
        a.started("x", t)
    assert a.mean_gap("x") == pytest.approx(4.0 + 0.5 * (2.0 - 4.0))
    assert a.mean_gap("y") == math.inf
