"""The scheduler's policy objects, built from its config's preset, and how vLLM enacts each.

:class:`SchedulerPolicies` holds what one engine runs: the preset's :class:`PolicyBundle` (its
TTL policy, with the latency model it learns) and the engine-local objects of
``bundle.engine()`` (eviction policy, waiting queue, fairness) — the same classes with the same
parameters the simulator builds from that preset. Router and stealing belong to a deployment of
several engines and are not used here.

vLLM picks eviction victims from its own free-block queue; :func:`eviction_enactment` says how
that queue enacts a policy object. vLLM's queue is LRU by free time with a finished request's
blocks appended tail first, i.e. a prefix's tail is evicted before its head: that is the order
``lru``, ``prefix_lru`` and ``radix_lru`` model, so those run on vLLM's native order. WA-LRU
ranks by its score with the policy object's own weights; KVFlow by the steps-to-execution hint
the scheduler stamps on a finished call's blocks (largest first, then least recently freed, then
the longer prefix). ``eta`` ranks by predicted-next-use value
(:class:`~saga.vllm.eta_rank.ValueRanker` over the policy object's own estimator, fed by the
scheduler; leaves of a cached chain only, lowest value first). A hint-reading policy the queue
does not know runs on the native order, and ``saga_stats()["eviction_enacted"]`` says so.

This module imports no vLLM, so the config can use it in light processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saga.policy.afs import AFS
from saga.policy.eviction import ETAPolicy, EvictionPolicy, KVFlowPolicy, WALRUPolicy
from saga.policy.presets import EnginePolicies, PolicyBundle, Preset
from saga.policy.queueing import FCFSQueue, RequestQueue
from saga.policy.ttl import TTLPolicy
from saga.vllm.eta_rank import ValueRanker

if TYPE_CHECKING:
    from saga.vllm.config import SagaSchedulerConfig

NATIVE_LRU = "native_lru"
"""``eviction_enacted`` when vLLM's own free-block order runs."""
WALRU_SCORE = "walru_score"
"""``eviction_enacted`` when the free-block queue ranks by WA-LRU's score."""
STEPS_TO_EXEC = "steps_to_exec"
"""``eviction_enacted`` when the free-block queue ranks by KVFlow's steps-to-execution."""
ETA_VALUE = "eta_value"
"""``eviction_enacted`` when the free-block queue ranks by predicted-next-use value (``eta``)."""
DRAM_WALRU = "saga_walru"
"""vLLM ``CachePolicyFactory`` name of SAGA's WA-LRU DRAM-tier policy (:mod:`saga.vllm.offload`)."""
DRAM_ETA = "saga_eta"
"""vLLM ``CachePolicyFactory`` name of SAGA's value-ranked DRAM-tier policy
(:mod:`saga.vllm.offload_eta`)."""


@dataclass(frozen=True)
class EvictionEnactment:
    """How the free-block queue enacts an eviction policy: ``mode`` (one of the constants
    above) and the keyword arguments of :class:`~saga.vllm.block_queue.WALRUFreeBlockQueue`;
    ``dram_policy`` is the DRAM tier's cache policy that matches it (``DRAM_ETA`` for ``eta``,
    else WA-LRU)."""

    mode: str
    queue_kwargs: dict[str, Any] = field(default_factory=dict)
    dram_policy: str = DRAM_WALRU

    @property
    def native(self) -> bool:
        """vLLM's own free-block order runs (nothing differs from stock vLLM)."""
        return self.mode == NATIVE_LRU


def eviction_enactment(policy: EvictionPolicy) -> EvictionEnactment:
    """The free-block queue's mode for ``policy`` (see the module docstring)."""
    if isinstance(policy, WALRUPolicy):
        return EvictionEnactment(WALRU_SCORE, {
            "walru": True, "alpha": policy.alpha, "beta": policy.beta, "gamma": policy.gamma})
    if isinstance(policy, KVFlowPolicy):
        return EvictionEnactment(STEPS_TO_EXEC, {"steps": True})
    if isinstance(policy, ETAPolicy):
        return EvictionEnactment(ETA_VALUE, {"walru": False,
                                             "ranker": ValueRanker.from_policy(policy)},
                                 dram_policy=DRAM_ETA)
    return EvictionEnactment(NATIVE_LRU, {})


@dataclass(frozen=True)
class SchedulerPolicies:
    """What one :class:`~saga.vllm.scheduler.SagaScheduler` runs, built from its preset."""

    preset: Preset
    bundle: PolicyBundle
    engine: EnginePolicies
    enactment: EvictionEnactment

    @property
    def eviction(self) -> EvictionPolicy:
        """The eviction policy object (its parameters drive the free-block queue)."""
        return self.engine.eviction

    @property
    def queue(self) -> RequestQueue:
        """The waiting-queue order."""
        return self.engine.queue

    @property
    def fairness(self) -> AFS | None:
        """Task-level fairness (None: off)."""
        return self.engine.fairness

    @property
    def ttl(self) -> TTLPolicy | None:
        """Retention through tool calls (None: no pins)."""
        return self.bundle.ttl

    @property
    def native_queue(self) -> bool:
        """vLLM's own FIFO deque gives this order (FCFS without fairness), so it stays."""
        return type(self.queue) is FCFSQueue and self.fairness is None


def build_scheduler_policies(config: SagaSchedulerConfig) -> SchedulerPolicies:
    """Fresh policy objects for one engine from ``config.effective_preset()``; the fairness
    layer shares ``afs_capacity_tokens_per_s``."""
    preset = config.effective_preset()
    bundle = preset.build()
    engine = bundle.engine(capacity_per_s=config.afs_capacity_tokens_per_s)
    return SchedulerPolicies(preset, bundle, engine, eviction_enactment(engine.eviction))


__all__ = [
    "DRAM_ETA",
    "DRAM_WALRU",
    "ETA_VALUE",
    "NATIVE_LRU",
    "STEPS_TO_EXEC",
    "WALRU_SCORE",
    "EvictionEnactment",
    "SchedulerPolicies",
    "build_scheduler_policies",
    "eviction_enactment",
]
