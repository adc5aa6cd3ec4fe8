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
the longer prefix). A hint-reading policy the queue does not know runs on the native order, and
``saga_stats()["eviction_enacted"]`` says so.

This module imports no vLLM, so the config can use it in light processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saga.policy.afs import AFS
from saga.policy.eviction import EvictionPolicy, KVFlowPolicy, WALRUPolicy
from saga.policy.presets import EnginePolicies, PolicyBundle, Preset
from saga.policy.queueing import FCFSQueue, RequestQueue
from saga.policy.ttl import TTLPolicy

if TYPE_CHECKING:
    from saga.vllm.config import SagaSchedulerConfig

NATIVE_LRU = "native_lru"
"""``eviction_enacted`` when vLLM's own free-block order runs."""
WALRU_SCORE = "walru_score"
"""``eviction_enacted`` when the free-block queue ranks by WA-LRU's score."""
STEPS_TO_EXEC = "steps_to_exec"
"""``eviction_enacted`` when the free-block queue ranks by KVFlow's steps-to-execution."""


@dataclass(frozen=True)
class EvictionEnactment:
    """How the free-block queue enacts an eviction policy: ``mode`` (one of the constants
    above) and the keyword arguments of :class:`~saga.vllm.block_queue.WALRUFreeBlockQueue`."""

    mode: str
    queue_kwargs: dict[str, Any] = field(default_factory=dict)

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
    "NATIVE_LRU",
    "STEPS_TO_EXEC",
    "WALRU_SCORE",
    "EvictionEnactment",
    "SchedulerPolicies",
    "build_scheduler_policies",
    "eviction_enactment",
]
