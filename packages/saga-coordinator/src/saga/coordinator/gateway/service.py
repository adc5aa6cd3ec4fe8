"""The gateway's work for one request: who, which session, which engine, forward, account.

Requests pass through unchanged except for what SAGA adds: the session's metadata in
``vllm_xargs`` (the flat ``saga_*`` keys SagaScheduler reads; a stock engine ignores them), the
tenant's ``cache_salt``, and ``cache_control`` removed (vLLM does not know it). Responses pass
through unchanged: JSON as the engine wrote it, SSE streams chunk by chunk as they arrive.

KV moves: the gateway remembers which engine served each session's last call. A call that lands
on another engine (re-homed, stolen, or its engine down) carries
``kv_transfer_params: {"saga_load": true}``, so an engine started with ``--kv-store`` loads the
session's prefix from the node's KV store instead of computing it again (an engine without a
store ignores it); counted in ``saga_gateway_kv_moves``.

Stealing (presets with a stealer, in-process routing): each scrape reports every engine's queue
(:mod:`saga.coordinator.gateway.steal`); the core's epoch plans steals by the spec's rule and
the gateway carries each out. A call in the gateway's own queue is routed to the thief before
it is forwarded; a call waiting inside vLLM is cancelled by closing its upstream connection
(vLLM aborts a request whose client went away) and sent to the thief with the KV load
instruction, but only while no byte of its answer has come back. Every call has one request id
(the client's ``X-Request-Id``, made unique, or one the gateway assigns), sent upstream on each
try and returned in the answer's ``x-request-id`` header with ``x-saga-engine`` (the engine
that answered): an attempt that lost its call to a steal is never relayed, so each call is
answered exactly once. Counted in ``saga_gateway_steals`` by where the call waited.

Faults: an engine that refuses the connection or times out before answering is marked down
(routed around until a scrape finds it again) and the request goes once to another engine; a
stream that breaks after its first byte cannot be retried, so it ends with an SSE error event.
Every upstream call has a connect and a total timeout, so nothing waits forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import Counter
from starlette.responses import Response, StreamingResponse

from saga.coordinator.gateway.answers import AnswerMixin, _error, error_body
from saga.coordinator.gateway.engines import EngineState, parse_vllm_metrics
from saga.coordinator.gateway.hints import CallHints, HintError, read_hints, strip_cache_control
from saga.coordinator.gateway.metrics import GatewayMetrics
from saga.coordinator.gateway.routing import Routing, prompt_hashes, prompt_text
from saga.coordinator.gateway.steal import (
    KV_LOAD_S_PER_TOKEN,
    KV_MOVE_S,
    EngineQueue,
    Queued,
    Stolen,
    UpstreamFailed,
    engine_queue,
    in_engine_waiting,
    measured_load_s_per_token,
    race,
)
from saga.coordinator.gateway.tenants import AuthError, Tenants
from saga.coordinator.table import CoordinatorError, NoWorkerError
from saga.policy.stealing import Steal

__all__ = ["Gateway", "Timeouts", "error_body"]

log = logging.getLogger("saga.gateway")

LATE_SCRAPES_DOWN = 3
"""Scrapes in a row that time out before an engine is marked down (a refused connection marks
it down at once)."""
KV_LOAD = {"saga_load": True}
"""``kv_transfer_params`` of a call whose session moved: load its prefix from the KV store."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds an upstream call may take: to connect, and in all (a stream: between chunks)."""

    connect_s: float = 2.0
    total_s: float = 600.0
    scrape_s: float = 1.0


@dataclass
class _Call:
    """One request on its way: what it asked, for whom, and where it went."""

    endpoint: str
    body: dict[str, Any]
    hints: CallHints
    tenant: str
    arrived: float
    stream: bool
    engine: EngineState | None = None
    tried: list[str] = field(default_factory=list)
    request_id: str = ""
    prompt_tokens: int = 0
    forwarded_at: float = 0.0
    steal: asyncio.Future[str] | None = None
    """Set while the call is forwarded and has no byte back: a steal sets the thief's id."""
    stolen: int = 0


