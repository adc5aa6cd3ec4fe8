"""Presets: named bundles of policies, one per system the paper compares, as data.

A :class:`Preset` says which policy each layer uses (a :class:`PolicySpec`: a class or factory
plus its keyword arguments) and which mechanisms are switched on; :meth:`Preset.build` makes fresh
policy objects, so two simulations never share state. Presets are looked up by name in
:data:`PRESETS`; nothing branches on a preset's name. SAGA's ablations are ``saga`` with one field
replaced (``dataclasses.replace``), so an ablation differs from SAGA in exactly one place.

Each baseline is modelled from its own paper or documentation at its best; where a mechanism is
unclear the docstring of the policy class says which stronger reading it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from saga.policy.afs import AFS
from saga.policy.autellix import ATLAS, AutellixRouter
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import (
    EvictionPolicy,
    KVFlowPolicy,
    LRUPolicy,
    PrefixLRUPolicy,
    RadixLRUPolicy,
    WALRUPolicy,
)
from saga.policy.queueing import FCFSQueue, HybridQueue, ProgramFCFSQueue, RequestQueue
from saga.policy.routing import (
    AffinityRouter,
    CacheAwareRouter,
    LeastLoadedRouter,
    PrefixAffinityRouter,
    Router,
)
from saga.policy.stealing import WorkStealer
from saga.policy.ttl import ContinuumTTL, FixedTTL, ToolCallTTL, TTLPolicy

T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class PolicySpec(Generic[T_co]):
    """A policy described as data: ``factory(**kwargs)`` builds a fresh instance."""

    factory: Callable[..., T_co]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.factory):
            raise SagaConfigError(f"PolicySpec.factory must be callable, got {self.factory!r}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    def build(self, **overrides: Any) -> T_co:
        """A new instance; ``overrides`` replace or add keyword arguments."""
        return self.factory(**{**self.kwargs, **overrides})

    def describe(self) -> str:
        """``Name(k=v, ...)`` for reports."""
        name = getattr(self.factory, "__name__", repr(self.factory))
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{name}({args})"


Fairness = AFS
"""Fairness layers a preset may carry (Autellix's fairness lives in its queue order, ATLAS)."""


@dataclass(frozen=True)
class PolicyBundle:
    """Fresh policy objects for one run of one preset."""

    preset: str
    eviction: EvictionPolicy
    prefix_caching: bool
    ttl: TTLPolicy | None
    dram_tier: bool
    prefetch: bool
    router: Router
    stealer: WorkStealer | None
    queue: RequestQueue
    fairness: Fairness | None
    migration: bool
    rehome_kv: bool


@dataclass(frozen=True)
class Preset:
    """Which policy each layer of the serving stack uses.

    - ``eviction``: KV-block eviction order; ``prefix_caching``: whether cached blocks are reused
      across requests at all (vLLM without APC frees a request's blocks when it finishes).
    - ``ttl``: pin a session's KV through its tool call (``None``: released at once).
    - ``dram_tier``: evicted KV is swapped to host DRAM instead of dropped; ``prefetch``: swapped
      KV is brought back on a side stream before the session's next call.
    - ``router``, ``stealing`` (``None``: off), ``queue`` (waiting order), ``fairness``
      (``None``: off), ``migration``: Llumnix-style live KV migration between instances.
    - ``rehome_kv``: when the router moves a session to a new home, its cached KV is copied
      there (NVLink within a node, InfiniBand across nodes; SAGA's ``kv_migrate``) instead of
      being prefilled again on the new instance.
    """

    name: str
    description: str
    eviction: PolicySpec[EvictionPolicy]
    router: PolicySpec[Router]
    queue: PolicySpec[RequestQueue]
    prefix_caching: bool = True
    ttl: PolicySpec[TTLPolicy] | None = None
    dram_tier: bool = False
    prefetch: bool = False
    stealing: PolicySpec[WorkStealer] | None = None
    fairness: PolicySpec[Fairness] | None = None
    migration: bool = False
    rehome_kv: bool = False

    def __post_init__(self) -> None:
        if self.prefetch and not self.dram_tier:
            raise SagaConfigError(
                f"preset {self.name!r}: prefetch needs dram_tier=True (nothing to prefetch from)")

    def build(self) -> PolicyBundle:
        """Construct fresh policy objects for one run."""
        return PolicyBundle(
            preset=self.name,
            eviction=self.eviction.build(),
            prefix_caching=self.prefix_caching,
            ttl=None if self.ttl is None else self.ttl.build(),
            dram_tier=self.dram_tier,
            prefetch=self.prefetch,
            router=self.router.build(),
            stealer=None if self.stealing is None else self.stealing.build(),
            queue=self.queue.build(),
            fairness=None if self.fairness is None else self.fairness.build(),
            migration=self.migration,
            rehome_kv=self.rehome_kv,
        )

    def derive(self, name: str, description: str, **changes: Any) -> Preset:
        """This preset with a new name and some fields replaced (an ablation)."""
        return replace(self, name=name, description=description, **changes)


_FCFS: PolicySpec[RequestQueue] = PolicySpec(FCFSQueue)
_LEAST_LOADED: PolicySpec[Router] = PolicySpec(LeastLoadedRouter)
_PREFIX_AFFINITY: PolicySpec[Router] = PolicySpec(PrefixAffinityRouter)

VLLM = Preset(
    name="vllm",
    description=(
        "vLLM without prefix caching: a request's KV blocks are freed when it finishes, so every "
        "call of an agent re-prefills its whole context; LRU block reuse inside the pool, FCFS "
        "waiting queue, least-loaded routing across instances."),
    eviction=PolicySpec(LRUPolicy), prefix_caching=False, router=_LEAST_LOADED, queue=_FCFS)

VLLM_APC = Preset(
    name="vllm_apc",
    description=(
        "vLLM v1 with automatic prefix caching: hashed full blocks stay cached after a request "
        "and are evicted LRU from the free-block queue, tail blocks first; FCFS; routed by "
        "llm-d's prefix-cache-aware scorer (prefix hit 3 : queue 2) to keep prefixes local."),
    eviction=PolicySpec(PrefixLRUPolicy), router=_PREFIX_AFFINITY, queue=_FCFS)

SGLANG = Preset(
    name="sglang",
    description=(
        "SGLang: RadixAttention keeps prefixes in a radix tree and evicts LRU leaves; "
        "sgl-router's cache-aware policy (approximate per-worker radix trees, shortest queue "
        "when imbalanced beyond 64 requests and 1.5x); FCFS, SGLang's default schedule policy."),
    eviction=PolicySpec(RadixLRUPolicy), router=PolicySpec(CacheAwareRouter), queue=_FCFS)

LLUMNIX = Preset(
    name="llumnix",
    description=(
        "Llumnix: vLLM instances (with prefix caching) under a global scheduler that dispatches "
        "to the least loaded instance and live-migrates running requests' KV between instances "
        "to rebalance load and defragment memory."),
    eviction=PolicySpec(PrefixLRUPolicy), router=_LEAST_LOADED, queue=_FCFS, migration=True)

TRT_LLM_SCAFFOLDING = Preset(
    name="trt_llm_scaffolding",
    description=(
        "TensorRT-LLM scaffolding: a controller drives a request's multi-step generation; KV "
        "block reuse (radix-ordered, LRU) plus a retention setting keep the request's own KV "
        "across its steps (modelled as a fixed pin of TTL_max through each tool call, the most "
        "generous retention a user could configure); FCFS, least-loaded routing."),
    eviction=PolicySpec(RadixLRUPolicy), ttl=PolicySpec(FixedTTL), router=_LEAST_LOADED,
    queue=_FCFS)

VLLM_KVFLOW = Preset(
    name="vllm_kvflow",
    description=(
        "KVFlow on vLLM: evicts the blocks of the agent furthest from running in its step graph "
        "(steps-to-execution) and prefetches the next agents' KV from CPU memory back to the GPU "
        "before they run; FCFS; prefix-affinity routing as for vllm_apc."),
    eviction=PolicySpec(KVFlowPolicy), dram_tier=True, prefetch=True, router=_PREFIX_AFFINITY,
    queue=_FCFS)

CONTINUUM = Preset(
    name="continuum",
    description=(
        "Continuum: pins a tool-calling request's KV with a TTL from a cost/benefit of reload "
        "cost and queueing delay against the tool's latency distribution, with program-level "
        "FCFS and CPU offloading of evicted KV; prefix caching on; prefix-affinity routing."),
    eviction=PolicySpec(PrefixLRUPolicy), ttl=PolicySpec(ContinuumTTL.with_aeg_registry),
    dram_tier=True, router=_PREFIX_AFFINITY, queue=PolicySpec(ProgramFCFSQueue))

AUTELLIX = Preset(
    name="autellix",
    description=(
        "Autellix: program-level least-attained-service scheduling (ATLAS, which reduces to PLAS "
        "for single-threaded programs) over multi-level queues with anti-starvation, and its "
        "locality-aware load balancer; vLLM's prefix caching underneath."),
    eviction=PolicySpec(PrefixLRUPolicy), router=PolicySpec(AutellixRouter),
    queue=PolicySpec(ATLAS))

SAGA = Preset(
    name="saga",
    description=(
        "SAGA: WA-LRU eviction from AEG reuse predictions, tool-call TTL pins from per-tool p95 "
        "latency, DRAM tier with prefetch, session affinity with load headroom (a re-homed "
        "session's KV follows it) plus work stealing, hybrid BFS/DFS queueing and AFS "
        "task-level fairness."),
    eviction=PolicySpec(WALRUPolicy, {"alpha": 0.3, "beta": 0.5, "gamma": 0.2}),
    ttl=PolicySpec(ToolCallTTL.with_aeg_registry), dram_tier=True, prefetch=True,
    router=PolicySpec(AffinityRouter, {"theta": 0.8}),
    stealing=PolicySpec(WorkStealer, {"t_idle": 0.1, "r_max": 2.0}),
    queue=PolicySpec(HybridQueue), fairness=PolicySpec(AFS), rehome_kv=True)

_ABLATIONS = (
    SAGA.derive("saga_no_walru", "SAGA with vLLM's prefix LRU instead of WA-LRU.",
                eviction=PolicySpec(PrefixLRUPolicy)),
    SAGA.derive("saga_no_ttl", "SAGA without tool-call TTL pins.", ttl=None),
    SAGA.derive("saga_no_prefetch", "SAGA with the DRAM tier but no prefetch.", prefetch=False),
    SAGA.derive("saga_no_affinity", "SAGA with least-loaded routing instead of affinity.",
                router=_LEAST_LOADED),
    SAGA.derive("saga_no_stealing", "SAGA without work stealing.", stealing=None),
    SAGA.derive("saga_no_afs", "SAGA without AFS fairness.", fairness=None),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({
    p.name: p for p in (VLLM, VLLM_APC, SGLANG, LLUMNIX, TRT_LLM_SCAFFOLDING, VLLM_KVFLOW, SAGA,
                        *_ABLATIONS, CONTINUUM, AUTELLIX)
})
"""Every preset by name: the spec's 13 plus the ``continuum`` and ``autellix`` peers."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SagaConfigError(
            f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


__all__ = [
    "PRESETS",
    "Fairness",
    "PolicyBundle",
    "PolicySpec",
    "Preset",
    "get_preset",
]
