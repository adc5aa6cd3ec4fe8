"""The registries: every policy a preset may name, per layer, and the only place names resolve.

A preset (``saga.policy.presets``) is data: for each layer of the serving stack it names an entry
of the layer's registry and the keyword arguments to build it with. The simulator, the vLLM
scheduler and the coordinator get their objects from those specs, so nothing outside this module
maps a policy name to a class, and a new policy is added here once and runs everywhere.

Layers with objects (each entry is a factory): ``eviction``, ``ttl`` (retention through a tool
call), ``router``, ``queue``, ``stealing``, ``fairness``. Layers that are switches (each entry is
a :class:`Tier` or a :class:`KVMovement`): ``tier`` (host-DRAM tier and prefetch) and ``movement``
(what happens to a session's KV when it changes instance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from saga.policy.afs import AFS
from saga.policy.autellix import ATLAS, PLAS, AutellixRouter
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import (
    ARCPolicy,
    BeladyPolicy,
    ETAPolicy,
    EvictionPolicy,
    KVFlowPolicy,
    LRUPolicy,
    PrefixLRUPolicy,
    RadixLRUPolicy,
    S3FIFOPolicy,
    WALRUPolicy,
)
from saga.policy.queueing import BFSQueue, DFSQueue, FCFSQueue, HybridQueue, ProgramFCFSQueue
from saga.policy.routing import (
    AffinityRouter,
    CacheAwareRouter,
    LeastLoadedRouter,
    PrefixAffinityRouter,
)
from saga.policy.stealing import WorkStealer
from saga.policy.ttl import ContinuumTTL, FixedTTL, ToolCallTTL
from saga.policy.ttl_value import ValueTTL

Layer = Literal["eviction", "ttl", "router", "queue", "stealing", "fairness"]
LAYERS: tuple[Layer, ...] = ("eviction", "ttl", "router", "queue", "stealing", "fairness")
"""Layers whose entries build policy objects."""

SWITCH_LAYERS: tuple[str, ...] = ("tier", "movement")
"""Layers whose entries are switches of the deployment, not objects."""


@dataclass(frozen=True)
class Tier:
    """Where evicted KV goes: dropped (``dram=False``) or swapped to host DRAM, and whether it
    is prefetched back before the session's next call."""

    dram: bool
    prefetch: bool

    def __post_init__(self) -> None:
        if self.prefetch and not self.dram:
            raise SagaConfigError("a tier with prefetch needs dram=True (nothing to prefetch "
                                  "from)")


@dataclass(frozen=True)
class KVMovement:
    """What happens to KV between instances.

    ``rehome``: when the router (or work stealing) moves a session, its cached KV is copied to
    the new instance instead of being prefilled again (no system compared ships this; the
    labelled ``saga_kvmove`` variant has it). ``migrate``: Llumnix's rescheduler live-migrates
    running requests with their KV from overloaded to underloaded instances
    (:mod:`saga.policy.migration`).
    """

    rehome: bool
    migrate: bool


_FACTORIES: Mapping[Layer, Mapping[str, Callable[..., Any]]] = MappingProxyType({
    "eviction": MappingProxyType({
        "lru": LRUPolicy, "prefix_lru": PrefixLRUPolicy, "radix_lru": RadixLRUPolicy,
        "walru": WALRUPolicy, "kvflow": KVFlowPolicy, "arc": ARCPolicy,
        "s3fifo": S3FIFOPolicy, "eta": ETAPolicy}),
    "ttl": MappingProxyType({
        "fixed": FixedTTL.retention, "tool_call": ToolCallTTL.with_aeg_registry,
        "continuum": ContinuumTTL.with_aeg_registry, "value": ValueTTL.with_aeg_registry}),
    "router": MappingProxyType({
        "least_loaded": LeastLoadedRouter, "prefix_affinity": PrefixAffinityRouter,
        "cache_aware": CacheAwareRouter, "affinity": AffinityRouter,
        "autellix": AutellixRouter}),
    "queue": MappingProxyType({
        "fcfs": FCFSQueue, "bfs": BFSQueue, "dfs": DFSQueue, "hybrid": HybridQueue,
        "program_fcfs": ProgramFCFSQueue, "plas": PLAS, "atlas": ATLAS}),
    "stealing": MappingProxyType({"work_stealer": WorkStealer}),
    "fairness": MappingProxyType({"afs": AFS}),
})

