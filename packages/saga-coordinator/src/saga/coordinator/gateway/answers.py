"""The gateway's answers: an engine's relayed (whole, or as an SSE stream chunk by chunk) and
accounted, and the gateway's own error answers.

:class:`AnswerMixin` is the answer half of :class:`~saga.coordinator.gateway.service.Gateway`:
once a call is forwarded, it gives back the engine's place, folds the call's time into the
engine's service time, counts tokens per engine and tenant, remembers the session's engine and
announced tool, and tells the routing the call finished. Kept apart from the request half
(route, admit, send, steal) so each module holds one step of a call.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.responses import JSONResponse, Response

from saga.coordinator.gateway.engines import EngineState
from saga.coordinator.gateway.metrics import GatewayMetrics
from saga.coordinator.gateway.routing import Routing
from saga.coordinator.gateway.steal import SERVICE_EWMA
from saga.coordinator.gateway.tenants import Tenants

if TYPE_CHECKING:
    from saga.coordinator.gateway.service import _Call

__all__ = ["AnswerMixin", "error_body"]

log = logging.getLogger("saga.gateway")

_TAIL_CHUNKS = 8
"""Last chunks of a stream kept to read its usage event from."""
_PENDING_KEPT = 65_536
"""Sessions whose announced tool the gateway remembers (to name it when it returns)."""
_HOMES_KEPT = 65_536
"""Sessions whose last engine the gateway remembers (to tell a moved call to load its KV)."""


def error_body(message: str, kind: str, code: int, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object (clients print ``error.message``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(message: str, kind: str, code: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code, param), status_code=code)


class AnswerMixin:
    """The answer half of :class:`~saga.coordinator.gateway.service.Gateway`."""

    metrics: GatewayMetrics
    tenants: Tenants
    routing: Routing
    _calls: dict[str, _Call]
    _homes: OrderedDict[str, str]
    _pending: OrderedDict[str, str]

    if TYPE_CHECKING:  # the gateway's
        @staticmethod
        def now() -> float: ...

        async def mark_down(self, engine: EngineState, why: str) -> None: ...

        def _done(self, engine: EngineState) -> None: ...

    def _failed(self, call: _Call, status: int, message: str) -> JSONResponse:
        """The gateway's own error answer, counted like an engine's (engine ``none`` when no
        engine was tried)."""
        engine = call.tried[-1] if call.tried else "none"
        self.metrics.of(self.metrics.requests, engine, call.endpoint, str(status)).inc()
        kind = "service_unavailable" if status == 503 else "upstream_error"
        return _error(message, kind, status)

    def _served(self, call: _Call, engine: EngineState) -> None:
        """A call answered: its time there joins the engine's mean service time."""
        took = self.now() - call.forwarded_at
        engine.service_s = took if not engine.service_s else (
            SERVICE_EWMA * took + (1 - SERVICE_EWMA) * engine.service_s)
        self._calls.pop(call.request_id, None)

    async def _whole(self, call: _Call, resp: aiohttp.ClientResponse) -> Response:
        engine = call.engine
        assert engine is not None
        try:
            content = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.of(self.metrics.errors, "upstream_" + type(exc).__name__).inc()
            await self.mark_down(engine, f"response broke: {type(exc).__name__}")
            return self._failed(call, 502, f"engine {engine.id} broke off its answer "
                                f"({type(exc).__name__})")
        finally:
            self._done(engine)
            self._served(call, engine)
            resp.release()
        usage = None
        if resp.status == 200:
            try:
                usage = json.loads(content).get("usage")
            except (ValueError, AttributeError):
                usage = None
        await self._account(call, resp.status, usage)
        return Response(content, status_code=resp.status,
                        media_type=resp.headers.get("content-type", "application/json"))

    async def _relay(self, call: _Call, resp: aiohttp.ClientResponse,
                     first: bytes) -> AsyncIterator[bytes]:
        """Pass an SSE stream through chunk by chunk (``first`` was read already, to know
        the call had started); read its usage chunk on the way."""
        engine = call.engine
        assert engine is not None
        last: deque[bytes] = deque(maxlen=_TAIL_CHUNKS)
        status = 200
        try:
            if first:
                last.append(first)
                yield first
            async for chunk in resp.content.iter_any():
                last.append(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = 502
            self.metrics.of(self.metrics.errors, "stream_broken").inc()
            log.error("502: stream from engine %s broke after its first byte (%s)", engine.id,
                      type(exc).__name__)
            await self.mark_down(engine, f"stream broke: {type(exc).__name__}")
            err = error_body(f"engine {engine.id} broke off the stream "
                             f"({type(exc).__name__}); the answer is incomplete",
                             "upstream_error", 502)
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
        finally:
            self._done(engine)
            self._served(call, engine)
            resp.release()
        await self._account(call, status, _stream_usage(b"".join(last)))

    async def _account(self, call: _Call, status: int, usage: Any) -> None:
        engine = call.engine
        assert engine is not None
        m = self.metrics
        m.of(m.requests, engine.id, call.endpoint, str(status)).inc()
        prompt = completion = cached = 0
        if isinstance(usage, dict):
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                cached = int(details.get("cached_tokens") or 0)
        m.of(m.prompt_tokens, engine.id).inc(prompt)
        m.of(m.cached_tokens, engine.id).inc(cached)
        self.tenants.count(call.tenant, tokens=prompt + completion)
        m.of(m.tenant_tokens, call.tenant).inc(prompt + completion)
        if status != 200:
            return
        meta = call.hints.meta
        if meta.final:
            self._homes.pop(meta.session_id, None)
        else:
            self._homes[meta.session_id] = engine.id
            self._homes.move_to_end(meta.session_id)
            if len(self._homes) > _HOMES_KEPT:
                self._homes.popitem(last=False)
        pinned = await self.routing.finished(
            meta.session_id, engine.id, self.now(), prompt_tokens=prompt,
            output_tokens=completion, cached_tokens=cached, final=meta.final,
            pending_tool=meta.pending_tool, tool_latency_s=meta.tool_latency_s)
        if meta.pending_tool is not None and not meta.final:
            self._pending[meta.session_id] = meta.pending_tool
            self._pending.move_to_end(meta.session_id)
            if len(self._pending) > _PENDING_KEPT:
                self._pending.popitem(last=False)
            if pinned > 0:
                m.pins.inc()


def _stream_usage(tail: bytes) -> Any:
    """The ``usage`` of the last SSE ``data:`` event in ``tail`` that has one."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = json.loads(line[6:]).get("usage")
            except ValueError:
                continue
            if usage:
                return usage
    return None
