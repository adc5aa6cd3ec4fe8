"""The coordinator's asyncio gRPC server: auth, validation and metrics around the core.

Handlers only translate: check the token, validate the message (``INVALID_ARGUMENT`` naming the
field), call the core, map its typed errors (``NOT_FOUND`` for an unknown session or worker,
``UNAVAILABLE`` when no worker is alive) and build the reply. A background task runs the epoch
(every ``epoch_s``, 100 ms): silent workers and finished sessions expire, AFS steps (when the
preset has it) and steals are planned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator._proto import saga_coordinator_pb2_grpc as pb_grpc
from saga.coordinator.core import (
    DEFAULT_PRESET,
    FINAL_GRACE_S,
    SESSION_IDLE_S,
    CoordinatorCore,
    NoWorkerError,
    UnknownWorkerError,
)
from saga.coordinator.handlers import coordinator_handler
from saga.coordinator.metrics import CoordinatorMetrics
from saga.coordinator.tls import ServerTLS
from saga.coordinator.validate import (
    MAX_BATCH,
    MAX_CLAIMS,
    MAX_MESSAGE_BYTES,
    InvalidField,
    check_id,
    check_number,
    check_size,
)
from saga.policy.afs import EPOCH_S
from saga.policy.errors import SagaConfigError, UnknownSessionError
from saga.policy.presets import get_preset
from saga.policy.stealing import WaitingSession

__all__ = ["AUTH_HEADER", "CoordinatorServer", "ServerConfig", "bearer"]

AUTH_HEADER = "authorization"


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that carries ``token``."""
    return ((AUTH_HEADER, f"Bearer {token}"),)


@dataclass(frozen=True)
class ServerConfig:
    """How a coordinator serves: address, shared secret, policy preset, timing, and TLS.

    ``preset`` names the :data:`saga.policy.presets.PRESETS` entry whose router, stealer, TTL
    policy and fairness the coordinator runs (an unknown name is a ``SagaConfigError`` listing
    the valid ones).

    ``tls_cert`` and ``tls_key`` (PEM paths) make it serve TLS; ``tls_client_ca`` also makes it
    require a client certificate signed by that CA (mutual TLS). The token is checked either way.
    """

    token: str
    host: str = "127.0.0.1"
    port: int = 0
    epoch_s: float = EPOCH_S
    heartbeat_interval_s: float = 0.25
    worker_timeout_s: float = 2.0
    max_batch: int = MAX_BATCH
    # Largest message received or sent; bigger ones get RESOURCE_EXHAUSTED, unparsed.
    max_message_bytes: int = MAX_MESSAGE_BYTES
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    final_grace_s: float = FINAL_GRACE_S
    session_idle_s: float = SESSION_IDLE_S
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        if not self.token:
            raise SagaConfigError("ServerConfig.token is empty; give a shared secret")
        get_preset(self.preset)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SagaConfigError("give both tls_cert (--tls-cert) and tls_key (--tls-key) to "
                                  "serve TLS, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SagaConfigError("tls_client_ca (--tls-client-ca) needs tls_cert and tls_key: "
                                  "mutual TLS is TLS with client certificates")
        if not 2**16 <= self.max_message_bytes < 2**31:
            raise SagaConfigError("ServerConfig.max_message_bytes must be in [64 KiB, 2 GiB), "
                                  f"got {self.max_message_bytes}")
        for name in ("epoch_s", "heartbeat_interval_s", "worker_timeout_s", "final_grace_s",
                     "session_idle_s"):
            if not getattr(self, name) > 0:
                raise SagaConfigError(f"ServerConfig.{name} must be > 0")


_Ctx = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


