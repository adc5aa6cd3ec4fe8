"""What SAGA changed inside vLLM, counted: prefix hits, recomputed tokens, pins, evictions.

vLLM's own stats report hit rates but not *why* a block left the cache, and know nothing about
pins. :class:`SagaMetrics` is a plain counter set owned by the scheduler (so it works in the
engine-core process and is returned by ``saga_stats()``); :func:`publish` mirrors it into
``prometheus_client`` metrics under the ``saga_`` prefix, registered on first use so importing
this module never touches a registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EVICTION_REASONS = ("capacity", "pin_expired", "pressure", "cap")
"""``capacity``: a cached block was reclaimed by an allocation (vLLM's or WA-LRU's victim);
``pin_expired``/``pressure``/``cap``: a pin gave its blocks back for that reason (its blocks
become evictable, which is what takes them out of the protected set)."""


@dataclass
class SagaMetrics:
    """Cumulative counters of one scheduler (see :meth:`as_dict` for the names)."""

    prefix_hit_tokens: int = 0
    recomputed_tokens: int = 0
    prompt_tokens: int = 0
    scheduled_requests: int = 0
    evictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVICTION_REASONS, 0))
    pin_releases: dict[str, int] = field(default_factory=dict)
    pins_created: int = 0
    pin_expiries: int = 0
    pinned_blocks: int = 0
    pinned_sessions: int = 0
    malformed_metadata: int = 0
    preemptions: int = 0
    preempted_recomputed_tokens: int = 0

    def on_evict(self, n: int) -> None:
        """``n`` cached blocks were reclaimed by allocations."""
        self.evictions["capacity"] += n

    def on_prefill(self, prompt_tokens: int, hit_tokens: int) -> None:
        """A new request was scheduled with ``hit_tokens`` of its prompt already cached."""
        self.scheduled_requests += 1
        self.prompt_tokens += prompt_tokens
        self.prefix_hit_tokens += hit_tokens
        self.recomputed_tokens += max(prompt_tokens - hit_tokens, 0)

    def on_resume(self, computed_before: int, hit_tokens: int) -> None:
        """A preempted request resumed: of the ``computed_before`` tokens it had computed, the
        prefix cache still held ``hit_tokens``; the rest is computed again."""
        self.preempted_recomputed_tokens += max(computed_before - hit_tokens, 0)

    def on_pin_release(self, reason: str, blocks: int) -> None:
        """A pin released ``blocks`` references for ``reason`` (a ``ReleaseReason`` value)."""
        self.pin_releases[reason] = self.pin_releases.get(reason, 0) + 1
        if reason == "expired":
            self.pin_expiries += 1
            self.evictions["pin_expired"] += blocks
        elif reason in ("pressure", "cap"):
            self.evictions[reason] += blocks

    @property
    def prefix_hit_rate(self) -> float:
        """Share of scheduled prompt tokens served from the prefix cache."""
        return self.prefix_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (what ``SagaScheduler.saga_stats()`` returns)."""
        return {
            "prefix_hit_tokens": self.prefix_hit_tokens,
            "recomputed_tokens": self.recomputed_tokens,
            "prompt_tokens": self.prompt_tokens,
            "prefix_hit_rate": self.prefix_hit_rate,
            "scheduled_requests": self.scheduled_requests,
            "evictions": dict(self.evictions),
            "pin_releases": dict(self.pin_releases),
            "pins_created": self.pins_created,
            "pin_expiries": self.pin_expiries,
            "pinned_blocks": self.pinned_blocks,
            "pinned_sessions": self.pinned_sessions,
            "malformed_metadata": self.malformed_metadata,
            "preemptions": self.preemptions,
            "preempted_recomputed_tokens": self.preempted_recomputed_tokens,
        }


class _Prometheus:
    """The ``saga_*`` metrics, created once per process (prometheus registries are global)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        reg = REGISTRY if registry is None else registry
        labels = ["scheduler"]
        self.counters: dict[str, Any] = {
            name: Counter(f"saga_{name}", doc, labels, registry=reg)
            for name, doc in (
                ("prefix_hit_tokens", "Prompt tokens served from the prefix cache"),
                ("recomputed_tokens", "Prompt tokens prefilled (not found in the cache)"),
                ("pins_created", "Tool-call pins created"),
                ("pin_expiries", "Tool-call pins released by TTL expiry"),
                ("preemptions", "Running requests preempted for memory"),
                ("preempted_recomputed_tokens",
                 "Tokens computed again after a preemption (not found in the cache on resume)"),
            )
        }
        self.evictions = Counter("saga_evicted_blocks", "Blocks evicted or unprotected, by reason",
                                 [*labels, "reason"], registry=reg)
        self.pinned_blocks = Gauge("saga_pinned_blocks", "Blocks held by tool-call pins",
                                   labels, registry=reg)
        self.last: dict[tuple[str, str], float] = {}

    def inc_to(self, key: tuple[str, str], counter: Any, total: float) -> None:
        delta = total - self.last.get(key, 0.0)
        if delta > 0:
            counter.inc(delta)
        self.last[key] = total


_PROMS: dict[int, _Prometheus] = {}


def publish(metrics: SagaMetrics, scheduler: str = "0", registry: Any = None) -> None:
    """Mirror ``metrics`` into the ``saga_*`` prometheus metrics (labelled ``scheduler``).

    Counters are advanced by the increase since the last publish, so calling this every step
    or only now and then gives the same totals.
    """
    key = id(registry)
    prom = _PROMS.get(key)
    if prom is None:
        prom = _PROMS[key] = _Prometheus(registry)
    for name, counter in prom.counters.items():
        prom.inc_to((scheduler, name), counter.labels(scheduler), float(getattr(metrics, name)))
    for reason, total in metrics.evictions.items():
        prom.inc_to((scheduler, f"evict:{reason}"),
                    prom.evictions.labels(scheduler, reason), float(total))
    prom.pinned_blocks.labels(scheduler).set(metrics.pinned_blocks)


__all__ = ["EVICTION_REASONS", "SagaMetrics", "publish"]
