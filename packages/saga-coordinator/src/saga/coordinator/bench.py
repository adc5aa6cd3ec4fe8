"""Coordinator benchmark: a load generator against a coordinator in another process on loopback.

The coordinator runs as ``python -m saga.coordinator`` in a child process; this process registers
synthetic workers (heartbeating like real ones) and routes calls of many agent sessions:

- unary: ``concurrency`` closed-loop callers, one ``Route`` per call; latency per call (asyncio
  client; and one caller with grpc's blocking stub);
- streamed: ``streams`` RouteStream callers, ``batch`` routes per message; latency per batch;
- Ping: an authenticated no-op RPC, one caller (the gRPC round trip Route cannot beat);
- in-process decision: ``CoordinatorCore.route`` alone, no gRPC (SAGA's share of a round trip).

Every phase is bounded by a count and by ``max_seconds``. Latencies are client-side round trips
(serialisation, loopback, server decision and back), measured with ``perf_counter``. Given a
certificate and key, the coordinator serves TLS and every phase runs over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.client import CoordinatorClient
from saga.coordinator.core import CoordinatorCore
from saga.coordinator.serve import TOKEN_ENV
from saga.coordinator.tls import ClientTLS, open_channel
from saga.policy.errors import SagaConfigError

__all__ = ["BenchConfig", "BenchResult", "PhaseResult", "run_bench", "start_server_process"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to run; every phase stops at its count or after ``max_seconds``."""

    workers: int = 4
    sessions: int = 2000
    unary_calls: int = 20_000
    concurrency: tuple[int, ...] = (1, 8)
    stream_routes: int = 200_000
    streams: int = 2
    batch: int = 64
    max_seconds: float = 20.0
    warmup_calls: int = 500

    def __post_init__(self) -> None:
        for name in ("workers", "sessions", "unary_calls", "stream_routes", "streams", "batch"):
            if getattr(self, name) < 1:
                raise SagaConfigError(f"BenchConfig.{name} must be >= 1")
        if not self.concurrency or min(self.concurrency) < 1:
            raise SagaConfigError("BenchConfig.concurrency must list levels >= 1")
        if not self.max_seconds > 0:
            raise SagaConfigError("BenchConfig.max_seconds must be > 0")


@dataclass(frozen=True)
class PhaseResult:
    """One phase's measurements (latency per call for unary, per batch for streamed)."""

    mode: str
    concurrency: int
    batch: int
    routes: int
    seconds: float
    routes_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    latency_of: str


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    phases: list[PhaseResult]
    server_pid: int
    client_pid: int
    tls: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "phases": [asdict(p) for p in self.phases],
                "server_pid": self.server_pid, "client_pid": self.client_pid, "tls": self.tls,
                "note": "client-side round trips on loopback; coordinator in its own process"}


