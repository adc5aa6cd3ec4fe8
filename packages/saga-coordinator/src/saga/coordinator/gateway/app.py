"""The gateway as an ASGI app: ``create_app(GatewayConfig(...))``, served by uvicorn.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (routed and forwarded),
``GET /v1/models`` (the engines' models), ``GET /health`` (200 while an engine is up, with each
engine's state), ``GET /metrics`` (Prometheus). A background task scrapes every engine's
``/metrics`` each ``scrape_s`` seconds: the engines' loads reach the router, engines that stop
answering are routed around and come back when they answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from saga.coordinator.core import DEFAULT_PRESET, CoordinatorCore
from saga.coordinator.gateway.engines import engine_ids
from saga.coordinator.gateway.routing import LocalRouting, RemoteRouting, Routing
from saga.coordinator.gateway.service import Gateway, Timeouts
from saga.coordinator.gateway.steal import KV_LOAD_S_PER_TOKEN, KV_MOVE_S
from saga.coordinator.gateway.tenants import Tenants
from saga.policy.errors import SagaConfigError

__all__ = ["GatewayConfig", "build_gateway", "create_app"]

log = logging.getLogger("saga.gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway process serves and how."""

    engines: tuple[str, ...]
    """Base URLs of the vLLM OpenAI servers behind it (``http://host:port``)."""
    preset: str = DEFAULT_PRESET
    api_keys: Mapping[str, str] | None = None
    """API key → tenant; None: keys off (every request is the ``default`` tenant)."""
    slots: int = 8
    """Requests each engine runs at once (its ``--max-num-seqs``): the load's denominator."""
    scrape_s: float = 0.5
    scrape_timeout_s: float = 3.0
    """How long one ``/metrics`` scrape may take (an engine busy prefilling answers late)."""
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 600.0
    coordinator: str | None = None
    """A shared gRPC coordinator (``host:port``) instead of one in this process."""
    coordinator_token: str = ""
    queue_at: int | None = None
    """Requests in flight per engine before the gateway queues the rest (served in AFS order
    when the preset has fairness); None: ``2 x slots`` (the engine runs ``slots`` and queues as
    many); 0: never queue in the gateway."""
    kv_moves: bool = True
    """Tell a moved call's new engine to load its session's KV from the node store (engines
    started with ``--kv-store``; others ignore it)."""
    kv_load_s_per_token: float = KV_LOAD_S_PER_TOKEN
    """Seconds to move one token of a call's KV, for the stealing rule, until the engines have
    measured their own loads; without a KV store, the time to prefill a token."""
    kv_move_s: float = KV_MOVE_S
    """Fixed seconds a move costs (cancel at one engine, send to another)."""

    def __post_init__(self) -> None:
        if not self.engines:
            raise SagaConfigError("the gateway needs at least one engine: give --engines N or "
                                  "--engine-url URL")
        bad = [u for u in self.engines if not u.startswith(("http://", "https://"))]
        if bad:
            raise SagaConfigError(f"engine URL {bad[0]!r} must start with http:// or https://")
        for name in ("scrape_s", "scrape_timeout_s", "connect_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise SagaConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.queue_at is not None and self.queue_at < 0:
            raise SagaConfigError(f"queue_at must be >= 0, got {self.queue_at}")
        if not (self.kv_load_s_per_token > 0 and self.kv_move_s >= 0):
            raise SagaConfigError("kv_load_s_per_token must be > 0 and kv_move_s >= 0, got "
                                  f"{self.kv_load_s_per_token}, {self.kv_move_s}")
        if self.slots < 1:
            raise SagaConfigError(f"slots must be >= 1, got {self.slots}")
        if self.coordinator is not None and not self.coordinator_token:
            raise SagaConfigError("--coordinator needs the coordinator's token "
                                  "(--coordinator-token or $SAGA_COORDINATOR_TOKEN)")


def build_gateway(config: GatewayConfig) -> Gateway:
    """The gateway object behind the app (engines, routing, tenants, metrics)."""
    routing: Routing
    if config.coordinator is not None:
        routing = RemoteRouting(config.coordinator, config.coordinator_token)
    else:
        routing = LocalRouting(CoordinatorCore.from_preset(
            config.preset, worker_timeout_s=max(10 * config.scrape_s, 5.0)))
    engines = engine_ids(config.engines)
    for e in engines:
        e.slots = config.slots
    queue_at = 2 * config.slots if config.queue_at is None else config.queue_at or None
    return Gateway(engines, routing, Tenants(config.api_keys),
                   Timeouts(config.connect_timeout_s, config.request_timeout_s,
                            config.scrape_timeout_s), queue_at=queue_at,
                   kv_moves=config.kv_moves, kv_load_s_per_token=config.kv_load_s_per_token,
                   kv_move_s=config.kv_move_s)


async def _scrape_forever(gw: Gateway, period_s: float) -> None:
    while True:
        try:
            await gw.scrape_all()
        except Exception:  # a scrape bug must not stop routing updates for good
            log.exception("scraping the engines failed")
        await asyncio.sleep(period_s)


def create_app(config: GatewayConfig) -> FastAPI:
    """The gateway's ASGI app; engines are scraped once before it serves."""
    gw = build_gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.scrape_all()
        # What exists now lives as long as the gateway: keep the collector from walking it
        # again on every full collection (a pause in the tail of request latency).
        gc.freeze()
        task = asyncio.create_task(_scrape_forever(gw, config.scrape_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await gw.close()

    app = FastAPI(title="SAGA gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await gw.handle("/v1/chat/completions", request.headers, await request.body())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gw.handle("/v1/completions", request.headers, await request.body())

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(await gw.models())

    @app.get("/health")
    async def health() -> JSONResponse:
        engines = [{"id": e.id, "url": e.url, "up": e.up, "load": round(e.load, 3),
                    "kv_usage": e.kv_usage, "down_reason": e.down_reason}
                   for e in gw.engines.values()]
        up = any(e.up for e in gw.engines.values())
        return JSONResponse({"status": "ok" if up else "no engine up",
                             "preset": config.preset, "engines": engines},
                            status_code=200 if up else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
