"""Request routing across serving instances: SAGA's session affinity and the peers' routers.

Routers are deterministic and clock-free: loads (and the time, inside the request) come in as
arguments; the state a router keeps (a session table, an approximate view of each worker's prefix
cache) changes only through its own methods. Ties are broken by the lower load, then the smaller
worker id, so a run is reproducible.

Each router states which load signal it expects in ``load_kind``: ``"utilisation"`` (busy share
of the instance, 1.0 = full; SAGA's theta is in these units) or ``"requests"`` (running plus
waiting requests, the signal sgl-router balances on).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal, Protocol

from saga.policy.errors import SagaConfigError, SagaError, UnknownSessionError
from saga.policy.routing_prefix import _PrefixIndex, min_max_score
from saga.policy.stealing import Steal, WorkerState, WorkStealer, should_steal

LoadKind = Literal["utilisation", "requests"]

THETA = 0.8
"""Spec default: a session stays home while its home worker's load is below theta."""

MOVES_KEPT = 4096
"""Re-homings :class:`AffinityRouter` keeps in its log (the oldest go first)."""


class UnknownWorkerError(SagaError, KeyError):
    """A worker id absent from the loads the router was given."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown worker"


@dataclass(frozen=True)
class WorkerSignals:
    """The engine metrics a scorer reads from one worker, as llm-d's EPP scrapes them from each
    vLLM pod: ``waiting`` requests in its queue and ``kv_usage``, the share of its KV pool that
    cannot be freed now (in use; vLLM's ``kv_cache_usage``), in [0, 1]."""

    waiting: float = 0.0
    kv_usage: float = 0.0


@dataclass(frozen=True)
class RouteRequest:
    """What a router sees of a request, and the workers' metrics at that moment.

    ``block_hashes`` are the chained hashes of the prompt's full KV blocks
    (``saga.policy.cache.chain_hashes``), so equal hashes mean equal prefixes. ``signals``
    holds each worker's :class:`WorkerSignals` when the caller has them (the simulator does);
    a router that needs them falls back to ``loads`` without them.
    """

    session_id: str
    block_hashes: tuple[int, ...] = ()
    prompt_tokens: int = 0
    now: float = 0.0
    signals: Mapping[str, WorkerSignals] | None = None
    home_held: float | None = None
    """Share of the session's context its home is expected to still hold when the call arrives
    (:func:`expected_home_held`): 1 while pinned, 0 once its KV is expected gone. None (the
    default): unknown, and :class:`AffinityRouter` routes exactly by the spec's rule (as it
    does with any value unless built with ``weigh_home_held``)."""


class Router(Protocol):
    """Picks the worker that serves a request.

    Besides ``route``, every router takes the events a deployment tells it, so no caller needs
    to know which router it holds: ``forget`` (the session's task ended), ``reassign`` (stealing
    moved the session to ``worker``) and ``forget_worker`` (a worker left or restarted). A router
    that keeps no such state ignores them (:class:`RouterEvents`).
    """

    load_kind: ClassVar[LoadKind]
    reads_signals: ClassVar[bool]
    """Whether ``route`` reads ``RouteRequest.signals`` (a caller may skip computing them)."""

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str: ...

    def forget(self, session_id: str) -> None: ...

    def reassign(self, session_id: str, worker: str, now: float = 0.0) -> None: ...

    def forget_worker(self, worker: str) -> None: ...


class RouterEvents:
    """No-op handlers of the deployment's events, for routers that keep no state on them."""

    reads_signals: ClassVar[bool] = False

    def forget(self, session_id: str) -> None:
        """Nothing kept per session."""

    def reassign(self, session_id: str, worker: str, now: float = 0.0) -> None:
        """Nothing kept per session."""

    def forget_worker(self, worker: str) -> None:
        """Nothing kept per worker."""


def _check_loads(loads: Mapping[str, float]) -> None:
    if not loads:
        raise SagaConfigError("loads is empty: a router needs at least one worker to route to")
    for worker, load in loads.items():
        if not (load >= 0 and math.isfinite(load)):
            raise SagaConfigError(f"load of worker {worker!r} must be finite and >= 0, got {load}")


def least_loaded(loads: Mapping[str, float]) -> str:
    """``argmin_w load(w)``; ties go to the smaller worker id."""
    _check_loads(loads)
    return min(loads, key=lambda w: (loads[w], w))


def expected_home_held(now: float, pinned_until: float, *, residence_s: float = 0.0) -> float:
    """Share of a session's context its home still holds at ``now``, from its pin.

    1 while the pin lasts (``now < pinned_until``). Once it lapsed (expired, or released: pass
    the release time) the KV is an ordinary evictable block: it survives
    ``exp(−(now − pinned_until) / residence_s)`` of the time, ``residence_s`` being how long an
    unpinned block is expected to stay on that worker; 0 (the default) says the value ranks it
    for eviction at once, as under the memory pressure pins exist for. Pure: time comes in.
    """
    for name, value in (("now", now), ("pinned_until", pinned_until),
                        ("residence_s", residence_s)):
        if not math.isfinite(value):
            raise SagaConfigError(f"expected_home_held: {name} must be finite, got {value}")
    if residence_s < 0:
        raise SagaConfigError(f"expected_home_held: residence_s must be >= 0, got {residence_s}")
    if now < pinned_until:
        return 1.0
    if residence_s == 0.0:
        return 0.0
    return math.exp(-(now - pinned_until) / residence_s)


def move_cost(home_held: float, theta: float = THETA) -> float:
    """What leaving home costs, in load units: ``theta · h / (1 − h)`` for a home holding ``h``.

    A home holding the whole context (``h = 1``) is worth any load below overload: the spec's
    rule, which moves a session only off an overloaded home (infinite cost). A home holding
    nothing (``h = 0``) is worth nothing: the session routes as a new one. Half the context is
    worth ``theta`` of load.
    """
    if not (0.0 <= home_held <= 1.0):
        raise SagaConfigError(
            f"home_held must be a share in [0, 1] (0: the home holds none of the session's KV, "
            f"1: all of it), got {home_held}")
    if home_held == 1.0:
        return math.inf
    return theta * home_held / (1.0 - home_held)


def route(home: str | None, loads: Mapping[str, float], theta: float = THETA, *,
          require_headroom: bool = False, home_held: float | None = None) -> str:
    """The spec's routing rule: ``w*_s if load(w*_s) < theta else argmin_w load(w)``.

    ``home`` is the session's home worker ``w*_s`` (``None`` for a new session, which goes to the
    least loaded worker). Loads are utilisations (1.0 = full). With ``require_headroom`` the
    call leaves its home only for a worker with headroom (``argmin_w load(w) < theta``): when
    every worker is at or above ``theta`` no move finds headroom, and the session stays where
    its KV is instead of chasing the momentary minimum from call to call.

    ``home_held`` (the share of the context the home still holds, :func:`expected_home_held`;
    None or 1: all of it, the rule above exactly) makes staying home cost-aware: where the rule
    keeps the session home, it still moves to the least loaded worker when that is lighter by
    more than :func:`move_cost` — so a session whose home is about to drop its KV moves as
    cheaply as a new one. Ties stay home.
    """
    if not (theta > 0 and math.isfinite(theta)):
        raise SagaConfigError(f"theta must be a finite number > 0, got {theta}")
    _check_loads(loads)
    if home is None:
        return least_loaded(loads)
    if home not in loads:
        raise UnknownWorkerError(
            f"home worker {home!r} is not among the workers {sorted(loads)}")
    cost = math.inf if home_held is None else move_cost(home_held, theta)
    if loads[home] < theta:
        return home if cost == math.inf else _cheaper_move(home, loads, cost)
    dst = least_loaded(loads)
    if require_headroom and loads[dst] >= theta:
        return home if cost == math.inf else _cheaper_move(home, loads, cost)
    return dst


def _cheaper_move(home: str, loads: Mapping[str, float], cost: float) -> str:
    """The least loaded worker when it is lighter than ``home`` by more than ``cost``."""
    dst = least_loaded(loads)
    return dst if loads[home] - loads[dst] > cost else home


@dataclass(frozen=True)
class Move:
    """A session re-homed from ``src`` to ``dst`` (its KV must be rebuilt or transferred)."""

    session_id: str
    src: str
    dst: str
    now: float


class LeastLoadedRouter(RouterEvents):
    """Stock routing: every request to the least loaded worker (vLLM behind a load balancer)."""

    load_kind: ClassVar[LoadKind] = "utilisation"

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str:
        """``argmin_w load(w)``."""
        return least_loaded(loads)


class AffinityRouter(RouterEvents):
    """SAGA's session affinity with load headroom, composed with :func:`route`.

    A session is homed on the worker that served its first call and stays there while that
    worker's load is below ``theta``; past it the call goes to the least loaded worker, which
    becomes the new home (its KV is now there). A home that disappeared from ``loads`` (worker
    removed) re-homes the same way. The latest ``MOVES_KEPT`` re-homings are kept in
    :attr:`moves` (a long-running deployment counts moves in its own session table).

    ``require_headroom`` (on by default) keeps a session home when no worker is below ``theta``
    (see :func:`route`): under saturation the literal rule moves most calls to whichever worker
    is momentarily least loaded, and each move costs the session's KV (the simulator measured
    61 % of WebArena calls moving on 16 saturated instances, for 1.9x the TCT).

    With ``weigh_home_held`` (off by default and in every preset: taking unpinned KV as gone at
    once, it measured slower in the simulator), a request that says how much
    of the session's KV its home still holds (``RouteRequest.home_held``) weighs the move by it
    (:func:`route`): a home whose pin lapsed and whose KV is being evicted keeps the session
    only while no worker is lighter. Off, ``home_held`` is ignored and the spec's rule routes.
    """

    load_kind: ClassVar[LoadKind] = "utilisation"

    def __init__(self, theta: float = THETA, *, require_headroom: bool = True,
                 weigh_home_held: bool = False) -> None:
        if not (theta > 0 and math.isfinite(theta)):
            raise SagaConfigError(f"AffinityRouter.theta must be a finite number > 0, got {theta}")
        self.theta = theta
        self.require_headroom = require_headroom
        self.weigh_home_held = weigh_home_held
        self._home: dict[str, str] = {}
        self.moves: deque[Move] = deque(maxlen=MOVES_KEPT)

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str:
        """Route one call of ``request.session_id`` and update its home."""
        _check_loads(loads)
        home = self._home.get(request.session_id)
        usable_home = home if home is not None and home in loads else None
        held = request.home_held
        if held is not None:
            move_cost(held, self.theta)  # a bad share is an error, weighed or not
        dst = route(usable_home, loads, self.theta, require_headroom=self.require_headroom,
                    home_held=held if self.weigh_home_held else None)
        if home is not None and dst != home:
            self.moves.append(Move(request.session_id, home, dst, request.now))
        self._home[request.session_id] = dst
        return dst

    def home(self, session_id: str) -> str:
        """The worker a session is homed on."""
        try:
            return self._home[session_id]
        except KeyError:
            raise UnknownSessionError(
                f"session {session_id!r} has no home worker; route one of its calls first"
            ) from None

    def reassign(self, session_id: str, worker: str, now: float = 0.0) -> None:
        """Move a session's home (work stealing, migration) and record the move."""
        src = self.home(session_id)
        if src != worker:
            self.moves.append(Move(session_id, src, worker, now))
            self._home[session_id] = worker

    def forget(self, session_id: str) -> None:
        """Drop a finished session from the table."""
        if self._home.pop(session_id, None) is None:
            raise UnknownSessionError(f"session {session_id!r} is not in the session table")

    def homes(self) -> Mapping[str, str]:
        """Every session's home worker (a read-only view)."""
        return MappingProxyType(self._home)

    def __len__(self) -> int:
        return len(self._home)


class PrefixAffinityRouter(RouterEvents):
    """llm-d's inference scheduler (EPP) in its default profile, routing for vLLM with APC.

    Each worker is scored ``queue_weight * q + kv_weight * (1 - kv_usage) + prefix_weight * hit``
    and the highest score wins (llm-d's max-score picker). ``q`` is the queue-scorer's min-max
    normalised waiting-queue depth (:func:`min_max_score`), ``1 - kv_usage`` the
    kv-cache-utilization scorer, ``hit`` the prefix-cache scorer: the share of the request's
    blocks the worker holds (longest prefix match). The weights are llm-d's default profile
    (``pkg/epp/config/loader/defaults.go``: queue 2, KV utilisation 2, prefix cache 3).

    Without ``request.signals`` (a caller with only one load per worker) ``q`` is the min-max
    score of ``loads`` and the KV scorer is neutral. The prefix index is llm-d's approximate
    scorer's: routed blocks are assumed cached, bounded per worker by ``capacity_blocks`` in LRU
    order; feeding evictions through :meth:`blocks_removed` (and stores through
    :meth:`blocks_stored`) makes it the precise scorer, which follows vLLM's KV events.
    """

    load_kind: ClassVar[LoadKind] = "utilisation"
    reads_signals: ClassVar[bool] = True

    def __init__(self, prefix_weight: float = 3.0, queue_weight: float = 2.0,
                 kv_weight: float = 2.0, capacity_blocks: int | None = None) -> None:
        if min(prefix_weight, queue_weight, kv_weight) < 0 or (
                prefix_weight + queue_weight + kv_weight == 0):
            raise SagaConfigError(
                "PrefixAffinityRouter weights must be >= 0 and not all 0, got "
                f"prefix_weight={prefix_weight}, queue_weight={queue_weight}, "
                f"kv_weight={kv_weight}")
        self.prefix_weight = prefix_weight
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight
        self._index = _PrefixIndex(capacity_blocks)

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str:
        """The highest-scoring worker; the request's blocks are then recorded there."""
        _check_loads(loads)
        workers = sorted(loads)
        n = len(request.block_hashes)
        matched = self._index.match_blocks(request.block_hashes, workers)
        sig = request.signals
        if sig is None:
            queue = min_max_score(loads)
            free = dict.fromkeys(workers, 1.0)
        else:
            queue = min_max_score({w: sig[w].waiting for w in workers})
            free = {w: 1.0 - sig[w].kv_usage for w in workers}

        def score(w: str) -> float:
            hit = matched[w] / n if n else 0.0
            return (self.prefix_weight * hit + self.queue_weight * queue[w]
                    + self.kv_weight * free[w])

        best = min(workers, key=lambda w: (-score(w), loads[w], w))
        self._index.insert(best, request.block_hashes)
        return best

    def blocks_stored(self, worker: str, hashes: Sequence[int]) -> None:
        """A worker's cache now holds these blocks (a KV 'stored' event)."""
        self._index.insert(worker, hashes)

    def blocks_removed(self, worker: str, hashes: Sequence[int]) -> None:
        """A worker's cache evicted these blocks (a KV 'removed' event)."""
        self._index.remove(worker, hashes)

    def forget_worker(self, worker: str) -> None:
        """Drop everything known about a worker (it left or restarted)."""
        self._index.forget_worker(worker)

    def cached_blocks(self, request: RouteRequest, worker: str) -> int:
        """Blocks of the request's longest cached prefix on ``worker``, per this router's view."""
        return self._index.match_blocks(request.block_hashes, [worker])[worker]


class CacheAwareRouter(RouterEvents):
    """SGLang's cache-aware router (sgl-router ``cache_aware`` policy).

    The router keeps an approximate radix tree per worker of the prompts it sent there. If the
    system is imbalanced, ``max - min > balance_abs_threshold`` *and* ``max > balance_rel_threshold
    * min`` over the workers' loads (running + queued requests), it routes to the least loaded
    worker (shortest queue). Otherwise it routes to the worker with the highest prefix match rate
    (matched / request length) if that rate exceeds ``cache_threshold``, else to the worker whose
    tree is smallest (the most free cache). The chosen worker's tree then gains the request.

    Defaults are sgl-router's current CLI defaults: cache_threshold 0.3, balance_abs_threshold 64,
    balance_rel_threshold 1.5, max_tree_size 2**26 (older releases documented cache_threshold
    0.5). sgl-router's tree is over characters (or tokens) and evicts LRU leaves every
    ``eviction_interval`` seconds down to ``max_tree_size``; ours is over KV blocks and evicts at
    once, the tighter reading (the view never overshoots the cap). ``max_tree_size`` is converted
    from tokens to blocks with ``block_tokens``.
    """

    load_kind: ClassVar[LoadKind] = "requests"

    def __init__(self, cache_threshold: float = 0.3, balance_abs_threshold: float = 64.0,
                 balance_rel_threshold: float = 1.5, max_tree_size: int = 2**26,
                 block_tokens: int = 16) -> None:
        if not 0.0 <= cache_threshold <= 1.0:
            raise SagaConfigError(
                f"CacheAwareRouter.cache_threshold must be in [0, 1], got {cache_threshold}")
        if balance_abs_threshold < 0 or balance_rel_threshold < 1.0:
            raise SagaConfigError(
                "CacheAwareRouter needs balance_abs_threshold >= 0 and balance_rel_threshold "
                f">= 1, got {balance_abs_threshold} and {balance_rel_threshold}")
        if max_tree_size <= 0 or block_tokens <= 0:
            raise SagaConfigError("CacheAwareRouter.max_tree_size and block_tokens must be > 0")
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self._index = _PrefixIndex(max(1, max_tree_size // block_tokens))

    def is_imbalanced(self, loads: Mapping[str, float]) -> bool:
        """sgl-router's test: both the absolute and the relative gap exceed their thresholds."""
        _check_loads(loads)
        lo, hi = min(loads.values()), max(loads.values())
        return hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo

    def route(self, request: RouteRequest, loads: Mapping[str, float]) -> str:
        """Shortest queue when imbalanced, else best prefix match or smallest tree."""
        _check_loads(loads)
        workers = sorted(loads)
        if self.is_imbalanced(loads):
            dst = least_loaded(loads)
        else:
            n = len(request.block_hashes)
            matched = self._index.match_blocks(request.block_hashes, workers)
            best = min(workers, key=lambda w: (-matched[w], loads[w], w))
            rate = matched[best] / n if n else 0.0
            if rate > self.cache_threshold:
                dst = best
            else:
                dst = min(workers, key=lambda w: (self._index.size(w), loads[w], w))
        self._index.insert(dst, request.block_hashes)
        return dst

    def tree_size(self, worker: str) -> int:
        """Blocks in the router's tree for ``worker``."""
        return self._index.size(worker)

    def forget_worker(self, worker: str) -> None:
        """Drop a worker's tree (it left or restarted)."""
        self._index.forget_worker(worker)


__all__ = [
    "THETA",
    "AffinityRouter",
    "CacheAwareRouter",
    "LeastLoadedRouter",
    "LoadKind",
    "Move",
    "PrefixAffinityRouter",
    "RouteRequest",
    "Router",
    "RouterEvents",
    "Steal",
    "UnknownWorkerError",
    "WorkStealer",
    "WorkerSignals",
    "WorkerState",
    "expected_home_held",
    "least_loaded",
    "min_max_score",
    "move_cost",
    "route",
    "should_steal",
]