_Waiter = tuple[str, "asyncio.Future[None]", _Call]


class Gateway(AnswerMixin):
    """Engines, routing, tenants and metrics of one gateway process."""

    def __init__(self, engines: list[EngineState], routing: Routing, tenants: Tenants,
                 timeouts: Timeouts = Timeouts(), metrics: GatewayMetrics | None = None,
                 queue_at: int | None = None, kv_moves: bool = True,
                 kv_load_s_per_token: float = KV_LOAD_S_PER_TOKEN,
                 kv_move_s: float = KV_MOVE_S) -> None:
        if not engines:
            raise CoordinatorError("the gateway needs at least one engine URL")
        self.engines = {e.id: e for e in engines}
        self.routing = routing
        self.tenants = tenants
        self.timeouts = timeouts
        self.metrics = metrics or GatewayMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._scrape_timeout = aiohttp.ClientTimeout(total=timeouts.scrape_s)
        self._pending: OrderedDict[str, str] = OrderedDict()
        self.queue_at = queue_at
        self._waiting: dict[str, list[_Waiter]] = {e.id: [] for e in engines}
        self._unanswered: dict[str, dict[str, _Call]] = {e.id: {} for e in engines}
        self._calls: dict[str, _Call] = {}
        self.kv_load_s_per_token, self.kv_move_s = kv_load_s_per_token, kv_move_s
        for e in engines:
            e.idle_since = self.now()
        self.kv_moves = kv_moves
        self._homes: OrderedDict[str, str] = OrderedDict()
        self.kv_moved = Counter("saga_gateway_kv_moves", "Calls sent to an engine other than "
                                "their session's last one with an instruction to load its KV",
                                registry=self.metrics.registry)
        self.steals = Counter("saga_gateway_steals", "Waiting calls moved to an idle engine, "
                              "by where they waited (gateway or engine queue; missed: the call "
                              "had started before the steal reached it)", ["where"],
                              registry=self.metrics.registry)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The upstream HTTP client (made in the serving event loop on first use): keep-alive
        connections to every engine, no proxy from the environment, no cookies kept."""
        if self._session is None:
            t = self.timeouts
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=t.total_s, connect=t.connect_s),
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                skip_auto_headers=("User-Agent",))
        return self._session

    # -- engines -------------------------------------------------------------------------------
    async def scrape(self, engine: EngineState) -> None:
        """Read one engine's ``/metrics``: up (attached to routing) or down (detached)."""
        try:
            async with self.session.get(engine.url + "/metrics",
                                        timeout=self._scrape_timeout) as r:
                r.raise_for_status()
                engine.apply(parse_vllm_metrics(await r.text()))
        except TimeoutError:
            # A busy engine answers late: down only after several late scrapes in a row.
            engine.late_scrapes += 1
            if engine.late_scrapes >= LATE_SCRAPES_DOWN or not engine.up:
                await self.mark_down(engine, f"/metrics: no answer in {engine.late_scrapes} "
                                     "scrapes")
            return
        except aiohttp.ClientError as exc:
            # Refused, reset or an error status: it is down now.
            await self.mark_down(engine, f"/metrics: {type(exc).__name__}")
            return
        engine.late_scrapes = 0
        if not engine.up:
            engine.up, engine.down_reason = True, ""
            await self.routing.attach(engine, self.now())
            log.info("engine %s at %s is up", engine.id, engine.url)
        else:
            await self.routing.report(engine, self.now(), self._queue(engine))
        self._gauges(engine)

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(e) for e in self.engines.values()))
        rate = measured_load_s_per_token(self.engines.values()) or self.kv_load_s_per_token
        self.routing.set_kv_rate(rate, self.kv_move_s)
        await self.routing.tick(self.now())
        for steal in self.routing.steals():
            self._steal(steal)

    def _queue(self, engine: EngineState) -> EngineQueue:
        """What waits on ``engine``, for the stealer."""
        now = self.now()
        forwarded = list(self._unanswered[engine.id].values())
        in_engine = {c.request_id for c in in_engine_waiting(engine, forwarded)}
        unanswered = [Queued(c.hints.meta.session_id, c.prompt_tokens, c.request_id)
                      for c in forwarded]
        waiters = self._waiting[engine.id]
        order = self.routing.order([sid for sid, _, _ in waiters], now) if waiters else []
        by_session: dict[str, list[_Call]] = {}
        for sid, _, call in waiters:
            by_session.setdefault(sid, []).append(call)
        queued = [Queued(sid, c.prompt_tokens) for sid in order for c in by_session[sid][:1]]
        running = [now - c.forwarded_at for c in self._calls.values()
                   if c.engine is engine and c.forwarded_at and c.request_id not in in_engine]
        return engine_queue(engine, unanswered, queued, now, max(running, default=0.0))

    def _steal(self, steal: Steal) -> None:
        """Carry out one planned steal: the session's waiting call on ``steal.src`` goes to
        ``steal.dst`` (from the gateway's queue, or cancelled in the engine's)."""
        for w in self._waiting.get(steal.src, []):
            if w[0] == steal.session_id and not w[1].done():
                self._waiting[steal.src].remove(w)
                w[1].set_exception(Stolen(steal.dst))
                self.steals.labels("gateway").inc()
                return
        src = self.engines.get(steal.src)
        forwarded = list(self._unanswered.get(steal.src, {}).values())
        for call in in_engine_waiting(src, forwarded) if src is not None else []:
            if call.hints.meta.session_id == steal.session_id and call.steal is not None \
                    and not call.steal.done():
                call.steal.set_result(steal.dst)
                self.steals.labels("engine").inc()
                return
        self.steals.labels("missed").inc()

    async def mark_down(self, engine: EngineState, why: str) -> None:
        if engine.up:
            log.warning("engine %s at %s is down (%s); its sessions re-home", engine.id,
                        engine.url, why)
            await self.routing.detach(engine.id, self.now())
        engine.up, engine.down_reason = False, why
        for _, fut, _ in self._waiting[engine.id]:
            if not fut.done():
                fut.set_exception(_EngineDown(engine.id))
        self._waiting[engine.id].clear()
        self._gauges(engine)

    def _gauges(self, e: EngineState) -> None:
        m = self.metrics
        m.of(m.engine_up, e.id, e.url).set(1.0 if e.up else 0.0)
        m.of(m.engine_load, e.id).set(e.load)
        m.of(m.engine_kv, e.id).set(e.kv_usage)

    async def models(self) -> dict[str, Any]:
        """``GET /v1/models`` of every engine that is up, merged (each model once)."""
        async def one(e: EngineState) -> list[dict[str, Any]]:
            try:
                async with self.session.get(e.url + "/v1/models",
                                            timeout=self._scrape_timeout) as r:
                    r.raise_for_status()
                    data = (await r.json()).get("data", [])
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                return []
            return [m for m in data if isinstance(m, dict) and "id" in m]

        found = await asyncio.gather(*(one(e) for e in self.engines.values() if e.up))
        merged: dict[str, dict[str, Any]] = {}
        for models in found:
            for m in models:
                merged.setdefault(str(m["id"]), m)
        return {"object": "list", "data": list(merged.values())}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.routing.close()

    # -- requests ------------------------------------------------------------------------------
    async def handle(self, endpoint: str, headers: Mapping[str, str], raw: bytes) -> Response:
        """Answer one ``/v1/chat/completions`` or ``/v1/completions`` request."""
        arrived = self.now()
        try:
            tenant = self.tenants.tenant_of(headers.get("authorization"))
        except AuthError as exc:
            self.metrics.of(self.metrics.errors, "auth").inc()
            return _error(str(exc), "authentication_error", 401)
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            body = None
            why = f"the request body is not valid JSON ({exc})"
        else:
            why = "the request body must be a JSON object"
        if not isinstance(body, dict):
            self.metrics.of(self.metrics.errors, "bad_request").inc()
            return _error(why, "invalid_request_error", 400)
        try:
            hints = read_hints(headers, body, tenant, uuid.uuid4().hex[:16])
            body = self._upstream_body(body, hints, tenant)
        except HintError as exc:
            self.metrics.of(self.metrics.errors, "bad_request").inc()
            return _error(str(exc), "invalid_request_error", 400, exc.where)
        self.tenants.count(tenant, request=True)
        self.metrics.of(self.metrics.tenant_requests, tenant).inc()
        call = _Call(endpoint, body, hints, tenant, arrived, body.get("stream") is True)
        call.request_id = self._request_id(headers.get("x-request-id"))
        self._calls[call.request_id] = call
        try:
            await self._tool_returned(hints)
            resp = await self._forward(call)
        except BaseException:
            self._calls.pop(call.request_id, None)
            raise
        if not isinstance(resp, StreamingResponse):
            self._calls.pop(call.request_id, None)
        resp.headers["x-request-id"] = call.request_id
        if call.engine is not None:
            resp.headers["x-saga-engine"] = call.engine.id
        return resp

    def _request_id(self, given: str | None) -> str:
        """The call's one id on every try: the client's, unless another call in flight has
        it, else a new one."""
        if given and given not in self._calls and len(given) <= 128:
            return given
        return uuid.uuid4().hex if not given else f"{given[:96]}-{uuid.uuid4().hex[:8]}"

    def _upstream_body(self, body: dict[str, Any], hints: CallHints,
                       tenant: str) -> dict[str, Any]:
        body = strip_cache_control(body)
        xargs = body.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            raise HintError("vllm_xargs must be an object", "vllm_xargs")
        body["vllm_xargs"] = {**(xargs or {}), **hints.meta.vllm_xargs()}
        salt = self.tenants.cache_salt(tenant)
        if salt is not None:
            own = body.get("cache_salt")
            body["cache_salt"] = salt if not own else f"{salt}:{own}"
        return body

    async def _tool_returned(self, hints: CallHints) -> None:
        meta = hints.meta
        tool = self._pending.pop(meta.session_id, None)
        if tool is not None and meta.tool_latency_s is not None:
            await self.routing.tool_returned(meta.session_id, tool, meta.tool_latency_s)

    async def _route(self, call: _Call) -> EngineState:
        meta = call.hints.meta
        text = prompt_text(call.body)
        prompt = call.body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt_tokens = len(prompt)  # token ids: exact
        else:
            prompt_tokens = len(text) // 4  # about 4 characters a token; only an estimate
        call.prompt_tokens = prompt_tokens
        max_tokens = call.body.get("max_tokens") or call.body.get("max_completion_tokens")
        work = prompt_tokens + (max_tokens if isinstance(max_tokens, int) else 256)
        decision = await self.routing.route(
            meta.session_id, call.tenant, self.now(), prompt_tokens=prompt_tokens,
            block_hashes=prompt_hashes(text), avoid=call.tried[-1] if call.tried else "",
            deadline_s=meta.deadline_s or 0.0, work_tokens=float(work))
        engine = self.engines[decision.worker_id]
        self.metrics.of(self.metrics.routes, engine.id, decision.reason).inc()
        if decision.reason in ("OVERLOADED", "REHOMED"):
            self.metrics.rehomes.inc()
        return engine

    async def _forward(self, call: _Call) -> Response:
        """Route, admit and send the call; once more elsewhere after an engine failure; to
        the thief as often as it is stolen."""
        failures = 0
        thief: EngineState | None = None
        while True:
            if thief is not None:
                engine, thief = thief, None
            else:
                try:
                    engine = await self._route(call)
                except NoWorkerError:
                    self.metrics.of(self.metrics.errors, "no_engine").inc()
                    return self._failed(call, 503, "no engine is up behind the gateway; check "
                                        "`saga serve`'s engines (GET /health lists them)")
            call.engine = engine
            call.tried.append(engine.id)
            try:
                await self._admit(engine, call)
                self.metrics.queue_s.observe(self.now() - call.arrived)
                return await self._send(call, engine)
            except Stolen as stolen:
                call.stolen += 1
                thief = self.engines.get(stolen.dst)
            except _EngineDown:
                failures += 1
                if failures > 1:
                    return self._failed(call, 502, f"engines {call.tried} went down while "
                                        "this request waited for them; retry later")
                self.metrics.retries.inc()
            except UpstreamFailed as exc:
                failures += 1
                await self.mark_down(engine, f"request failed: {exc.kind}")
                self.metrics.of(self.metrics.errors, "upstream_" + exc.kind).inc()
                if failures > 1:
                    return self._failed(call, 502, f"engines {call.tried} failed this request "
                                        f"({exc.kind}); retry later")
                self.metrics.retries.inc()

    async def _send(self, call: _Call, engine: EngineState) -> Response:
        """Post the call (it holds one of ``engine``'s places, given back here unless the
        answer's relay does it); :class:`Stolen` when a steal took it before its first
        byte."""
        fwd = {"content-type": "application/json", "x-request-id": call.request_id}
        data = self._payload(call, engine)
        call.steal = asyncio.get_running_loop().create_future()
        call.forwarded_at = self.now()
        self._unanswered[engine.id][call.request_id] = call
        first = b""
        try:
            resp = await race(self.session.post(engine.url + call.endpoint, data=data,
                                                 headers=fwd), call.steal)
            if call.stream and resp.status == 200:
                try:
                    first = await race(resp.content.readany(), call.steal)
                except BaseException:
                    resp.close()  # the engine sees the client go and aborts the request
                    raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            call.forwarded_at = 0.0
            self._done(engine)
            raise UpstreamFailed(type(exc).__name__) from None
        except BaseException:  # stolen, or the client went away
            call.forwarded_at = 0.0
            self._done(engine)
            raise
        finally:
            self._unanswered[engine.id].pop(call.request_id, None)
            call.steal = None
        if call.stream and resp.status == 200:
            return StreamingResponse(self._relay(call, resp, first), status_code=200,
                                     media_type=resp.headers.get("content-type",
                                                                 "text/event-stream"))
        return await self._whole(call, resp)

    def _payload(self, call: _Call, engine: EngineState) -> bytes:
        """The upstream body; a session that moved here asks the engine to load its KV."""
        home = self._homes.get(call.hints.meta.session_id)
        moved = call.stolen or (home is not None and home != engine.id)
        if not self.kv_moves or not moved:
            return json.dumps(call.body).encode()
        own = call.body.get("kv_transfer_params")
        params = {**own, **KV_LOAD} if isinstance(own, dict) else dict(KV_LOAD)
        self.kv_moved.inc()
        return json.dumps({**call.body, "kv_transfer_params": params}).encode()

    async def _admit(self, engine: EngineState, call: _Call) -> None:
        """Take one of the engine's places; past ``queue_at`` in flight, wait in the gateway's
        queue for one, served in the routing's fairness order (AFS when the preset has it)."""
        if self.queue_at is None or engine.in_flight < self.queue_at:
            engine.in_flight += 1
            engine.idle_since = None
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiting[engine.id]
        waiter = (call.hints.meta.session_id, fut, call)
        waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeouts.total_s)
        except BaseException:
            if waiter in waiters:
                waiters.remove(waiter)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self._done(engine)  # the place was handed over: pass it on
            raise

    def _done(self, engine: EngineState) -> None:
        """A request left the engine: hand its place to the next waiter, or free it."""
        waiters = self._waiting[engine.id]
        while waiters:
            order = self.routing.order([sid for sid, _, _ in waiters], self.now())
            pick = next(w for w in waiters if w[0] == order[0])
            waiters.remove(pick)
            if not pick[1].done():
                pick[1].set_result(None)
                return
        engine.in_flight -= 1
        if engine.in_flight == 0:
            engine.idle_since = self.now()


class _EngineDown(Exception):
    """The engine a queued request waited for went down (the request is routed again)."""
