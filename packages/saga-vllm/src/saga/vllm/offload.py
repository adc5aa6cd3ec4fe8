"""SAGA's DRAM tier: vLLM's OffloadingConnector with a workflow-aware (WA-LRU) cache policy.

vLLM 0.32 keeps a CPU-DRAM copy of evicted KV blocks through its ``OffloadingConnector``: the
scheduler-side ``CPUOffloadingManager`` decides what the DRAM tier holds and delegates the
replacement choice to a ``CachePolicy`` looked up by name in ``CachePolicyFactory``
(``vllm/v1/kv_offload/cpu/policies``; built in: ``lru`` and ``arc``). A request whose prefix was
evicted from the device pool but is still in DRAM gets it loaded back and counted as cached
tokens — a hit, not a recompute. This module adds:

- :class:`WALRUCachePolicy`, a ``CachePolicy`` that evicts by saga-policy's
  :func:`~saga.policy.eviction.walru.walru_score` (recency, predicted reuse, prefix size), with
  one vectorised pass per eviction batch rather than a scan per victim;
- :class:`OffloadReuseHints`, a small table block-hash → reuse probability that the scheduler
  fills, read by the policy. Each engine has its own: ``SagaScheduler`` creates one and binds
  it to the WA-LRU policies of its own connector (:func:`bind_reuse_hints`), so two engines in
  one process never read each other's hints;
- :func:`offload_engine_kwargs`, the engine keyword arguments that switch the tier on.

The policy is registered as ``"saga_walru"`` through vLLM's own registry
(``CachePolicyFactory.register_cache_policy``) when this module is imported, and
:func:`offload_engine_kwargs` names it by class and module path (vLLM's out-of-tree lookup), so
the engine-core process finds it without any registration having run there.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from saga.policy.errors import SagaConfigError
from saga.policy.eviction.walru import (
    UNKNOWN_REUSE,
    WALRU_ALPHA,
    WALRU_BETA,
    WALRU_GAMMA,
    check_walru_weights,
    walru_score,
)
from saga.vllm.policies import DRAM_ETA, DRAM_WALRU
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, order_request_keys
from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

SAGA_WALRU = DRAM_WALRU
"""Registry name of :class:`WALRUCachePolicy` in vLLM's ``CachePolicyFactory``."""
POLICY_CLASS = "WALRUCachePolicy"
_SAGA_POLICIES: dict[str, tuple[str, str]] = {
    SAGA_WALRU: (POLICY_CLASS, __name__),
    DRAM_ETA: ("ETACachePolicy", "saga.vllm.offload_eta"),
}
"""SAGA's DRAM-tier policies by vLLM registry name: (class, module), for vLLM's out-of-tree
lookup in the engine-core process."""
REUSE_PARAM = "saga_reuse_prob"
"""Key in a request's ``kv_transfer_params`` giving the reuse probability of all its blocks
(``SamplingParams(extra_args={"kv_transfer_params": {REUSE_PARAM: 0.9}})``)."""

_GROUP_SUFFIX = 4
"""Bytes vLLM appends to a block hash to make an ``OffloadKey`` (the KV-cache group index)."""

FloatArray = npt.NDArray[np.float64]


def _check_prob(value: float, what: str) -> float:
    p = float(value)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise SagaConfigError(f"{what} must be a probability in [0, 1], got {value!r}")
    return p