def start_server_process(token: str, port: int = 0, timeout_s: float = 30.0,
                         metrics_port: int | None = None, *, tls_cert: str | None = None,
                         tls_key: str | None = None, tls_client_ca: str | None = None,
                         ) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m saga.coordinator`` (TLS with ``tls_cert`` and ``tls_key``) and return
    it with the address it listens on."""
    env = {**os.environ, TOKEN_ENV: token}
    extra = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
    for flag, value in (("--tls-cert", tls_cert), ("--tls-key", tls_key),
                        ("--tls-client-ca", tls_client_ca)):
        if value is not None:
            extra += [flag, value]
    proc = subprocess.Popen([sys.executable, "-m", "saga.coordinator", "--port", str(port),
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = proc.stdout.readline()
    if not line.startswith("listening on ") or time.monotonic() > deadline:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise SagaConfigError(f"the coordinator process did not start: {line.strip()} {err}")
    return proc, line.split("listening on ", 1)[1].strip()


def _summary(mode: str, conc: int, batch: int, routes: int, seconds: float,
             lat: list[float], latency_of: str) -> PhaseResult:
    a = np.asarray(lat) * 1e3
    return PhaseResult(mode, conc, batch, routes, seconds, routes / seconds if seconds else 0.0,
                       float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max()),
                       latency_of)


async def _workers(client: CoordinatorClient, n: int, stop: asyncio.Event) -> None:
    """Synthetic workers: register, then heartbeat every 0.2 s with a moderate load."""
    md = client.metadata
    for i in range(n):
        await client.stub.Register(pb.RegisterRequest(worker_id=f"w{i}", node=f"n{i // 2}",
                                                      slots=4096), metadata=md)

    async def beat() -> None:
        while not stop.is_set():
            for i in range(n):
                await client.stub.Heartbeat(pb.HeartbeatRequest(
                    worker_id=f"w{i}", load=0.2 + 0.1 * (i % 4), idle_for_s=-1), metadata=md)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    await beat()


async def _ping(client: CoordinatorClient, n: int, deadline_s: float) -> PhaseResult:
    """Authenticated no-op RPCs, one caller: the gRPC round-trip floor under Route."""
    lat: list[float] = []
    deadline = time.perf_counter() + deadline_s
    t0 = time.perf_counter()
    for _ in range(n):
        if time.perf_counter() > deadline:
            break
        t = time.perf_counter()
        await client.stub.Ping(pb.PingRequest(), metadata=client.metadata)
        lat.append(time.perf_counter() - t)
    return _summary("unary Ping (no-op)", 1, 1, len(lat), time.perf_counter() - t0, lat, "call")


def _unary_blocking(address: str, token: str, cfg: BenchConfig, n: int,
                    tls: ClientTLS | None = None) -> PhaseResult:
    """One caller with grpc's blocking stub (no asyncio on the client side), as a synchronous
    agent framework would call Route."""
    from saga.coordinator._proto import saga_coordinator_pb2_grpc as pb_grpc
    from saga.coordinator.server import bearer

    md = bearer(token)
    lat: list[float] = []
    deadline = time.perf_counter() + cfg.max_seconds
    with open_channel(address, tls, blocking=True) as channel:
        route = pb_grpc.CoordinatorStub(channel).Route  # type: ignore[no-untyped-call]
        t0 = time.perf_counter()
        for i in range(n):
            if time.perf_counter() > deadline:
                break
            req = pb.RouteRequest(session_id=f"s{i % cfg.sessions}", tenant_id="t",
                                  prompt_tokens=2048)
            t = time.perf_counter()
            route(req, metadata=md)
            lat.append(time.perf_counter() - t)
        seconds = time.perf_counter() - t0
    return _summary("unary, blocking client", 1, 1, len(lat), seconds, lat, "call")


async def _unary(client: CoordinatorClient, cfg: BenchConfig, conc: int, n: int,
                 progress: Progress | None) -> PhaseResult:
    stub, md = client.stub, client.metadata
    lat: list[float] = []
    deadline = time.perf_counter() + cfg.max_seconds
    per = n // conc

    async def caller(k: int) -> None:
        for i in range(per):
            if time.perf_counter() > deadline:
                return
            sid = f"s{(k * per + i) % cfg.sessions}"
            t = time.perf_counter()
            await stub.Route(pb.RouteRequest(session_id=sid, tenant_id=f"t{k % 3}",
                                             prompt_tokens=2048), metadata=md)
            lat.append(time.perf_counter() - t)
            if progress is not None and len(lat) % 1000 == 0:
                progress(f"unary x{conc}", len(lat), per * conc)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(conc)))
    return _summary("unary", conc, 1, len(lat), time.perf_counter() - t0, lat, "call")


async def _streamed(client: CoordinatorClient, cfg: BenchConfig, progress: Progress | None
                    ) -> PhaseResult:
    lat: list[float] = []
    routes = 0
    deadline = time.perf_counter() + cfg.max_seconds
    per_stream = cfg.stream_routes // (cfg.streams * cfg.batch)

    async def streamer(k: int) -> None:
        nonlocal routes
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> AsyncIterator[Any]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        call = client.route_stream(requests())
        replies = call.__aiter__()
        base = k * per_stream * cfg.batch
        for b in range(per_stream):
            if time.perf_counter() > deadline:
                break
            batch = pb.RouteBatch(requests=[
                pb.RouteRequest(session_id=f"s{(base + b * cfg.batch + i) % cfg.sessions}",
                                tenant_id="t", prompt_tokens=2048) for i in range(cfg.batch)])
            t = time.perf_counter()
            await queue.put(batch)
            reply = await replies.__anext__()
            lat.append(time.perf_counter() - t)
            routes += len(reply.replies)
            if progress is not None and b % 50 == 0:
                progress("streamed", routes, per_stream * cfg.batch * cfg.streams)
        await queue.put(None)
        with contextlib.suppress(StopAsyncIteration):
            await replies.__anext__()

    t0 = time.perf_counter()
    await asyncio.gather(*(streamer(k) for k in range(cfg.streams)))
    return _summary("streamed", cfg.streams, cfg.batch, routes, time.perf_counter() - t0, lat,
                    "batch")


def decision_phase(cfg: BenchConfig) -> PhaseResult:
    """The routing decision alone, in this process (no gRPC): how much of a Route's round
    trip is SAGA's own work (validation of nothing, ``CoordinatorCore.route`` and its table)."""
    core = CoordinatorCore()
    for i in range(cfg.workers):
        core.register(f"w{i}", f"n{i // 2}", 4096, 0.0)
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(cfg.unary_calls):
        if i % 1000 == 0:
            for k in range(cfg.workers):
                core.heartbeat(f"w{k}", 0.2 + 0.1 * (k % 4), -1.0, (), 0.0, i / 1000)
        t = time.perf_counter()
        core.route(f"s{i % cfg.sessions}", "t", i / 1000, prompt_tokens=2048)
        lat.append(time.perf_counter() - t)
    return _summary("in-process decision", 1, 1, len(lat), time.perf_counter() - t0, lat,
                    "decision")


