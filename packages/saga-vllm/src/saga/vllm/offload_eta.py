"""SAGA's DRAM tier under the ``eta`` policy: offloaded blocks ranked by predicted-next-use value.

:class:`ETACachePolicy` is a vLLM ``CachePolicy`` (registered as ``"saga_eta"`` in
``CachePolicyFactory``, like :class:`~saga.vllm.offload.WALRUCachePolicy`) that evicts the chunk
with the lowest :func:`~saga.policy.nextuse.block_value` first, leaves of a cached chain only
(vLLM's lookup stops at the first missing chunk): ties deepest first, then least recently used.
Its own :class:`~saga.policy.nextuse.NextUseEstimator` (one per cache, as the estimator
requires) predicts each chunk's next use with the same semantics as the device pool's: a session
with a call in flight wants its chunks now, a session in a tool call when the tool is expected
back, an ended session never; chunks no session claims go by their own reuse history.

vLLM's policies see only block keys, while the scheduler knows sessions, so the two meet in a
:class:`NextUseFeed`: the engine's scheduler creates one, binds it to its connector's ETA
policies (:func:`bind_next_use`) and reports every call's arrival and finish to it. Without a
feed (a policy vLLM built outside ``SagaScheduler``) the policy learns from the accesses vLLM
reports (``touch``, ``on_request_finished``), i.e. block history only.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from saga.policy.nextuse import NextUseEstimator, block_value, recompute_flops
from saga.policy.spec import LLAMA3_70B, ModelSpec
from saga.vllm.eta_rank import ChainLinks, end_session, leaves_first
from saga.vllm.offload import _connectors
from saga.vllm.policies import DRAM_ETA
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, order_request_keys
from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

SAGA_ETA = DRAM_ETA
"""Registry name of :class:`ETACachePolicy` in vLLM's ``CachePolicyFactory``."""
ETA_POLICY_CLASS = "ETACachePolicy"
_GROUP0 = (0).to_bytes(4, "big", signed=False)
"""vLLM's ``OffloadKey`` suffix of KV-cache group 0 (``make_offload_key``)."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class NextUseFeed:
    """What the scheduler knows about sessions, pushed to the ETA policies of its engine.

    ``clock`` is the scheduler's (seconds); ``block_tokens`` its block size. Listeners are held
    weakly, so a dropped engine is not kept alive.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, block_tokens: int = 16
                 ) -> None:
        self.clock = clock
        self.block_tokens = max(int(block_tokens), 1)
        self._listeners: weakref.WeakSet[ETACachePolicy] = weakref.WeakSet()

    def subscribe(self, policy: ETACachePolicy) -> None:
        self._listeners.add(policy)

    def unsubscribe(self, policy: ETACachePolicy) -> None:
        self._listeners.discard(policy)

    def call_started(self, session_id: str, now: float) -> None:
        """A call of ``session_id`` arrived."""
        for policy in list(self._listeners):
            policy.estimator.call_started(session_id, now)

    def observe(self, block_hashes: Sequence[bytes], now: float, *,
                session_id: str | None = None, pending_tool: str | None = None,
                reuse_prob: float = 1.0, final: bool = False,
                agent_type: str | None = None) -> None:
        """A call that read ``block_hashes`` (vLLM's ``BlockHash``, head first) finished."""
        for policy in list(self._listeners):
            policy.observe_chain(block_hashes, now, session_id=session_id,
                                 pending_tool=pending_tool, reuse_prob=reuse_prob, final=final,
                                 agent_type=agent_type)

    def set_queue_delay(self, seconds: float) -> None:
        """The queueing delay a returning call waits (added to a tool's remaining time)."""
        for policy in list(self._listeners):
            policy.estimator.set_queue_delay(seconds)

    def session_ended(self, session_id: str, now: float) -> None:
        """The session's task is over."""
        for policy in list(self._listeners):
            end_session(policy.estimator, session_id, now)


