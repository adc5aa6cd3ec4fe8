"""Clients of the coordinator: the router client agents use, and the worker client.

:class:`CoordinatorClient` retries a call while the coordinator is unreachable (a restart) for up
to ``retry_s`` and then fails with :class:`CoordinatorUnavailable`, so an in-flight request is
either retried or fails clearly. :class:`WorkerClient` keeps a worker registered: it heartbeats,
re-registers with its live sessions whenever the coordinator does not know it (restart, expiry),
and sends step observations in batches over one bi-directional stream that it reopens after a
failure, re-sending the batches that were not acknowledged. Both open their channel with
:func:`~saga.coordinator.tls.open_channel`: TLS when given a ``ClientTLS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator._proto import saga_coordinator_pb2_grpc as pb_grpc
from saga.coordinator.server import bearer
from saga.coordinator.tls import ClientTLS, open_channel
from saga.policy.errors import SagaError

__all__ = [
    "Claim",
    "CoordinatorClient",
    "CoordinatorUnavailable",
    "WorkerClient",
    "WorkerReport",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CoordinatorUnavailable(SagaError, ConnectionError):
    """The coordinator did not answer within the retry budget."""


def _transport_hint(tls: ClientTLS | None) -> str:
    """What to check when the coordinator never answers: a transport mismatch looks the same
    as a coordinator that is down (both UNAVAILABLE)."""
    if tls is None:
        return "plaintext channel: if the coordinator serves TLS, give its CA (--tls-ca)"
    return ("TLS channel: check that the coordinator serves TLS, that its certificate is signed "
            "by the given CA and names this host, and any client certificate it requires")


class CoordinatorClient:
    """Async client for routing and admin calls (one channel, reused)."""

    def __init__(self, address: str, token: str, *, retry_s: float = 10.0,
                 timeout_s: float = 5.0, tls: ClientTLS | None = None) -> None:
        self.address = address
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.metadata = bearer(token)
        self.tls = tls
        self._channel = open_channel(address, tls)
        self.stub: Any = pb_grpc.CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` until it succeeds or a non-retryable error; at most ``retry_s`` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retry_s
        delay = 0.02
        while True:
            try:
                return await fn()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise
                if loop.time() + delay > give_up:
                    raise CoordinatorUnavailable(
                        f"{what}: coordinator at {self.address} unreachable for "
                        f"{self.retry_s:.1f} s ({exc.code().name}: {exc.details()}; "
                        f"{_transport_hint(self.tls)})") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def route(self, session_id: str, tenant_id: str = "", *, prompt_tokens: int = 0,
                    deadline_s: float = 0.0, work_tokens: float = 0.0,
                    avoid_worker: str = "") -> Any:
        """Route one call; returns the ``RouteReply``."""
        req = pb.RouteRequest(session_id=session_id, tenant_id=tenant_id,
                              prompt_tokens=prompt_tokens, deadline_s=deadline_s,
                              work_tokens=work_tokens, avoid_worker=avoid_worker)
        return await self._retry("Route", lambda: self.stub.Route(
            req, metadata=self.metadata, timeout=self.timeout_s))

    def route_stream(self, batches: AsyncIterator[Any]) -> Any:
        """Open a RouteStream over ``batches`` (RouteBatch messages); iterate the replies."""
        return self.stub.RouteStream(batches, metadata=self.metadata)

    async def end_session(self, session_id: str) -> None:
        await self._retry("EndSession", lambda: self.stub.EndSession(
            pb.EndSessionRequest(session_id=session_id), metadata=self.metadata,
            timeout=self.timeout_s))

    async def get_session(self, session_id: str) -> Any:
        return await self._retry("GetSession", lambda: self.stub.GetSession(
            pb.GetSessionRequest(session_id=session_id), metadata=self.metadata,
            timeout=self.timeout_s))

    async def stats(self) -> Any:
        return await self._retry("Stats", lambda: self.stub.Stats(
            pb.StatsRequest(), metadata=self.metadata, timeout=self.timeout_s))


@dataclass(frozen=True)
class WorkerReport:
    """A heartbeat's content."""

    load: float
    idle_for_s: float
    waiting: tuple[tuple[str, float], ...] = ()
    step_time_s: float = 0.0


@dataclass(frozen=True)
class Claim:
    """A session whose KV the worker holds (sent on every (re-)registration)."""

    session_id: str
    tenant_id: str
    pinned_for_s: float = 0.0
    kv_tokens: int = 0