async def _run(address: str, token: str, cfg: BenchConfig, progress: Progress | None,
               tls: ClientTLS | None = None) -> list[PhaseResult]:
    client = CoordinatorClient(address, token, retry_s=10.0, tls=tls)
    stop = asyncio.Event()
    workers = asyncio.create_task(_workers(client, cfg.workers, stop))
    try:
        while not (await client.stats()).workers or len(
                (await client.stats()).workers) < cfg.workers:
            await asyncio.sleep(0.01)
        await _unary(client, cfg, 1, cfg.warmup_calls, None)
        phases = [await _unary(client, cfg, c, cfg.unary_calls, progress)
                  for c in cfg.concurrency]
        phases.append(await asyncio.to_thread(_unary_blocking, address, token, cfg,
                                              cfg.unary_calls, tls))
        phases.append(await _ping(client, cfg.unary_calls, cfg.max_seconds))
        phases.append(await _streamed(client, cfg, progress))
        return phases
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await workers
        await client.close()


def run_bench(cfg: BenchConfig, progress: Progress | None = None, *,
              tls_cert: str | None = None, tls_key: str | None = None,
              tls_ca: str | None = None) -> BenchResult:
    """Start the coordinator process, run every phase from this process, stop it.

    With ``tls_cert`` and ``tls_key`` the coordinator serves TLS; the load generator trusts
    ``tls_ca`` (default: the certificate itself, as for a self-signed one)."""
    if (tls_cert is None) != (tls_key is None) or (tls_ca is not None and tls_cert is None):
        raise SagaConfigError("bench over TLS needs --tls-cert and --tls-key (and optionally "
                              "--tls-ca); give all of them or none")
    tls = None if tls_cert is None else ClientTLS.load(tls_ca or tls_cert)
    token = secrets.token_hex(16)
    proc, address = start_server_process(token, tls_cert=tls_cert, tls_key=tls_key)
    try:
        phases = asyncio.run(_run(address, token, cfg, progress, tls))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    phases.append(decision_phase(cfg))
    return BenchResult(cfg, phases, proc.pid, os.getpid(), tls=tls is not None)