class OffloadReuseHints:
    """Block hash → predicted reuse probability, for the DRAM tier's WA-LRU policy.

    The scheduler knows each session's workflow position (pending tool, AEG node, final call)
    while the offloading manager only sees block keys, so the two meet here: the scheduler calls
    ``set(request.block_hashes, p)`` (vLLM's ``BlockHash`` bytes, the same hashes the tier keys
    its chunks by) whenever it learns something — e.g. ``p_reuse`` of the pending tool's AEG
    node after a call, 0 after a session's final call. Policies subscribed to the table see
    updates of blocks they hold at once; blocks stored later read the table when inserted.

    Both sides run in the engine-core process; the table is the engine's (the scheduler owns it
    and binds it to its connector's policy). The table is bounded (oldest entries dropped first)
    so hints of blocks that were never stored cannot grow it without limit.
    """

    def __init__(self, max_entries: int = 1 << 20) -> None:
        if max_entries < 1:
            raise SagaConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._probs: OrderedDict[bytes, float] = OrderedDict()
        self._listeners: weakref.WeakSet[WALRUCachePolicy] = weakref.WeakSet()

    def set(self, block_hashes: Iterable[bytes], reuse_prob: float) -> None:
        """Record ``reuse_prob`` (in [0, 1]) for every block hash given."""
        p = _check_prob(reuse_prob, "reuse_prob")
        hashes = [bytes(h) for h in block_hashes]
        for h in hashes:
            self._probs[h] = p
            self._probs.move_to_end(h)
        while len(self._probs) > self.max_entries:
            self._probs.popitem(last=False)
        for policy in list(self._listeners):
            policy.apply_hint(hashes, p)

    def get(self, block_hash: bytes) -> float | None:
        """The recorded reuse probability, or None when nothing is known about the block."""
        return self._probs.get(block_hash)

    def forget(self, block_hashes: Iterable[bytes]) -> None:
        """Drop hints (resident blocks keep the value they last saw)."""
        for h in block_hashes:
            self._probs.pop(bytes(h), None)

    def clear(self) -> None:
        self._probs.clear()

    def subscribe(self, policy: WALRUCachePolicy) -> None:
        """Push later updates to ``policy`` (held weakly, so a dropped engine is not kept)."""
        self._listeners.add(policy)

    def unsubscribe(self, policy: WALRUCachePolicy) -> None:
        """Stop pushing updates to ``policy``."""
        self._listeners.discard(policy)

    def __len__(self) -> int:
        return len(self._probs)


