"""The gateway's Prometheus metrics (its own registry: one app per process, many per test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics"]


@dataclass
class GatewayMetrics:
    """Counters of what the gateway did, per engine, route reason, tenant and error kind."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict, repr=False)

    def of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (the hot path's cost)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("saga_gateway_requests", "Requests answered, by engine, "
                                "endpoint and HTTP status", ["engine", "endpoint", "status"],
                                registry=r)
        self.routes = Counter("saga_gateway_routes", "Routing decisions by engine and reason "
                              "(NEW_SESSION, HOME, OVERLOADED, REHOMED)", ["engine", "reason"],
                              registry=r)
        self.rehomes = Counter("saga_gateway_rehomes", "Calls routed away from their "
                               "session's previous engine", registry=r)
        self.retries = Counter("saga_gateway_retries", "Requests retried on another engine "
                               "after failing before any byte came back", registry=r)
        self.errors = Counter("saga_gateway_errors", "Errors by kind", ["kind"], registry=r)
        self.prompt_tokens = Counter("saga_gateway_prompt_tokens", "Prompt tokens engines "
                                     "reported", ["engine"], registry=r)
        self.cached_tokens = Counter("saga_gateway_cached_tokens", "Prompt tokens engines "
                                     "served from their prefix cache", ["engine"], registry=r)
        self.pins = Counter("saga_gateway_pins", "Sessions pinned through a tool call "
                            "(X-Saga-Tool)", registry=r)
        self.tenant_requests = Counter("saga_gateway_tenant_requests", "Requests by tenant",
                                       ["tenant"], registry=r)
        self.tenant_tokens = Counter("saga_gateway_tenant_tokens", "Prompt + completion "
                                     "tokens by tenant", ["tenant"], registry=r)
        self.queue_s = Histogram("saga_gateway_queue_seconds", "Time from a request's arrival "
                                 "to its forwarding upstream", registry=r,
                                 buckets=(1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.05, 0.1, 0.5,
                                          1.0, 5.0))
        self.engine_up = Gauge("saga_gateway_engine_up", "1 when the engine answers",
                               ["engine", "url"], registry=r)
        self.engine_load = Gauge("saga_gateway_engine_load", "(running + waiting) / slots, "
                                 "scraped or in flight", ["engine"], registry=r)
        self.engine_kv = Gauge("saga_gateway_engine_kv_usage", "KV-cache usage the engine "
                               "reports (0-1)", ["engine"], registry=r)
