"""The next-use estimator's vectorised prediction, its bounded state, ``session_ended``, and
``eta``'s victims through saga-kernels' value ranking."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from saga.policy.cache import CacheManager
from saga.policy.eviction import ETAPolicy
from saga.policy.eviction.base import EvictionPolicy, _leaves_first
from saga.policy.eviction.eta import greedy_leaves
from saga.policy.nextuse import MIN_HISTORY, NextUseEstimator

TOOLS = ("ls", "cat", "grep")


@dataclass
class _Ref:
    """The prediction rule written as loops over slots, fed the same calls as the estimator."""

    order: dict[str, int] = field(default_factory=dict)
    state: dict[str, tuple[str, str | None, float, float, str | None]] = field(
        default_factory=dict)  # phase, tool, last call, p_reuse, agent type
    readers: dict[int, list[str]] = field(default_factory=dict)

    def started(self, sid: str) -> None:
        if sid in self.state and self.state[sid][0] == "tool":
            _, tool, last, p, agent = self.state[sid]
            self.state[sid] = ("now", tool, last, p, agent)

    def served(self, sid: str, slots: list[int], now: float, tool: str | None, p: float,
               agent: str | None) -> None:
        self.started(sid)
        self.order.setdefault(sid, len(self.order))
        if agent is None and sid in self.state:
            agent = self.state[sid][4]
        self.state[sid] = ("tool", tool, now, p, agent) if tool else ("end", None, now, 0.0,
                                                                      agent)
        for s in slots:
            if sid not in self.readers.setdefault(s, []):
                self.readers[s].append(sid)
            self.readers[s].remove(sid)
            self.readers[s].append(sid)  # the last reader (owner) is last

    def t(self, est: NextUseEstimator, sid: str, now: float) -> float:
        phase, tool, last, _, _ = self.state[sid]
        if phase == "now":
            return now
        if phase == "end" or tool is None:
            return math.inf
        return now + est.tool_remaining(tool, now - last) + est.queue_delay_s

    def predict(self, est: NextUseEstimator, slots: np.ndarray, now: float
                ) -> tuple[list[float], list[float]]:
        hist_t, hist_p = est.gaps.predict(slots, now)
        out_t, out_p = hist_t.tolist(), hist_p.tolist()
        for k, s in enumerate(slots.tolist()):
            users = self.readers.get(s, [])
            if not users:
                continue
            best = min(users, key=lambda u: (self.t(est, u, now), self.order[u]))
            if len(users) == 1:
                best = users[-1]
            out_t[k], out_p[k] = self.t(est, best, now), self.state[best][3]
            if len(users) > 1 and out_t[k] == math.inf:
                gap = min(est.arrivals.mean_gap(self.state[u][4]) for u in users)
                out_t[k], out_p[k] = float(hist_t[k]), float(hist_p[k])
                if now + gap < out_t[k]:
                    out_t[k], out_p[k] = now + gap, 1.0
        return out_t, out_p


def _feed(seed: int, steps: int, slots: int = 48, check_every: int = 0,
          est: NextUseEstimator | None = None) -> NextUseEstimator:
    """Sessions over three shared prompts; each ends (``final`` or ``session_ended``)."""
    rng = random.Random(seed)
    est = est or NextUseEstimator(history_cap=10**9 if check_every else None)
    cache = CacheManager(slots, ETAPolicy(estimator=est))
    ref = _Ref()
    content: dict[int, int] = {}
    live: list[str] = []
    for step in range(steps):
        now = step * 0.5
        if len(live) < 12:
            live.append(f"s{step}")
        sid = rng.choice(live)
        n = int(sid[1:])
        hashes = [1000 * (1 + n % 3) + k for k in range(3)]  # the agent type's prompt
        hashes += [10**6 + 100 * n + k for k in range(rng.randint(1, 5))]
        est.call_started(sid, now)
        ref.started(sid)
        cache.allocate(hashes, now)
        cache.release(hashes, now)
        slots_now = [cache._index[h] for h in hashes]
        for h, s in zip(hashes, slots_now, strict=True):
            if content.get(s) != h:  # the slot was given to this block: nobody read it yet
                ref.readers.pop(s, None)
                content[s] = h
        end = rng.random() < 0.12
        tool = None if end else rng.choice(TOOLS)
        agent = "ab"[n % 2] if rng.random() < 0.8 else None
        p = rng.random()
        est.observe_request(hashes, now, session_id=sid, pending_tool=tool, reuse_prob=p,
                            final=end, agent_type=agent)
        ref.served(sid, slots_now, now, tool, p, agent)
        if end:
            live.remove(sid)
        elif rng.random() < 0.03:  # ended without a further call
            est.session_ended(sid, now)
            ref.state[sid] = ("end", None, now, 0.0, ref.state[sid][4])
            live.remove(sid)
        if live and rng.random() < 0.3:  # a call arrives and is still in flight below
            other = rng.choice(live)
            est.call_started(other, now)
            ref.started(other)
        if check_every and step % check_every == 0:
            sl = np.array(sorted(cache._index.values()), np.int64)
            rng.shuffle(sl)
            at = now + rng.random() * 4.0
            got_t, got_p = est.predict(sl, at)
            want_t, want_p = ref.predict(est, sl, at)
            assert got_t.tolist() == want_t and got_p.tolist() == want_p, (seed, step)
    return est


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_prediction_is_the_rule_over_slots(seed: int) -> None:
    _feed(seed, 600, check_every=5)


def test_state_stays_bounded_over_a_long_run() -> None:
    slots = 48
    est = _feed(7, 6000, slots=slots)
    size = est.state_size()
    assert est.sessions_ended > 400  # nearly every session ended and was forgotten
    assert size["sessions"] <= 12  # the live ones at most
    assert size["hashes"] <= MIN_HISTORY  # 6,000 calls read ~21,000 distinct blocks
    assert size["claims"] <= 4 * slots
    # Twice as long: no growth beyond the same bounds.
    longer = _feed(7, 12000, slots=slots).state_size()
    assert longer["sessions"] <= 12 and longer["hashes"] <= MIN_HISTORY
    assert longer["claims"] <= 4 * slots


def test_history_cap_keeps_what_is_held() -> None:
    est = NextUseEstimator(history_cap=4)
    cache = CacheManager(3, ETAPolicy(estimator=est))
    for k in range(10):
        cache.allocate([k], float(k))
        cache.release([k], float(k))
        est.observe_request([k], float(k))
    assert est.gaps.known() <= 4
    assert all(est.gaps.remembers(h) for h in cache._index)  # held blocks keep their history
    assert not est.gaps.remembers(0)  # the oldest block gone is forgotten


def test_session_ended_frees_the_session_without_teaching_a_latency() -> None:
    est = NextUseEstimator()
    cache = CacheManager(16, ETAPolicy(estimator=est))
    for k in range(3):
        cache.allocate([1, 2], 10.0 * k)
        cache.release([1, 2], 10.0 * k)
        est.call_started("s", 10.0 * k)
        est.observe_request([1, 2], 10.0 * k, session_id="s", pending_tool="ls",
                            agent_type="a")
    seen = est.latency.n_observations("ls")  # type: ignore[attr-defined]
    assert math.isfinite(est.session_next_use("s", 25.0))
    est.session_ended("s", 500.0)
    assert est.latency.n_observations("ls") == seen  # type: ignore[attr-defined]
    assert est.phase("s") is None and est.session_next_use("s", 501.0) == math.inf
    nxt, p = est.predict(np.array([cache._index[1], cache._index[2]], np.int64), 501.0)
    assert nxt.tolist() == [math.inf, math.inf] and p.tolist() == [0.0, 0.0]
    assert est.state_size()["sessions"] == 0 and est.sessions_ended == 1
    est.session_ended("s", 502.0)  # unknown now: ignored
    est.session_ended("never-seen", 502.0)
    assert est.sessions_ended == 1


def test_eta_victims_through_the_value_ranking_equal_the_base_selection() -> None:
    rng = random.Random(3)
    for trial in range(6):
        policy = ETAPolicy(estimator=None)
        cache = CacheManager(400, policy, block_tokens=16)
        for c in range(60):  # chains over a few shared heads, so leaves-first matters
            head = [c % 4, 100 + c % 7]
            chain = head + [1000 * (c + 1) + j for j in range(rng.randint(0, 5))]
            cache.allocate(chain, float(c))
            cache.release(chain, float(c))
            cache.set_hints(chain, next_use=[float(rng.randint(60, 70)) for _ in chain],
                            reuse_prob=[rng.choice([0.5, 1.0]) for _ in chain])
        cands = np.array(sorted(cache._index.values()), np.int64)
        for k in (1, 5, 40, cands.size):
            got = policy.select_victims(cache.table, cands, k, 61.0 + trial)
            want = EvictionPolicy.select_victims(policy, cache.table, cands, k, 61.0 + trial)
            assert got.tolist() == want.tolist(), (trial, k)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_leaves_is_the_base_classs_leaves_first(seed: int) -> None:
    """Any ranking, children in use or not: the heap greedy and the vectorised rounds agree,
    also on when a best-ranked part runs out of leaves."""
    rng = random.Random(seed)
    cache = CacheManager(500, ETAPolicy(estimator=None), block_tokens=16)
    for c in range(70):
        chain = [c % 3, 10 + c % 5] + [1000 * (c + 1) + j for j in range(rng.randint(0, 6))]
        cache.allocate(chain, float(c))
        if rng.random() < 0.85:  # the rest stay in use: their parents are not leaves
            cache.release(chain, float(c))
    t = cache.table
    cands = np.flatnonzero((t.tier == 1) & (t.ref_count == 0)).astype(np.int64)
    for _ in range(20):
        ranked = cands[np.array(rng.sample(range(cands.size), cands.size), np.int64)]
        for k in (1, 7, 30, cands.size):
            for part in (ranked, ranked[: 2 * k + 5]):
                complete = part.size == ranked.size
                want = _leaves_first(t, part, k, complete=complete)
                got = greedy_leaves(t, part, k, complete=complete)
                assert (got is None) == (want is None)
                if got is not None and want is not None:
                    assert got.tolist() == want.tolist()


def test_sessions_that_ended_without_final_are_forgotten_once_they_hold_nothing() -> None:
    est = NextUseEstimator()
    cache = CacheManager(16, ETAPolicy(estimator=est))
    for k in range(400):  # each session: one call, no pending tool, not marked final
        chain = [10_000 + 2 * k, 10_001 + 2 * k]
        cache.allocate(chain, float(k))
        cache.release(chain, float(k))
        est.observe_request(chain, float(k), session_id=f"s{k}")
    assert est.state_size()["sessions"] <= 2 * 64 + 1  # swept as their slots were reused
    assert est.phase("s399") is not None  # the latest still holds its blocks