class WALRUCachePolicy(CachePolicy):  # type: ignore[misc]
    """vLLM DRAM-tier cache policy evicting the highest WA-LRU score first.

    Per chunk it keeps a logical last-use tick (vLLM's policies get no clock: like its LRU, a
    request's keys are re-ranked tail-to-head, so a prefix's head is the most recent), the
    predicted reuse probability (hint table, else the request's ``kv_transfer_params``
    ``saga_reuse_prob``, else ``UNKNOWN_REUSE``) and its size — the prefix tokens ending at the
    chunk, from the positions vLLM records in the ``ReqContext``. At eviction, over the
    evictable unprotected chunks: ``R̂ = age / max age``, ``Ŝ = size / max size`` and the score
    is :func:`walru_score`; ties go least recently used, then deepest. The deep-and-old bias of
    ``R̂`` and ``Ŝ`` evicts a prefix's tail before its head, as vLLM's lookup stops at the first
    missing chunk.

    State lives in slot-indexed numpy arrays, so an eviction batch is one vectorised pass
    (``argpartition``) over the resident chunks, independent of how many victims it takes.

    vLLM builds the policy with its capacity only, so it starts with a table of its own; the
    engine's scheduler then gives it the engine's table (:meth:`bind_hints`).
    """

    def __init__(self, cache_capacity: int, *, hints: OffloadReuseHints | None = None,
                 alpha: float = WALRU_ALPHA, beta: float = WALRU_BETA,
                 gamma: float = WALRU_GAMMA) -> None:
        super().__init__(cache_capacity)
        check_walru_weights(alpha, beta, gamma)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.hints = OffloadReuseHints() if hints is None else hints
        self.hints.subscribe(self)
        self._init_state(max(int(cache_capacity), 16))

    def bind_hints(self, hints: OffloadReuseHints) -> None:
        """Read ``hints`` from now on (the engine's table); resident chunks take its values."""
        self.hints.unsubscribe(self)
        self.hints = hints
        hints.subscribe(self)
        for key, slot in self._slot.items():
            hinted = hints.get(key[:-_GROUP_SUFFIX])
            if hinted is not None:
                self._reuse[slot] = hinted

    def _init_state(self, slots: int) -> None:
        self._slot: dict[bytes, int] = {}
        self._keys: list[bytes | None] = [None] * slots
        self._chunks: list[Any] = [None] * slots
        self._free: list[int] = list(range(slots - 1, -1, -1))
        self._last = np.zeros(slots, np.float64)
        self._reuse = np.full(slots, np.nan, np.float64)
        self._size = np.zeros(slots, np.float64)
        self._evictable = np.zeros(slots, bool)
        self._clock = 0.0
        self._groups: set[bytes] = set()
        self._pending: dict[bytes, tuple[float, float]] = {}

    def _grow(self) -> None:
        old = len(self._keys)
        self._keys.extend([None] * old)
        self._chunks.extend([None] * old)
        self._free.extend(range(2 * old - 1, old - 1, -1))
        self._last = np.concatenate([self._last, np.zeros(old)])
        self._reuse = np.concatenate([self._reuse, np.full(old, np.nan)])
        self._size = np.concatenate([self._size, np.zeros(old)])
        self._evictable = np.concatenate([self._evictable, np.zeros(old, bool)])

    # --- what a request tells about its keys ---

    def _request_reuse(self, req_context: Any) -> float:
        """The request's ``saga_reuse_prob``; NaN when absent or not a probability.

        Runs inside the engine's scheduling step, where raising would take the engine down for
        one bad request: a malformed value counts as "no prediction" (front ends validate).
        """
        params = getattr(req_context, "kv_transfer_params", None)
        if not isinstance(params, dict):
            return math.nan
        value = params.get(REUSE_PARAM)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return math.nan
        p = float(value)
        return p if 0.0 <= p <= 1.0 else math.nan

    def _reuse_of(self, key: bytes, request_reuse: float) -> float:
        hinted = self.hints.get(key[:-_GROUP_SUFFIX])
        return request_reuse if hinted is None else hinted

    def _observe(self, keys: Sequence[bytes], req_context: Any) -> None:
        """Re-rank resident ``keys`` (head-to-tail order) and refresh their size and reuse."""
        request_reuse = self._request_reuse(req_context)
        slots: list[int] = []
        for key in reversed(keys):
            slot = self._slot.get(key)
            if slot is None:
                continue
            slots.append(slot)
            pos = req_context.get_offload_key_position(key)
            if pos is not None:
                self._size[slot] = float(pos)
            p = self._reuse_of(key, request_reuse)
            if not math.isnan(p):
                self._reuse[slot] = p
        if slots:
            self._last[slots] = self._clock + np.arange(1, len(slots) + 1)
            self._clock += len(slots)

    def apply_hint(self, block_hashes: Sequence[bytes], reuse_prob: float) -> None:
        """Hint-table update: set the reuse probability of the resident chunks among them."""
        for h in block_hashes:
            for group in self._groups:
                slot = self._slot.get(h + group)
                if slot is not None:
                    self._reuse[slot] = reuse_prob

    # --- CachePolicy ---

    def get(self, key: bytes) -> Any:
        slot = self._slot.get(key)
        return None if slot is None else self._chunks[slot]

    def insert(self, key: bytes, chunk: Any) -> None:
        if key in self._slot:
            self.remove(key)
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._slot[key] = slot
        self._keys[slot] = key
        self._chunks[slot] = chunk
        self._groups.add(key[-_GROUP_SUFFIX:])
        size, reuse = self._pending.pop(key, (0.0, math.nan))
        hinted = self.hints.get(key[:-_GROUP_SUFFIX])
        self._size[slot] = size
        self._reuse[slot] = reuse if hinted is None else hinted
        self._clock += 1
        self._last[slot] = self._clock
        self._evictable[slot] = chunk.ref_cnt == 0

    def remove(self, key: bytes) -> None:
        slot = self._slot.pop(key)
        self._keys[slot] = None
        self._chunks[slot] = None
        self._evictable[slot] = False
        self._reuse[slot] = np.nan
        self._free.append(slot)

    def on_store_miss(self, keys: Iterable[bytes], req_context: Any) -> None:
        """Remember size and request reuse of keys about to be inserted (insert gets no context)."""
        request_reuse = self._request_reuse(req_context)
        pending: dict[bytes, tuple[float, float]] = {}
        for key in keys:
            pos = req_context.get_offload_key_position(key)
            pending[key] = (0.0 if pos is None else float(pos), request_reuse)
        self._pending = pending

    def touch(self, keys: Iterable[bytes], req_context: Any) -> None:
        self._observe(list(keys), req_context)

    def on_request_finished(self, key_groups: Sequence[Sequence[bytes]],
                            insertion_only_keys: set[bytes], reused_keys: set[bytes],
                            req_context: Any) -> None:
        del insertion_only_keys, reused_keys
        self._observe(order_request_keys(key_groups, req_context), req_context)

    def mark_evictable(self, key: bytes) -> None:
        self._evictable[self._slot[key]] = True

    def mark_non_evictable(self, key: bytes) -> None:
        self._evictable[self._slot[key]] = False

    def clear(self) -> None:
        self._init_state(len(self._keys))

    def scores(self, slots: npt.NDArray[np.intp]) -> FloatArray:
        """WA-LRU score of the given slots, normalised over them (higher: evict sooner)."""
        age = self._clock - self._last[slots]
        size = self._size[slots]
        top_age = float(age.max()) if age.size else 0.0
        top_size = float(size.max()) if size.size else 0.0
        r_hat = age / top_age if top_age > 0 else np.zeros_like(age)
        s_hat = size / top_size if top_size > 0 else np.zeros_like(size)
        hint = self._reuse[slots]
        p_reuse = np.where(np.isnan(hint), UNKNOWN_REUSE, hint)
        return walru_score(r_hat, p_reuse, s_hat, self.alpha, self.beta, self.gamma)

    def evict(self, n: int, protected: set[bytes]) -> list[tuple[bytes, Any]] | None:
        """Evict exactly ``n`` evictable, unprotected chunks by WA-LRU score, or none (None)."""
        if n <= 0:
            return []
        mask = self._evictable.copy()
        for key in protected:
            slot = self._slot.get(key)
            if slot is not None:
                mask[slot] = False
        cand = np.flatnonzero(mask)
        if cand.size < n:
            return None
        score = self.scores(cand)
        if n < cand.size:
            # Victims: every score above the n-th largest, then ties by (oldest, deepest).
            kth = float(np.partition(score, cand.size - n)[cand.size - n])
            above = np.flatnonzero(score > kth)
            tied = np.flatnonzero(score == kth)
            tie_order = np.lexsort((-self._size[cand[tied]], self._last[cand[tied]]))
            pick = np.concatenate([above, tied[tie_order[: n - above.size]]])
        else:
            pick = np.arange(cand.size)
        slots = cand[pick]
        order = np.lexsort((-self._size[slots], self._last[slots], -score[pick]))
        victims: list[tuple[bytes, Any]] = []
        for slot in slots[order].tolist():
            key = self._keys[slot]
            assert key is not None
            victims.append((key, self._chunks[slot]))
            self.remove(key)
        return victims


