"""Presets: named bundles of policies, one per system the paper compares, as data.

A :class:`Preset` names, for each layer of the serving stack, an entry of that layer's registry
(:mod:`saga.policy.registry`) with its keyword arguments (a :class:`PolicySpec`), and which
switches (DRAM tier, prefetch, KV movement) are on. :meth:`Preset.build` makes a
:class:`PolicyBundle` of fresh objects, so two runs never share state; the simulator, the vLLM
scheduler and the coordinator all take a bundle. Presets are looked up by name in
:data:`PRESETS`; nothing branches on a preset's name. SAGA's ablations are ``saga`` with one field
replaced (``dataclasses.replace``), so an ablation differs from SAGA in exactly one place.

Each baseline is modelled from its own paper or documentation at its best, with every mechanism
its current version ships; ``Preset.mechanisms`` lists them with their sources
(:mod:`saga.policy.peers`, rendered by ``saga show presets --mechanisms`` and ``docs/peers.md``).
SAGA gets a mechanism only when the real SAGA has it: it does not move KV between instances, so
its presets run without ``rehome_kv``; ``saga_kvmove`` is the labelled what-if variant that does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from saga.policy import peers, registry
from saga.policy.afs import AFS
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import EvictionPolicy
from saga.policy.migration import Rescheduler
from saga.policy.peers import Mechanism
from saga.policy.queueing import RequestQueue
from saga.policy.routing import Router
from saga.policy.stealing import WorkStealer
from saga.policy.ttl import TTLPolicy

T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class PolicySpec(Generic[T_co]):
    """A policy described as data: the entry ``name`` of registry ``layer``, built with
    ``kwargs`` (``factory(**kwargs)`` builds a fresh instance)."""

    layer: str
    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        registry.factory(self.layer, self.name)  # an unknown layer or name fails here
        if not isinstance(self.kwargs, Mapping):
            raise SagaConfigError(f"PolicySpec.kwargs must be a mapping, got {self.kwargs!r}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @property
    def factory(self) -> Callable[..., T_co]:
        """The registered factory."""
        return registry.factory(self.layer, self.name)

    def build(self, **overrides: Any) -> T_co:
        """A new instance; ``overrides`` replace or add keyword arguments."""
        return self.factory(**{**self.kwargs, **overrides})

    def with_kwargs(self, **changes: Any) -> PolicySpec[T_co]:
        """The same policy with some keyword arguments changed."""
        return PolicySpec(self.layer, self.name, {**self.kwargs, **changes})

    def describe(self) -> str:
        """``name(k=v, ...)`` for reports."""
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name}({args})"


def policy(layer: str, name: str, **kwargs: Any) -> PolicySpec[Any]:
    """``PolicySpec(layer, name, kwargs)``: the registry entry ``name`` of ``layer``."""
    return PolicySpec(layer, name, kwargs)


Fairness = AFS
"""Fairness layers a preset may carry (Autellix's fairness lives in its queue order, ATLAS)."""


@dataclass(frozen=True)
class EnginePolicies:
    """The policies one serving engine owns: its eviction order, waiting queue and fairness."""

    eviction: EvictionPolicy
    queue: RequestQueue
    fairness: Fairness | None


@dataclass(frozen=True)
class PolicyBundle:
    """Fresh policy objects for one deployment of one preset.

    The router, the stealer and the TTL policy (with the tool-latency model it learns) are the
    deployment's; each engine gets its own eviction policy, queue and fairness from
    :meth:`engine`. The switches are the preset's.
    """

    preset: Preset
    router: Router
    stealer: WorkStealer | None
    ttl: TTLPolicy | None

    @property
    def name(self) -> str:
        """The preset's name."""
        return self.preset.name

    @property
    def prefix_caching(self) -> bool:
        """Cached blocks are reused across requests."""
        return self.preset.prefix_caching

    @property
    def dram_tier(self) -> bool:
        """Evicted KV is swapped to host DRAM."""
        return self.preset.dram_tier

    @property
    def prefetch(self) -> bool:
        """Swapped KV is brought back before the session's next call."""
        return self.preset.prefetch

    @property
    def migration(self) -> bool:
        """Running calls live-migrate with their KV to balance load (Llumnix)."""
        return self.preset.migration

    @property
    def rescheduler(self) -> Rescheduler | None:
        """Llumnix's rescheduler when the preset live-migrates, else None."""
        return Rescheduler() if self.preset.migration else None

    @property
    def rehome_kv(self) -> bool:
        """A re-homed session's KV follows it."""
        return self.preset.rehome_kv

    def engine(self, **fairness_overrides: Any) -> EnginePolicies:
        """Fresh engine-local policies; ``fairness_overrides`` (e.g. ``capacity_per_s``) go to
        the fairness layer's constructor when the preset has one."""
        p = self.preset
        return EnginePolicies(
            eviction=p.eviction.build(), queue=p.queue.build(),
            fairness=None if p.fairness is None else p.fairness.build(**fairness_overrides))


@dataclass(frozen=True)
class Preset:
    """Which policy each layer of the serving stack uses.

    - ``eviction``: KV-block eviction order; ``prefix_caching``: whether cached blocks are reused
      across requests at all (vLLM without APC frees a request's blocks when it finishes).
    - ``ttl``: pin a session's KV through its tool call (``None``: released at once).
    - ``dram_tier``: evicted KV is swapped to host DRAM instead of dropped; ``prefetch``: swapped
      KV is brought back on a side stream before the session's next call (the ``tier`` layer).
    - ``router``, ``stealing`` (``None``: off), ``queue`` (waiting order), ``fairness``
      (``None``: off).
    - ``migration``: Llumnix's live migration of running requests with their KV between
      instances; ``rehome_kv``: when a session moves to a new instance (routing, stealing), its
      cached KV is copied there (NVLink within a node, InfiniBand across nodes) instead of being
      prefilled again (the ``movement`` layer).
    - ``mechanisms``: what the modelled system ships, with sources (:mod:`saga.policy.peers`);
      documentation, not compared or serialised; ``is_saga``: SAGA or a variant of it.
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
    mechanisms: tuple[Mechanism, ...] = field(default=(), compare=False)
    is_saga: bool = field(default=False, compare=False)
    """SAGA or a variant of it, as opposed to a peer system (its ablations inherit it)."""

    def __post_init__(self) -> None:
        for layer in registry.LAYERS:
            spec = getattr(self, layer)
            if spec is not None and spec.layer != layer:
                raise SagaConfigError(
                    f"preset {self.name!r}: its {layer} is a {spec.layer} policy "
                    f"({spec.name!r}); use policy({layer!r}, ...)")
        if self.prefetch and not self.dram_tier:
            raise SagaConfigError(
                f"preset {self.name!r}: prefetch needs dram_tier=True (nothing to prefetch from)")
        registry.movement_name(self.rehome_kv, self.migration)

    @property
    def tier(self) -> str:
        """The ``tier`` registry entry these switches are."""
        return registry.tier_name(self.dram_tier, self.prefetch)

    @property
    def movement(self) -> str:
        """The ``movement`` registry entry these switches are."""
        return registry.movement_name(self.rehome_kv, self.migration)

    def layers(self) -> dict[str, Any]:
        """Every layer and switch as plain data (what ``saga show presets --json`` prints)."""
        def spec(s: PolicySpec[Any] | None) -> dict[str, Any] | None:
            return None if s is None else {"name": s.name, "kwargs": dict(s.kwargs)}
        return {
            "eviction": spec(self.eviction), "prefix_caching": self.prefix_caching,
            "ttl": spec(self.ttl), "tier": self.tier, "dram_tier": self.dram_tier,
            "prefetch": self.prefetch, "router": spec(self.router),
            "stealing": spec(self.stealing), "queue": spec(self.queue),
            "fairness": spec(self.fairness), "movement": self.movement,
            "rehome_kv": self.rehome_kv, "migration": self.migration}

    @classmethod
    def from_layers(cls, name: str, layers: Mapping[str, Any], description: str = "") -> Preset:
        """The preset that :meth:`layers` described (a preset sent as plain data, e.g. the
        one an engine ran, read back); unknown keys or names are rejected by name."""
        known = {"eviction", "prefix_caching", "ttl", "tier", "dram_tier", "prefetch", "router",
                 "stealing", "queue", "fairness", "movement", "rehome_kv", "migration"}
        unknown = sorted(set(layers) - known)
        if unknown:
            raise SagaConfigError(f"preset {name!r}: unknown layer(s) {unknown}; known: "
                                  f"{sorted(known)}")

        def spec(layer: str) -> PolicySpec[Any] | None:
            raw = layers.get(layer)
            if raw is None:
                return None
            if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
                raise SagaConfigError(f"preset {name!r}: layer {layer!r} must be "
                                      f"{{'name': str, 'kwargs': {{...}}}} or null, got {raw!r}")
            return PolicySpec(layer, raw["name"], raw.get("kwargs") or {})

        for required in ("eviction", "router", "queue"):
            if layers.get(required) is None:
                raise SagaConfigError(f"preset {name!r}: layer {required!r} is required")
        tier = registry.tier(str(layers.get("tier", "hbm")))
        movement = registry.movement(str(layers.get("movement", "none")))
        return cls(
            name=name, description=description, eviction=spec("eviction"),  # type: ignore[arg-type]
            router=spec("router"), queue=spec("queue"),  # type: ignore[arg-type]
            prefix_caching=bool(layers.get("prefix_caching", True)), ttl=spec("ttl"),
            dram_tier=tier.dram, prefetch=tier.prefetch, stealing=spec("stealing"),
            fairness=spec("fairness"), migration=movement.migrate, rehome_kv=movement.rehome)

    def build(self) -> PolicyBundle:
        """Construct fresh deployment-wide policy objects for one run."""
        return PolicyBundle(
            preset=self, router=self.router.build(),
            stealer=None if self.stealing is None else self.stealing.build(),
            ttl=None if self.ttl is None else self.ttl.build())

    def derive(self, name: str, description: str, **changes: Any) -> Preset:
        """This preset with a new name and some fields replaced (an ablation); the mechanisms
        modelled by a replaced field are dropped unless ``mechanisms`` is given."""
        changes.setdefault("mechanisms", tuple(
            m for m in self.mechanisms if m.field is None or m.field not in changes))
        return replace(self, name=name, description=description, **changes)


_FCFS: PolicySpec[RequestQueue] = policy("queue", "fcfs")
_LEAST_LOADED: PolicySpec[Router] = policy("router", "least_loaded")
_PREFIX_AFFINITY: PolicySpec[Router] = policy("router", "prefix_affinity")

VLLM = Preset(
    name="vllm",
    description=(
        "vLLM without prefix caching: a request's KV blocks are freed when it finishes, so every "
        "call of an agent re-prefills its whole context; LRU block reuse inside the pool, FCFS "
        "waiting queue, least-loaded routing across instances."),
    eviction=policy("eviction", "lru"), prefix_caching=False, router=_LEAST_LOADED, queue=_FCFS,
    mechanisms=peers.VLLM)

VLLM_APC = Preset(
    name="vllm_apc",
    description=(
        "vLLM 0.32 with automatic prefix caching (hashed full blocks evicted LRU from the "
        "free-block queue) and native CPU KV offloading (OffloadingConnector, LRU); FCFS; "
        "behind llm-d's default scheduler profile (queue depth 2, KV utilisation 2, prefix "
        "cache 3)."),
    eviction=policy("eviction", "prefix_lru"), dram_tier=True, router=_PREFIX_AFFINITY,
    queue=_FCFS, mechanisms=peers.VLLM_APC)

SGLANG = Preset(
    name="sglang",
    description=(
        "SGLang: RadixAttention keeps prefixes in a radix tree and evicts LRU leaves to HiCache's "
        "host-memory tier; sgl-router's cache-aware policy (approximate per-worker radix trees, "
        "shortest queue when imbalanced beyond 64 requests and 1.5x); FCFS."),
    eviction=policy("eviction", "radix_lru"), dram_tier=True,
    router=policy("router", "cache_aware"), queue=_FCFS, mechanisms=peers.SGLANG)

LLUMNIX = Preset(
    name="llumnix",
    description=(
        "Llumnix: vLLM instances (prefix caching, CPU offloading) under a global scheduler that "
        "dispatches by projected KV usage and live-migrates running requests with their KV off "
        "overloaded instances every 500 ms (its documented rescheduler defaults)."),
    eviction=policy("eviction", "prefix_lru"), dram_tier=True, router=_LEAST_LOADED,
    queue=_FCFS, migration=True, mechanisms=peers.LLUMNIX_MECHANISMS)

TRT_LLM_SCAFFOLDING = Preset(
    name="trt_llm_scaffolding",
    description=(
        "TensorRT-LLM scaffolding: a controller drives a request's multi-step generation; KV "
        "block reuse (radix-ordered, LRU) with host-memory offloading, plus a retention setting "
        "that keeps the request's own KV across its steps (modelled as a fixed pin of TTL_max "
        "through each tool call, the most generous retention a user could configure); FCFS, "
        "least-loaded routing."),
    eviction=policy("eviction", "radix_lru"), ttl=policy("ttl", "fixed"), dram_tier=True,
    router=_LEAST_LOADED, queue=_FCFS, mechanisms=peers.TRT_LLM)

VLLM_KVFLOW = Preset(
    name="vllm_kvflow",
    description=(
        "KVFlow: evicts the blocks of the agent furthest from running in its step graph "
        "(steps-to-execution) and prefetches the next agents' KV from CPU memory back to the GPU "
        "before they run; FCFS; llm-d's default routing as for vllm_apc."),
    eviction=policy("eviction", "kvflow"), dram_tier=True, prefetch=True, router=_PREFIX_AFFINITY,
    queue=_FCFS, mechanisms=peers.KVFLOW)

CONTINUUM = Preset(
    name="continuum",
    description=(
        "Continuum: pins a tool-calling request's KV with a TTL from a cost/benefit of reload "
        "cost and queueing delay against the tool's latency distribution, with program-level "
        "FCFS and CPU offloading of evicted KV; prefix caching on; llm-d's default routing."),
    eviction=policy("eviction", "prefix_lru"), ttl=policy("ttl", "continuum"),
    dram_tier=True, router=_PREFIX_AFFINITY, queue=policy("queue", "program_fcfs"),
    mechanisms=peers.CONTINUUM)

AUTELLIX = Preset(
    name="autellix",
    description=(
        "Autellix: program-level least-attained-service scheduling (ATLAS, which reduces to PLAS "
        "for single-threaded programs) over multi-level queues with anti-starvation, and its "
        "locality-aware load balancer; vLLM's prefix caching and CPU offloading underneath."),
    eviction=policy("eviction", "prefix_lru"), dram_tier=True, router=policy("router", "autellix"),
    queue=policy("queue", "atlas"), mechanisms=peers.AUTELLIX)

SAGA = Preset(
    name="saga",
    description=(
        "SAGA: WA-LRU eviction from AEG reuse predictions, tool-call TTL pins from per-tool p95 "
        "latency, DRAM tier with prefetch, session affinity with load headroom plus work "
        "stealing (a moved session is prefilled again on its new instance, as the real "
        "coordinator does), hybrid BFS/DFS queueing and AFS task-level fairness."),
    eviction=policy("eviction", "walru", alpha=0.3, beta=0.5, gamma=0.2),
    ttl=policy("ttl", "tool_call"), dram_tier=True, prefetch=True,
    router=policy("router", "affinity", theta=0.8),
    stealing=policy("stealing", "work_stealer", t_idle=0.1, r_max=2.0),
    queue=policy("queue", "hybrid"), fairness=policy("fairness", "afs"), mechanisms=peers.SAGA,
    is_saga=True)

_ABLATIONS = (
    SAGA.derive("saga_no_walru", "SAGA with vLLM's prefix LRU instead of WA-LRU.",
                eviction=policy("eviction", "prefix_lru")),
    SAGA.derive("saga_no_ttl", "SAGA without tool-call TTL pins.", ttl=None),
    SAGA.derive("saga_no_prefetch", "SAGA with the DRAM tier but no prefetch.", prefetch=False),
    SAGA.derive("saga_no_affinity", "SAGA with least-loaded routing instead of affinity.",
                router=_LEAST_LOADED),
    SAGA.derive("saga_no_stealing", "SAGA without work stealing.", stealing=None),
    SAGA.derive("saga_no_afs", "SAGA without AFS fairness.", fairness=None),
)

SAGA_ETA = SAGA.derive(
    "saga_eta",
    "SAGA with one value for eviction and retention: blocks are evicted lowest value per byte "
    "and second until their predicted next use first (a session's tool return, its workflow "
    "end, a shared prefix's users, else the block's own reuse gaps), and a tool call's pin "
    "lasts while that value exceeds the pressure-dependent price of holding HBM; the rest as "
    "SAGA (prefetch when the tool returns; SAGA's affinity routing: weighing a lapsed pin, "
    "AffinityRouter(weigh_home_held=True), measured slower and stays off).",
    eviction=policy("eviction", "eta"), ttl=policy("ttl", "value"),
    mechanisms=peers.SAGA_ETA)

_ETA_ABLATIONS = (
    SAGA_ETA.derive("saga_eta_no_eta", "saga_eta with vLLM's prefix LRU instead of eviction by "
                    "predicted next use.", eviction=policy("eviction", "prefix_lru")),
    SAGA_ETA.derive("saga_eta_no_ttl", "saga_eta without tool-call pins.", ttl=None),
    SAGA_ETA.derive("saga_eta_no_value_ttl", "saga_eta with SAGA's p95 tool-call TTL instead "
                    "of the value TTL.", ttl=policy("ttl", "tool_call"),
                    mechanisms=(*(m for m in peers.SAGA_ETA if m.field != "ttl"),
                                peers.SAGA[1])),
    SAGA_ETA.derive("saga_eta_no_prefetch", "saga_eta with the DRAM tier but no prefetch.",
                    prefetch=False),
    SAGA_ETA.derive("saga_eta_no_affinity", "saga_eta with least-loaded routing instead of "
                    "affinity.", router=_LEAST_LOADED),
    SAGA_ETA.derive("saga_eta_no_stealing", "saga_eta without work stealing.", stealing=None),
    SAGA_ETA.derive("saga_eta_no_afs", "saga_eta without AFS fairness.", fairness=None),
)

SAGA_KVMOVE = SAGA.derive(
    "saga_kvmove",
    "What-if, not the real SAGA: SAGA plus KV that follows a moved session (re-homing or "
    "stealing copies its cached KV over NVLink / InfiniBand instead of prefilling it again). "
    "The real SAGA coordinator does not move KV yet.",
    rehome_kv=True, mechanisms=peers.SAGA_KVMOVE)

PRESETS: Mapping[str, Preset] = MappingProxyType({
    p.name: p for p in (VLLM, VLLM_APC, SGLANG, LLUMNIX, TRT_LLM_SCAFFOLDING, VLLM_KVFLOW, SAGA,
                        *_ABLATIONS, CONTINUUM, AUTELLIX, SAGA_KVMOVE, SAGA_ETA,
                        *_ETA_ABLATIONS)
})
"""Every preset by name: the spec's 13, the ``continuum`` and ``autellix`` peers, the
labelled ``saga_kvmove`` variant, and ``saga_eta`` (SAGA with eviction and retention from
predicted next use) with its ablations."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SagaConfigError(
            f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


__all__ = [
    "PRESETS",
    "EnginePolicies",
    "Fairness",
    "PolicyBundle",
    "PolicySpec",
    "Preset",
    "get_preset",
    "policy",
]