class _Servicer(pb_grpc.CoordinatorServicer):
    """Thin gRPC adapter over the core."""

    def __init__(self, core: CoordinatorCore, config: ServerConfig, coordinator_id: str,
                 metrics: CoordinatorMetrics, clock: Callable[[], float]) -> None:
        self.core = core
        self.config = config
        self.coordinator_id = coordinator_id
        self.metrics = metrics
        self.clock = clock
        self._expected = f"Bearer {config.token}".encode()

    # -- plumbing ---------------------------------------------------------------------------
    async def _auth(self, context: _Ctx) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_HEADER:
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, self._expected):
                    return
                break
        self.metrics.rejected("unauthenticated")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong token: send metadata 'authorization: Bearer <token>'")

    async def _fail(self, context: _Ctx, exc: Exception) -> NoReturn:
        if isinstance(exc, InvalidField | SagaConfigError):
            self.metrics.rejected("invalid_argument")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, UnknownSessionError | UnknownWorkerError):
            self.metrics.rejected("not_found")
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if isinstance(exc, NoWorkerError):
            self.metrics.rejected("unavailable")
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise exc

    def _route_one(self, r: Any, now: float, where: str = "") -> Any:
        check_id(f"{where}session_id", r.session_id)
        check_id(f"{where}tenant_id", r.tenant_id, required=False)
        check_id(f"{where}avoid_worker", r.avoid_worker, required=False)
        check_number(f"{where}deadline_s", r.deadline_s)
        check_number(f"{where}work_tokens", r.work_tokens)
        d = self.core.route(r.session_id, r.tenant_id, now, prompt_tokens=r.prompt_tokens,
                            deadline_s=r.deadline_s, work_tokens=r.work_tokens,
                            avoid_worker=r.avoid_worker)
        self.metrics.routed(d.reason)
        return pb.RouteReply(worker_id=d.worker_id, node=d.node,
                             reason=pb.RouteReason.Value(d.reason), pinned_for_s=d.pinned_for_s,
                             coordinator_id=self.coordinator_id)

    # -- hot path ---------------------------------------------------------------------------
    async def Route(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        t0 = time.perf_counter()
        try:
            reply = self._route_one(request, self.clock())
        except Exception as exc:
            await self._fail(context, exc)
        self.metrics.route_seconds.observe(time.perf_counter() - t0)
        return reply

    async def RouteStream(self, request_iterator: AsyncIterator[Any],
                          context: _Ctx) -> AsyncIterator[Any]:
        await self._auth(context)
        async for batch in request_iterator:
            try:
                check_size("RouteBatch.requests", len(batch.requests), self.config.max_batch)
                now = self.clock()
                replies = [self._route_one(r, now, f"requests[{i}].")
                           for i, r in enumerate(batch.requests)]
            except Exception as exc:
                await self._fail(context, exc)
            yield pb.RouteReplies(replies=replies)

    # -- workers ----------------------------------------------------------------------------
    async def Register(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        try:
            check_id("worker_id", request.worker_id)
            check_id("node", request.node, required=False)
            if request.slots < 1:
                raise InvalidField(f"slots must be >= 1, got {request.slots}")
            check_size("sessions", len(request.sessions), MAX_CLAIMS)
            claims = []
            for i, c in enumerate(request.sessions):
                check_id(f"sessions[{i}].session_id", c.session_id)
                check_id(f"sessions[{i}].tenant_id", c.tenant_id, required=False)
                check_number(f"sessions[{i}].pinned_for_s", c.pinned_for_s)
                claims.append((c.session_id, c.tenant_id or "default", c.pinned_for_s))
            adopted = self.core.register(request.worker_id, request.node or request.worker_id,
                                         request.slots, self.clock(), claims)
        except Exception as exc:
            await self._fail(context, exc)
        self.metrics.sync(self.core)
        return pb.RegisterReply(coordinator_id=self.coordinator_id,
                                heartbeat_interval_s=self.config.heartbeat_interval_s,
                                sessions_adopted=adopted, max_batch=self.config.max_batch)

    async def Heartbeat(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        try:
            check_id("worker_id", request.worker_id)
            check_number("load", request.load, hi=1e6)
            check_number("idle_for_s", request.idle_for_s, allow_negative=True)
            check_number("step_time_s", request.step_time_s)
            check_size("waiting", len(request.waiting), MAX_CLAIMS)
            waiting = []
            for i, w in enumerate(request.waiting):
                check_id(f"waiting[{i}].session_id", w.session_id)
                check_number(f"waiting[{i}].kv_bytes", w.kv_bytes)
                waiting.append(WaitingSession(w.session_id, w.kv_bytes))
            steals, order = self.core.heartbeat(
                request.worker_id, request.load, request.idle_for_s, tuple(waiting),
                request.step_time_s, self.clock())
        except Exception as exc:
            await self._fail(context, exc)
        return pb.HeartbeatReply(
            steals=[pb.StealOrder(session_id=s.session_id, src=s.src, dst=s.dst) for s in steals],
            order=order, coordinator_id=self.coordinator_id)

    async def Deregister(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        try:
            check_id("worker_id", request.worker_id)
            released = self.core.deregister(request.worker_id)
        except Exception as exc:
            await self._fail(context, exc)
        self.metrics.sync(self.core)
        return pb.DeregisterReply(sessions_released=released)

    async def Observe(self, request_iterator: AsyncIterator[Any],
                      context: _Ctx) -> AsyncIterator[Any]:
        await self._auth(context)
        async for batch in request_iterator:
            try:
                check_id("worker_id", batch.worker_id)
                self.core.worker(batch.worker_id)
                check_size("observations", len(batch.observations), self.config.max_batch)
            except Exception as exc:
                await self._fail(context, exc)
            now = self.clock()
            rejected: list[str] = []
            for i, obs in enumerate(batch.observations):
                try:
                    self._observe(obs, now, batch.worker_id)
                except (InvalidField, SagaConfigError, UnknownSessionError) as exc:
                    rejected.append(f"observations[{i}]: {exc}")
            n_ok = len(batch.observations) - len(rejected)
            self.core.observations += n_ok
            self.metrics.observed(n_ok, len(rejected))
            yield pb.ObservationAck(seq=batch.seq, accepted=n_ok, rejected=rejected)

    def _observe(self, obs: Any, now: float, worker_id: str) -> None:
        check_id("session_id", obs.session_id)
        if obs.session_id not in self.core.sessions and self.core.recently_ended(obs.session_id):
            return  # a late observation of a finished task: nothing left to update
        check_number("pressure", obs.pressure, hi=1.0)
        check_number("tool_latency_s", obs.tool_latency_s)
        kind = obs.kind
        if kind == pb.TOOL_START:
            check_id("tool", obs.tool)
            self.core.tool_started(obs.session_id, obs.tool, obs.pressure, now)
        elif kind == pb.TOOL_END:
            check_id("tool", obs.tool)
            self.core.tool_finished(obs.session_id, obs.tool, obs.tool_latency_s)
        elif kind == pb.CALL_END:
            if obs.cached_tokens > obs.prompt_tokens:
                raise InvalidField(f"cached_tokens ({obs.cached_tokens}) exceeds prompt_tokens "
                                   f"({obs.prompt_tokens})")
            self.core.call_finished(obs.session_id, obs.prompt_tokens, obs.output_tokens,
                                    obs.cached_tokens, worker_id, final=obs.final, now=now)
        elif kind == pb.CALL_START:
            self.core.session(obs.session_id)
        else:
            raise InvalidField(f"kind {kind} is not an ObservationKind; use CALL_START, "
                               "CALL_END, TOOL_START or TOOL_END")
        self.core.seen(obs.session_id, now)

    # -- admin ------------------------------------------------------------------------------
    async def EndSession(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        try:
            check_id("session_id", request.session_id)
            self.core.end_session(request.session_id, self.clock())
        except Exception as exc:
            await self._fail(context, exc)
        return pb.EndSessionReply()

    async def GetSession(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        try:
            check_id("session_id", request.session_id)
            e = self.core.session(request.session_id)
        except Exception as exc:
            await self._fail(context, exc)
        return pb.SessionInfo(session_id=e.session_id, worker_id=e.worker_id, node=e.node,
                              tenant_id=e.tenant_id,
                              pinned_for_s=max(e.pinned_until - self.clock(), 0.0),
                              calls=e.calls, moves=e.moves)

    async def Ping(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        return pb.PingReply(coordinator_id=self.coordinator_id)

    async def Stats(self, request: Any, context: _Ctx) -> Any:
        await self._auth(context)
        core = self.core
        per_worker: dict[str, int] = {}
        for s in core.sessions.values():
            per_worker[s.worker_id] = per_worker.get(s.worker_id, 0) + 1
        workers = [pb.WorkerInfo(worker_id=w.worker_id, node=w.node, load=w.load, alive=w.alive,
                                 sessions=per_worker.get(w.worker_id, 0))
                   for w in sorted(core.workers.values(), key=lambda w: w.worker_id)]
        return pb.StatsReply(coordinator_id=self.coordinator_id, workers=workers,
                             sessions=len(core.sessions), routes=core.routes, moves=core.moves,
                             steals=core.steals, afs_epochs=core.epochs,
                             observations=core.observations, afs_shares=dict(core.shares()),
                             sessions_ended=core.sessions_ended,
                             sessions_expired=core.sessions_expired, preset=core.preset)


class CoordinatorServer:
    """One coordinator: ``await start()``, ``address``, ``await stop()``.

    A restarted coordinator is a new :class:`CoordinatorServer` (new ``coordinator_id``, empty
    table) on the same address; workers re-register and their claims rebuild the table.
    Without ``core`` it runs a fresh bundle of ``config.preset``; a given ``core`` keeps its own
    bundle (``Stats`` reports the core's preset).
    """

    def __init__(self, config: ServerConfig, core: CoordinatorCore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.core = core if core is not None else CoordinatorCore.from_preset(
            config.preset, epoch_s=config.epoch_s, worker_timeout_s=config.worker_timeout_s,
            final_grace_s=config.final_grace_s, session_idle_s=config.session_idle_s)
        self.clock = clock
        self.coordinator_id = uuid.uuid4().hex[:12]
        self.metrics = CoordinatorMetrics()
        self._servicer = _Servicer(self.core, config, self.coordinator_id, self.metrics, clock)
        self._server: grpc.aio.Server | None = None
        self._epoch_task: asyncio.Task[None] | None = None
        self.port = config.port

    @property
    def address(self) -> str:
        """``host:port`` clients dial."""
        return f"{self.config.host}:{self.port}"

    async def start(self) -> str:
        """Bind, start serving and start the epoch loop; returns the address.

        Serves TLS when the config names a certificate and key (read and checked here: a bad
        file is a SagaConfigError naming it before anything binds)."""
        cfg = self.config
        tls = (ServerTLS.load(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
               if cfg.tls_cert is not None and cfg.tls_key is not None else None)
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes)])
        # Requests are parsed in the handlers: undecodable bytes are INVALID_ARGUMENT.
        server.add_generic_rpc_handlers((coordinator_handler(self._servicer),))
        bind = f"{self.config.host}:{self.config.port}"
        try:
            port = (server.add_secure_port(bind, tls.credentials()) if tls is not None
                    else server.add_insecure_port(bind))
        except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
            port = 0
        if port == 0:
            raise SagaConfigError(
                f"cannot bind {self.config.host}:{self.config.port} (in use?); choose another "
                "--port")
        self.port = port
        await server.start()
        self._server = server
        self._epoch_task = asyncio.create_task(self._epochs())
        return self.address

    async def _epochs(self) -> None:
        """Epochs every ``epoch_s``: worker and session expiry, AFS shares, steals."""
        while True:
            await asyncio.sleep(self.config.epoch_s)
            self.core.epoch(self.clock())
            self.metrics.sync(self.core)

    async def stop(self, grace: float | None = 0.0) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds) and the epoch loop."""
        if self._epoch_task is not None:
            self._epoch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._epoch_task
            self._epoch_task = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait(self) -> None:
        """Serve until stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()

    def metrics_text(self) -> str:
        """The Prometheus text exposition of this coordinator's metrics."""
        self.metrics.sync(self.core)
        return self.metrics.text()