def register_cache_policy() -> None:
    """Register :class:`WALRUCachePolicy` as ``"saga_walru"`` in vLLM's policy registry.

    Idempotent. Import of this module does it; the vLLM general plugin may call it so the short
    name also works in processes that never import saga.vllm.
    """
    if SAGA_WALRU not in CachePolicyFactory._registry:
        CachePolicyFactory.register_cache_policy(SAGA_WALRU, __name__, POLICY_CLASS)


register_cache_policy()


def _host_worker_needed() -> bool:
    """True where vLLM's own DRAM-tier worker refuses to run (no CUDA-alike or XPU device)."""
    from vllm.platforms import current_platform

    return not (current_platform.is_cuda_alike() or current_platform.is_xpu())


def offload_engine_kwargs(cpu_bytes: int, policy: str = SAGA_WALRU, *,
                          blocks_per_chunk: int | None = None, store_threshold: int | None = None,
                          host_worker: bool | None = None) -> dict[str, Any]:
    """Engine keyword arguments (``vllm.LLM`` / ``EngineArgs``) enabling a DRAM tier of
    ``cpu_bytes`` under ``policy``: ``"saga_walru"`` (WA-LRU), ``"saga_eta"`` (predicted-next-use
    value, :mod:`saga.vllm.offload_eta`), ``"lru"``, ``"arc"`` or any name registered in vLLM's
    ``CachePolicyFactory``.

    ``host_worker`` (default: where no CUDA-alike/XPU device exists) selects
    :class:`~saga.vllm.offload_host.HostOffloadingSpec`, whose memcpy worker replaces the CUDA
    transfer worker vLLM's CPU build refuses to start. ``blocks_per_chunk`` groups device blocks
    into larger DRAM chunks (vLLM's default: 1); ``store_threshold`` ≥ 2 stores a block only after
    that many offers. Prefix caching must stay on (the tier is keyed by prefix hashes).

    vLLM keeps the worker-side connector in a process-wide singleton: with the in-process engine
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) only one engine per process may have a tier, and no
    engine without one may run while it exists; the default multiprocess engine has its own
    engine-core process and no such limit.
    """
    from vllm.config import KVTransferConfig

    if cpu_bytes <= 0:
        raise SagaConfigError(f"cpu_bytes must be > 0, got {cpu_bytes}")
    extra: dict[str, Any] = {"cpu_bytes_to_use": int(cpu_bytes)}
    if policy in _SAGA_POLICIES:
        extra["eviction_policy"], extra["cache_policy_module_path"] = _SAGA_POLICIES[policy]
    else:
        extra["eviction_policy"] = policy
    if blocks_per_chunk is not None:
        if blocks_per_chunk < 1:
            raise SagaConfigError(f"blocks_per_chunk must be >= 1, got {blocks_per_chunk}")
        extra["blocks_per_chunk"] = int(blocks_per_chunk)
    if store_threshold is not None:
        extra["store_threshold"] = int(store_threshold)
    if _host_worker_needed() if host_worker is None else host_worker:
        from saga.vllm.offload_host import HOST_SPEC_MODULE, HOST_SPEC_NAME

        extra["spec_name"] = HOST_SPEC_NAME
        extra["spec_module_path"] = HOST_SPEC_MODULE
    return {"kv_transfer_config": KVTransferConfig(
        kv_connector="OffloadingConnector", kv_role="kv_both", kv_connector_extra_config=extra)}


