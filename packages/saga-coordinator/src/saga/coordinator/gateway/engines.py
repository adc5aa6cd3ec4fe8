"""The engines behind the gateway and what each reports about itself.

Each engine is a vLLM OpenAI server (any version with Prometheus ``/metrics``). The gateway
scrapes ``/metrics`` on a short period for the engine's own view of its load (running and
waiting requests, KV-cache usage) and its prefix-cache counters, and counts what it has in
flight there itself (the scrape is a period old; the in-flight count is not). An engine that
fails a scrape or a request is marked down and routed around until a scrape succeeds again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["SCRAPED", "EngineState", "engine_ids", "parse_vllm_metrics"]

SCRAPED = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:saga_kv_store_loaded_blocks_total": "kv_loaded_blocks",
    "vllm:saga_kv_store_load_s_total": "kv_load_s",
}
"""vLLM metric → :class:`EngineState` field (summed over label sets, e.g. several models)."""

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """The :data:`SCRAPED` fields from a Prometheus text exposition (others ignored)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) not in SCRAPED:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        key = SCRAPED[m.group(1)]
        out[key] = out.get(key, 0.0) + value
    return out


@dataclass
class EngineState:
    """One engine: where it is, whether it answers, and its latest load."""

    id: str
    url: str
    slots: int = 8
    """Requests it runs at once (``max_num_seqs``): the load's denominator."""
    up: bool = False
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    in_flight: int = 0
    late_scrapes: int = 0
    """Scrapes in a row that timed out."""
    models: list[str] = field(default_factory=list)
    down_reason: str = ""
    kv_loaded_blocks: float = 0.0
    kv_load_s: float = 0.0
    """KV blocks the engine loaded from the node store, and the seconds that took."""
    idle_since: float | None = None
    """When the gateway last left it with nothing in flight (None: busy)."""
    service_s: float = 0.0
    """Mean seconds a call takes there, forwarded to answered (the newest weighs most)."""

    def apply(self, scraped: Mapping[str, float]) -> None:
        for key, value in scraped.items():
            setattr(self, key, value)

    @property
    def load(self) -> float:
        """``(running + waiting) / slots`` as the coordinator's workers report it; the
        gateway's own in-flight count when that is higher (the scrape lags)."""
        return max(self.running + self.waiting, float(self.in_flight)) / max(self.slots, 1)


def engine_ids(urls: Iterable[str]) -> list[EngineState]:
    """Engines ``e0``, ``e1``... for the base URLs given (trailing ``/`` and ``/v1`` dropped)."""
    out = []
    for i, url in enumerate(urls):
        base = url.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        out.append(EngineState(f"e{i}", base))
    return out