class ETACachePolicy(CachePolicy):  # type: ignore[misc]
    """vLLM DRAM-tier cache policy evicting the lowest predicted-next-use value first.

    State lives in slot-indexed numpy arrays (a slot per resident chunk); an eviction batch is
    one vectorised value pass over the evictable chunks plus :func:`leaves_first`. vLLM builds
    the policy with its capacity only; the engine's scheduler then gives it its feed
    (:meth:`bind_feed`).
    """

    def __init__(self, cache_capacity: int, *, feed: NextUseFeed | None = None,
                 estimator: NextUseEstimator | None = None, model: ModelSpec = LLAMA3_70B
                 ) -> None:
        super().__init__(cache_capacity)
        self.model = model
        self.estimator = NextUseEstimator() if estimator is None else estimator
        # vLLM evicts before it inserts, so at most ``cache_capacity`` chunks are resident.
        self._slots = max(int(cache_capacity), 16)
        self.estimator.attach(self._slots)
        self.feed = NextUseFeed() if feed is None else feed
        self.feed.subscribe(self)
        self._fed = feed is not None
        self._init_state()

    def bind_feed(self, feed: NextUseFeed) -> None:
        """Learn sessions from ``feed`` (the engine's scheduler) from now on."""
        self.feed.unsubscribe(self)
        self.feed = feed
        feed.subscribe(self)
        self._fed = True

    def _init_state(self) -> None:
        n = self._slots
        self._slot: dict[bytes, int] = {}
        self._keys: list[bytes | None] = [None] * n
        self._chunks: list[Any] = [None] * n
        self._free: list[int] = list(range(n - 1, -1, -1))
        self._last = np.zeros(n, np.float64)
        self._depth = np.zeros(n, np.int64)
        self._evictable = np.zeros(n, np.bool_)
        self._tick = 0.0
        self._groups: set[bytes] = set()
        self._pending: dict[bytes, int] = {}
        self.links = ChainLinks(n)

    # --- what is known about the keys ---

    def observe_chain(self, block_hashes: Sequence[bytes], now: float, *,
                      session_id: str | None = None, pending_tool: str | None = None,
                      reuse_prob: float = 1.0, final: bool = False,
                      agent_type: str | None = None) -> None:
        """A call read ``block_hashes`` (head first): record the reference, claim the chunks
        for the session, link resident chunks parent to child."""
        keys: list[bytes] = []
        for group in sorted(self._groups or {_GROUP0}):
            chain = [bytes(h) + group for h in block_hashes]
            self._reference(chain, now)
            keys.extend(chain)
        self.estimator.observe_request([hash(k) for k in keys], now, session_id=session_id,
                                       pending_tool=pending_tool, reuse_prob=reuse_prob,
                                       final=final, agent_type=agent_type)

    def _reference(self, keys: Sequence[bytes], now: float) -> None:
        """Keys of one request, head to tail: depth, recency and chain links of resident ones."""
        chain = [self._slot.get(k, -1) for k in keys]
        resident = [(d, s) for d, s in enumerate(chain) if s >= 0]
        for d, s in resident:
            self._depth[s] = d
        if resident:
            slots = [s for _, s in resident]
            self._last[slots] = self._tick + np.arange(1, len(slots) + 1)
            self._tick += len(slots)
        self.links.link(chain)

    def _observe_access(self, keys: Sequence[bytes]) -> None:
        """vLLM reported an access: without a feed it is the only history there is."""
        if self._fed:
            self._reference(keys, self.feed.clock())
            return
        now = self.feed.clock()
        self._reference(keys, now)
        self.estimator.observe_request([hash(k) for k in keys], now)

    # --- CachePolicy ---

    def get(self, key: bytes) -> Any:
        slot = self._slot.get(key)
        return None if slot is None else self._chunks[slot]

    def insert(self, key: bytes, chunk: Any) -> None:
        if key in self._slot:
            self.remove(key)
        if not self._free:
            raise RuntimeError(f"ETACachePolicy holds {self._slots} chunks and got one more: "
                               "vLLM should have evicted first")
        slot = self._free.pop()
        self._slot[key] = slot
        self._keys[slot] = key
        self._chunks[slot] = chunk
        self._groups.add(key[-len(_GROUP0):])
        self._depth[slot] = self._pending.pop(key, 0)
        self._tick += 1
        self._last[slot] = self._tick
        self._evictable[slot] = chunk.ref_cnt == 0
        self.estimator.bind(np.array([slot], np.int64), [hash(key)])

    def remove(self, key: bytes) -> None:
        slot = self._slot.pop(key)
        self._keys[slot] = None
        self._chunks[slot] = None
        self._evictable[slot] = False
        self.estimator.unbind([hash(key)])
        self.links.drop([slot])
        self._free.append(slot)

    def on_store_miss(self, keys: Iterable[bytes], req_context: Any) -> None:
        """Remember the depth of keys about to be inserted (insert gets no context)."""
        tokens = self.feed.block_tokens
        pending: dict[bytes, int] = {}
        for key in keys:
            pos = req_context.get_offload_key_position(key)
            pending[key] = 0 if pos is None else max(int(pos) // tokens - 1, 0)
        self._pending = pending

    def touch(self, keys: Iterable[bytes], req_context: Any) -> None:
        del req_context
        self._observe_access(list(keys))

    def on_request_finished(self, key_groups: Sequence[Sequence[bytes]],
                            insertion_only_keys: set[bytes], reused_keys: set[bytes],
                            req_context: Any) -> None:
        del insertion_only_keys, reused_keys
        self._observe_access(order_request_keys(key_groups, req_context))

    def mark_evictable(self, key: bytes) -> None:
        self._evictable[self._slot[key]] = True

    def mark_non_evictable(self, key: bytes) -> None:
        self._evictable[self._slot[key]] = False

    def clear(self) -> None:
        self.estimator.unbind([hash(k) for k in self._slot])
        self._init_state()

    def values(self, slots: IntArray, now: float) -> FloatArray:
        """``block_value`` of the chunks in ``slots`` at ``now`` (higher: keep longer)."""
        next_use, p = self.estimator.predict(slots, now)
        tokens = self.feed.block_tokens
        saved = recompute_flops(self._depth[slots], tokens, self.model)
        size = float(self.model.kv_bytes_per_token * tokens)
        return block_value(p, saved, size, next_use - now)

    def evict(self, n: int, protected: set[bytes]) -> list[tuple[bytes, Any]] | None:
        """Evict exactly ``n`` evictable, unprotected chunks, lowest value first, or none."""
        if n <= 0:
            return []
        mask = self._evictable.copy()
        for key in protected:
            slot = self._slot.get(key)
            if slot is not None:
                mask[slot] = False
        cand = np.flatnonzero(mask).astype(np.int64)
        if cand.size < n:
            return None
        value = self.values(cand, self.feed.clock())
        chosen = leaves_first(cand, value, self._depth[cand], self._last[cand], self.links, n)
        victims: list[tuple[bytes, Any]] = []
        for slot in chosen.tolist():
            key = self._keys[slot]
            assert key is not None
            victims.append((key, self._chunks[slot]))
            self.remove(key)
        return victims


def register_eta_cache_policy() -> None:
    """Register :class:`ETACachePolicy` as ``"saga_eta"`` in vLLM's policy registry
    (idempotent; importing this module does it)."""
    if SAGA_ETA not in CachePolicyFactory._registry:
        CachePolicyFactory.register_cache_policy(SAGA_ETA, __name__, ETA_POLICY_CLASS)


register_eta_cache_policy()


def eta_policies(connector: Any) -> list[ETACachePolicy]:
    """The ETA DRAM-tier policies behind a scheduler's KV connector (scheduler side)."""
    out: list[ETACachePolicy] = []
    for conn in _connectors(connector):
        manager = getattr(getattr(conn, "connector_scheduler", None), "manager", None)
        policy = getattr(manager, "_policy", None)
        if isinstance(policy, ETACachePolicy):
            out.append(policy)
    return out


def bind_next_use(connector: Any, feed: NextUseFeed) -> list[ETACachePolicy]:
    """Give the ETA policies of ``connector`` (one engine's) the engine's feed; returns them."""
    policies = eta_policies(connector)
    for policy in policies:
        policy.bind_feed(feed)
    return policies


__all__ = [
    "ETA_POLICY_CLASS",
    "SAGA_ETA",
    "ETACachePolicy",
    "NextUseFeed",
    "bind_next_use",
    "eta_policies",
    "register_eta_cache_policy",
]