class WorkerClient:
    """Keeps one worker known to the coordinator and streams its observations.

    ``report()`` and ``claims()`` are read on every heartbeat and registration; ``on_steal`` is
    called with each StealOrder for this worker, ``on_order`` with the AFS order of its waiting
    sessions. Observations queue in memory (bounded by ``max_pending``: past it the oldest are
    dropped and counted in :attr:`dropped`) and leave in batches of at most ``batch_max``.
    """

    def __init__(self, address: str, token: str, worker_id: str, *, node: str = "", slots: int = 1,
                 report: Callable[[], WorkerReport] | None = None,
                 claims: Callable[[], Sequence[Claim]] | None = None,
                 on_steal: Callable[[Any], None] | None = None,
                 on_order: Callable[[Sequence[str]], None] | None = None,
                 batch_max: int = 256, max_pending: int = 100_000,
                 tls: ClientTLS | None = None) -> None:
        self.address = address
        self.worker_id = worker_id
        self.node = node or worker_id
        self.slots = slots
        self._md = bearer(token)
        self._report = report or (lambda: WorkerReport(0.0, 0.0))
        self._claims = claims or (lambda: ())
        self._on_steal = on_steal
        self._on_order = on_order
        self.batch_max = batch_max
        self.max_pending = max_pending
        self._channel = open_channel(address, tls)
        self.stub: Any = pb_grpc.CoordinatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._pending: deque[Any] = deque()
        self._inflight: dict[int, list[Any]] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._registered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeat_interval_s = 0.25
        self.coordinator_id = ""
        self.registrations = 0
        self.dropped = 0
        self.acked = 0
        self.rejected: list[str] = []

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, timeout_s: float = 30.0) -> None:
        """Register (retrying until ``timeout_s``) and start the heartbeat and stream tasks."""
        await asyncio.wait_for(self._register_until_done(), timeout_s)
        self._tasks = [asyncio.create_task(self._heartbeats()),
                       asyncio.create_task(self._stream_forever())]

    async def stop(self, deregister: bool = True) -> None:
        """Flush what can be flushed quickly, stop the tasks, leave the coordinator."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), 1.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if deregister:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.Deregister(pb.DeregisterRequest(worker_id=self.worker_id),
                                           metadata=self._md, timeout=1.0)
        await self._channel.close()

    async def _register_until_done(self) -> None:
        delay = 0.02
        while True:
            try:
                await self.register()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def register(self) -> Any:
        """Register with the current claims (also after a coordinator restart)."""
        self._registered.clear()
        claims = [pb.SessionClaim(session_id=c.session_id, tenant_id=c.tenant_id,
                                  pinned_for_s=c.pinned_for_s, kv_tokens=c.kv_tokens)
                  for c in self._claims()]
        reply = await self.stub.Register(
            pb.RegisterRequest(worker_id=self.worker_id, node=self.node, slots=self.slots,
                               sessions=claims), metadata=self._md, timeout=5.0)
        self.coordinator_id = reply.coordinator_id
        self.heartbeat_interval_s = reply.heartbeat_interval_s or self.heartbeat_interval_s
        self.batch_max = min(self.batch_max, reply.max_batch or self.batch_max)
        self.registrations += 1
        self._registered.set()
        return reply

    # -- heartbeats -------------------------------------------------------------------------
    async def heartbeat(self) -> Any:
        """One heartbeat; re-registers first if the coordinator has forgotten this worker."""
        r = self._report()
        req = pb.HeartbeatRequest(
            worker_id=self.worker_id, load=r.load, idle_for_s=r.idle_for_s,
            step_time_s=r.step_time_s,
            waiting=[pb.WaitingSession(session_id=s, kv_bytes=b) for s, b in r.waiting])
        try:
            reply = await self.stub.Heartbeat(req, metadata=self._md, timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            await self.register()
            reply = await self.stub.Heartbeat(req, metadata=self._md, timeout=2.0)
        if reply.coordinator_id != self.coordinator_id:
            await self.register()
        for steal in reply.steals:
            if self._on_steal is not None:
                self._on_steal(steal)
        if self._on_order is not None and reply.order:
            self._on_order(list(reply.order))
        return reply

    async def _heartbeats(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except grpc.aio.AioRpcError as exc:
                log.debug("heartbeat of %s failed: %s", self.worker_id, exc.code())
                self._registered.clear()
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.register()
            await asyncio.sleep(self.heartbeat_interval_s)

    # -- observations -----------------------------------------------------------------------
    def observe(self, obs: Any) -> None:
        """Queue one ``Observation``; never blocks the caller."""
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(obs)
        self._wake.set()

    @property
    def unacked(self) -> int:
        """Observations queued or sent but not yet acknowledged."""
        return len(self._pending) + sum(len(b) for b in self._inflight.values())

    async def flush(self) -> None:
        """Wait until every queued observation is acknowledged."""
        while self.unacked:
            await asyncio.sleep(0.005)

    async def _stream_forever(self) -> None:
        while True:
            await self._registered.wait()
            try:
                await self._stream_once()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                log.debug("observation stream of %s broke: %s", self.worker_id, exc)
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
                        grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    # The coordinator restarted or forgot us: re-register before reopening.
                    self._registered.clear()
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await self.register()
            # Re-queue unacknowledged batches in order, ahead of newer observations.
            for seq in sorted(self._inflight, reverse=True):
                self._pending.extendleft(reversed(self._inflight.pop(seq)))
            await asyncio.sleep(0.05)

    async def _stream_once(self) -> None:
        call = self.stub.Observe(metadata=self._md)

        async def reader() -> None:
            async for ack in call:
                batch = self._inflight.pop(ack.seq, [])
                self.acked += ack.accepted
                self.rejected.extend(ack.rejected)
                del batch

        read_task = asyncio.create_task(reader())
        try:
            while not read_task.done():
                if not self._pending:
                    self._wake.clear()
                    waiter = asyncio.create_task(self._wake.wait())
                    await asyncio.wait({waiter, read_task}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    continue
                n = min(self.batch_max, len(self._pending))
                obs = [self._pending.popleft() for _ in range(n)]
                self._seq += 1
                self._inflight[self._seq] = obs
                await call.write(pb.ObservationBatch(worker_id=self.worker_id, seq=self._seq,
                                                     observations=obs))
            read_task.result()
        finally:
            read_task.cancel()
            call.cancel()