REPLAY_ORACLES: Mapping[str, type[EvictionPolicy]] = MappingProxyType({"belady": BeladyPolicy})
"""Eviction orders a trace replay may compare besides the ``eviction`` layer's: offline
oracles, which read the future and so are never a preset's policy."""

TIERS: Mapping[str, Tier] = MappingProxyType({
    "hbm": Tier(dram=False, prefetch=False),
    "dram": Tier(dram=True, prefetch=False),
    "dram_prefetch": Tier(dram=True, prefetch=True),
})
"""The KV tiers a preset may name."""

MOVEMENTS: Mapping[str, KVMovement] = MappingProxyType({
    "none": KVMovement(rehome=False, migrate=False),
    "rehome": KVMovement(rehome=True, migrate=False),
    "migrate": KVMovement(rehome=False, migrate=True),
})
"""What a preset may do with KV between instances."""


def _unknown(layer: str, name: object, known: Mapping[str, object]) -> SagaConfigError:
    return SagaConfigError(f"unknown {layer} policy {name!r}; valid: {', '.join(sorted(known))}")


def _layer(layer: str) -> Mapping[str, Callable[..., Any]]:
    table = _FACTORIES.get(layer)  # type: ignore[call-overload]
    if table is None:
        raise SagaConfigError(f"unknown policy layer {layer!r}; valid: {', '.join(LAYERS)}")
    return table  # type: ignore[no-any-return]


def names(layer: str) -> tuple[str, ...]:
    """The registered names of ``layer`` (object layers, ``tier`` and ``movement``), sorted."""
    if layer == "tier":
        return tuple(sorted(TIERS))
    if layer == "movement":
        return tuple(sorted(MOVEMENTS))
    return tuple(sorted(_layer(layer)))


def factory(layer: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` in ``layer``; an unknown name lists the valid ones."""
    table = _layer(layer)
    try:
        return table[name]
    except (KeyError, TypeError):
        raise _unknown(layer, name, table) from None


def name_of(layer: str, fn: Callable[..., Any]) -> str | None:
    """The name ``fn`` is registered under in ``layer`` (None when it is not registered)."""
    for name, registered in _layer(layer).items():
        if registered == fn:
            return name
    return None


def replay_eviction_names() -> tuple[str, ...]:
    """Every eviction order a trace replay may run: the ``eviction`` layer and the oracles."""
    return (*_layer("eviction"), *REPLAY_ORACLES)


def replay_eviction(name: str) -> EvictionPolicy:
    """A fresh eviction policy of the ``eviction`` layer or an oracle, with the spec's
    defaults; an unknown name lists the valid ones."""
    oracle = REPLAY_ORACLES.get(name)
    if oracle is not None:
        return oracle()
    try:
        built: EvictionPolicy = _layer("eviction")[name]()
    except (KeyError, TypeError):
        raise SagaConfigError(f"unknown eviction policy {name!r}; valid policies: "
                              f"{', '.join(replay_eviction_names())}") from None
    return built


def tier(name: str) -> Tier:
    """The tier called ``name``."""
    try:
        return TIERS[name]
    except (KeyError, TypeError):
        raise _unknown("tier", name, TIERS) from None


def tier_name(dram: bool, prefetch: bool) -> str:
    """The registered name of a tier's switches."""
    return next(n for n, t in TIERS.items() if t == Tier(dram, prefetch))


def movement(name: str) -> KVMovement:
    """The KV movement called ``name``."""
    try:
        return MOVEMENTS[name]
    except (KeyError, TypeError):
        raise _unknown("movement", name, MOVEMENTS) from None


def movement_name(rehome: bool, migrate: bool) -> str:
    """The registered name of a movement's switches (``both`` is not a registered movement)."""
    for n, m in MOVEMENTS.items():
        if m == KVMovement(rehome, migrate):
            return n
    raise SagaConfigError("a preset may re-home KV or live-migrate it, not both")


__all__ = [
    "LAYERS",
    "MOVEMENTS",
    "REPLAY_ORACLES",
    "SWITCH_LAYERS",
    "TIERS",
    "KVMovement",
    "Layer",
    "Tier",
    "factory",
    "movement",
    "movement_name",
    "name_of",
    "names",
    "replay_eviction",
    "replay_eviction_names",
    "tier",
    "tier_name",
]