def _connectors(connector: Any) -> list[Any]:
    """``connector`` and, for vLLM's ``MultiConnector``, the connectors it wraps."""
    if connector is None:
        return []
    return [connector, *(getattr(connector, "_connectors", None) or ())]


def offload_policies(connector: Any) -> list[WALRUCachePolicy]:
    """The WA-LRU DRAM-tier policies behind a scheduler's KV connector (scheduler side)."""
    out: list[WALRUCachePolicy] = []
    for conn in _connectors(connector):
        manager = getattr(getattr(conn, "connector_scheduler", None), "manager", None)
        policy = getattr(manager, "_policy", None)
        if isinstance(policy, WALRUCachePolicy):
            out.append(policy)
    return out


def bind_reuse_hints(connector: Any, hints: OffloadReuseHints) -> list[WALRUCachePolicy]:
    """Give the WA-LRU policies of ``connector`` (one engine's) the engine's hint table;
    returns them. The policy is built inside vLLM's connector before the scheduler's own code
    runs, so the scheduler binds it right after (``SagaScheduler.__init__``)."""
    policies = offload_policies(connector)
    for policy in policies:
        policy.bind_hints(hints)
    return policies


def offload_manager(llm: Any) -> Any:
    """The live ``CPUOffloadingManager`` of an in-process ``vllm.LLM`` (None without a tier)."""
    core = llm.llm_engine.engine_core
    scheduler = getattr(getattr(core, "engine_core", None), "scheduler", None)
    connector = getattr(scheduler, "connector", None)
    conn_sched = getattr(connector, "connector_scheduler", None)
    return getattr(conn_sched, "manager", None)


__all__ = [
    "POLICY_CLASS",
    "REUSE_PARAM",
    "SAGA_WALRU",
    "OffloadReuseHints",
    "WALRUCachePolicy",
    "bind_reuse_hints",
    "offload_engine_kwargs",
    "offload_manager",
    "offload_policies",
    "register_cache_policy",
]
