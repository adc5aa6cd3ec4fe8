"""A bounded soak: many agent sessions through a real coordinator, then a check that nothing stayed.

A coordinator that runs for weeks must forget every task it served. :func:`run_soak` starts a
:class:`~saga.coordinator.server.CoordinatorServer` on 127.0.0.1 and ``workers`` worker hosts
(each a :class:`~saga.coordinator.worker.WorkerHost` with its coordinator client, observation
stream and heartbeats) in this event loop, with :class:`SimulatedEngine`\\ s by default, and
drives ``sessions`` agent tasks: a few calls each, a random tool between two calls, the last
call ``final``. Every call is routed by the coordinator and run on the worker it chose.

It then waits for the final calls' grace period and compares every per-session structure — the
session table, finals and ended-id memory, the router's own tables, AFS tasks, worker queues
and claims, observation queues, engine caches — with its size before the run, and the process's
resident memory after a warm-up with its size at the end. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sized
from dataclasses import asdict, dataclass, field
from typing import Any

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.client import CoordinatorClient
from saga.coordinator.core import DEFAULT_PRESET
from saga.coordinator.engine import CallMoved, Engine, EngineCall, SimulatedEngine
from saga.coordinator.server import CoordinatorServer, ServerConfig
from saga.coordinator.worker import WorkerHost
from saga.policy.errors import SagaConfigError, SagaError
from saga.policy.presets import get_preset

__all__ = ["SoakConfig", "SoakError", "SoakReport", "coordinator_tables", "rss_kib", "run_soak"]

BOUNDED_CACHES = frozenset({"engine_lru_cache"})
"""Tables that hold sessions by design, bounded by their own LRU capacity: the simulated
engine's prefix cache keeps a session's KV where it last ran, as vLLM's does."""
TOOLS = ("search", "run_tests", "read_file", "edit_file", "browse")
_TOKEN = "soak-local-secret"
EngineFactory = Callable[[int], Engine]
TableProbe = Callable[[], Mapping[str, int]]


class SoakError(SagaError, RuntimeError):
    """The soak did not finish within its time limit (the message says how far it got)."""


@dataclass(frozen=True)
class SoakConfig:
    """What to run. ``concurrency`` sessions run at once; the first ``warmup`` sessions bring the
    process to its working size before the memory baseline is taken. ``preset``: the policy
    preset the coordinator runs."""

    sessions: int = 10_000
    workers: int = 4
    concurrency: int = 400
    calls: tuple[int, int] = (2, 4)
    prompt_tokens: int = 24
    output_tokens: int = 2
    tool_s: tuple[float, float] = (0.0, 0.002)
    warmup: int = 800
    slots: int = 64
    final_grace_s: float = 0.2
    session_idle_s: float = 600.0
    max_seconds: float = 300.0
    seed: int = 0
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        get_preset(self.preset)
        for name in ("sessions", "workers", "concurrency", "prompt_tokens", "output_tokens",
                     "slots"):
            if getattr(self, name) < 1:
                raise SagaConfigError(f"soak: {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise SagaConfigError(f"soak: warmup must be >= 0, got {self.warmup}")
        if not 1 <= self.calls[0] <= self.calls[1]:
            raise SagaConfigError(f"soak: calls must be (low, high) with 1 <= low <= high, "
                                  f"got {self.calls}")
        if not 0 <= self.tool_s[0] <= self.tool_s[1]:
            raise SagaConfigError(f"soak: tool_s must be (low, high) seconds, got {self.tool_s}")
        for name in ("final_grace_s", "session_idle_s", "max_seconds"):
            if not getattr(self, name) > 0:
                raise SagaConfigError(f"soak: {name} must be > 0, got {getattr(self, name)}")


@dataclass
class SoakReport:
    """What ran and what was left. ``leaks`` names every table larger after than before."""

    config: SoakConfig
    sessions: int = 0
    calls: int = 0
    reroutes: int = 0
    moves: int = 0
    duration_s: float = 0.0
    drain_s: float = 0.0
    tables_before: dict[str, int] = field(default_factory=dict)
    tables_after: dict[str, int] = field(default_factory=dict)
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    sessions_ended: int = 0
    sessions_expired: int = 0
    observations_rejected: int = 0
    observations_dropped: int = 0

    @property
    def rss_growth_kib(self) -> int:
        """Resident memory gained between the end of the warm-up and the end of the run."""
        return self.rss_after_kib - self.rss_before_kib

    @property
    def leaks(self) -> list[str]:
        """Tables that did not return to their size before the run (caches bounded by their
        own eviction, like an engine's prefix cache, are reported but not counted)."""
        return sorted(k for k, v in self.tables_after.items()
                      if v > self.tables_before.get(k, 0) and k not in BOUNDED_CACHES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out.update(rss_growth_kib=self.rss_growth_kib, leaks=self.leaks)
        return out


def rss_kib() -> int:
    """This process's resident set size now, in KiB (``/proc/self/statm``; on systems without
    it, the peak from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def coordinator_tables(server: CoordinatorServer, hosts: Mapping[str, WorkerHost]
                       ) -> dict[str, int]:
    """Sizes of every per-session structure of the coordinator and of the worker hosts."""
    core = server.core
    out = {
        "sessions": len(core.sessions),
        "finals": len(core._finals),
        "ended_ids": len(core._ended),
        # What a router keeps per session, where it says (AffinityRouter: its homes; its log
        # of moves is bounded, ``saga.policy.routing.MOVES_KEPT``).
        "router_homes": len(core.router) if isinstance(core.router, Sized) else 0,
        "afs_tasks": len(core.afs.tasks()) if core.afs is not None else 0,
        "steal_orders": sum(len(w.steals_out) for w in core.workers.values()),
        "worker_waiting": sum(len(w.waiting) for w in core.workers.values()),
        "host_sessions": 0, "host_pending_tools": 0, "obs_queued": 0, "obs_rejected": 0,
        "engine_lru_cache": 0, "engine_waiting": 0,
    }
    for h in hosts.values():
        out["host_sessions"] += len(h.sessions)
        out["host_pending_tools"] += len(h._pending_tool)
        out["obs_queued"] += h.client.unacked
        out["obs_rejected"] += len(h.client.rejected)
        if isinstance(h.engine, SimulatedEngine):
            out["engine_lru_cache"] += len(h.engine._cache)
            out["engine_waiting"] += len(h.engine._waiting)
    return out


class _BatchRouter:
    """Routes the calls of concurrent sessions over one RouteStream, as many per message as
    are waiting (what a busy front end does: one gRPC message for a burst of calls)."""

    def __init__(self, client: CoordinatorClient, max_batch: int = 256) -> None:
        self.client = client
        self.max_batch = max_batch
        self._waiting: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def route(self, request: Any) -> Any:
        """The RouteReply of one RouteRequest."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._pump())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._waiting.put((request, fut))
        return await fut

    async def _pump(self) -> None:
        outbox: asyncio.Queue[Any] = asyncio.Queue()

        async def batches() -> AsyncIterator[Any]:
            while True:
                yield await outbox.get()

        replies = self.client.route_stream(batches()).__aiter__()
        while True:
            first = await self._waiting.get()
            items = [first]
            while not self._waiting.empty() and len(items) < self.max_batch:
                items.append(self._waiting.get_nowait())
            await outbox.put(pb.RouteBatch(requests=[r for r, _ in items]))
            try:
                answer = await replies.__anext__()
            except Exception as exc:  # the stream broke: fail these calls, reopen on demand
                for _, fut in items:
                    fut.set_exception(exc)
                return
            for (_, fut), reply in zip(items, answer.replies, strict=True):
                fut.set_result(reply)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class _Driver:
    """Runs sessions through the coordinator and the hosts; counts what it did."""

    def __init__(self, cfg: SoakConfig, router: _BatchRouter,
                 hosts: Mapping[str, WorkerHost]) -> None:
        self.cfg = cfg
        self.router = router
        self.hosts = hosts
        self.calls = 0
        self.reroutes = 0
        self.done = 0

    async def call(self, call: EngineCall, deadline_s: float, work: float) -> list[int]:
        """Route one call and run it where the coordinator said; a stolen call goes again."""
        for _ in range(50):
            reply = await self.router.route(pb.RouteRequest(
                session_id=call.session_id, tenant_id=call.tenant_id,
                prompt_tokens=len(call.prompt_token_ids), deadline_s=deadline_s,
                work_tokens=work))
            try:
                res = await self.hosts[reply.worker_id].call(call)
            except CallMoved:
                self.reroutes += 1
                continue
            self.calls += 1
            return res.output_token_ids
        raise SoakError(f"{call.session_id}: no worker kept the call after 50 routes")

    async def session(self, i: int) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1_000_003 + i)
        sid, tenant = f"soak-{cfg.seed}-{i}", f"tenant-{i % 3}"
        n = rng.randint(*cfg.calls)
        context = [rng.randrange(1, 1000) for _ in range(cfg.prompt_tokens)]
        work = float(n * (cfg.prompt_tokens + cfg.output_tokens) * 2)
        latency: float | None = None
        for k in range(n):
            final = k == n - 1
            tool = None if final else rng.choice(TOOLS)
            call = EngineCall(sid, tenant, "soak-agent", tuple(context), cfg.output_tokens,
                              pending_tool=tool, tool_latency_s=latency, final=final,
                              deadline_s=60.0)
            context += await self.call(call, 60.0, work)
            if tool is not None:
                latency = rng.uniform(*cfg.tool_s)
                await asyncio.sleep(latency)   # the tool runs
                context += [rng.randrange(1, 1000) for _ in range(4)]
        self.done += 1

    async def run(self, first: int, count: int) -> None:
        """Sessions ``first`` .. ``first + count - 1`` on ``concurrency`` lanes (one coroutine
        per lane, not per session: the driver's own memory stays flat however long it runs)."""
        todo = iter(range(first, first + count))

        async def lane() -> None:
            for i in todo:
                await self.session(i)

        await asyncio.gather(*(lane() for _ in range(min(self.cfg.concurrency, count))))


async def _drain(server: CoordinatorServer, hosts: Mapping[str, WorkerHost],
                 cfg: SoakConfig, limit_s: float) -> float:
    """Wait until the observations are acknowledged and the coordinator has dropped every
    ended session (its grace period and ended-id memory passed); returns the seconds waited."""
    t0 = time.monotonic()
    core = server.core
    while time.monotonic() - t0 < limit_s:
        if (not core.sessions and not core._ended and not core._finals
                and all(h.client.unacked == 0 for h in hosts.values())):
            break
        await asyncio.sleep(min(cfg.final_grace_s / 4, 0.05))
    return time.monotonic() - t0


async def _soak(cfg: SoakConfig, engine_factory: EngineFactory,
                probe: TableProbe | None) -> SoakReport:
    report = SoakReport(cfg)
    server = CoordinatorServer(ServerConfig(
        token=_TOKEN, epoch_s=0.05, worker_timeout_s=cfg.max_seconds,
        final_grace_s=cfg.final_grace_s,
        session_idle_s=cfg.session_idle_s, preset=cfg.preset))
    address = await server.start()
    hosts = {f"w{i}": WorkerHost(f"w{i}", engine_factory(i), address, _TOKEN,
                                 node=f"node-{i}") for i in range(cfg.workers)}
    client = CoordinatorClient(address, _TOKEN, retry_s=5.0)
    router = _BatchRouter(client)
    try:
        await asyncio.gather(*(h.start(10.0) for h in hosts.values()))
        report.tables_before = {**coordinator_tables(server, hosts), **_probe(probe)}
        driver = _Driver(cfg, router, hosts)
        t0 = time.monotonic()
        warm = min(cfg.warmup, cfg.sessions)
        await driver.run(0, warm)
        await _drain(server, hosts, cfg, 10.0)
        gc.collect()
        report.rss_before_kib = rss_kib()
        await driver.run(warm, cfg.sessions - warm)
        report.duration_s = time.monotonic() - t0
        report.drain_s = await _drain(server, hosts, cfg, 10.0 + 4 * cfg.final_grace_s)
        gc.collect()
        report.rss_after_kib = rss_kib()
        report.tables_after = {**coordinator_tables(server, hosts), **_probe(probe)}
        report.sessions, report.calls, report.reroutes = driver.done, driver.calls, \
            driver.reroutes
        report.moves = server.core.moves
        report.sessions_ended = server.core.sessions_ended
        report.sessions_expired = server.core.sessions_expired
        report.observations_rejected = sum(len(h.client.rejected) for h in hosts.values())
        report.observations_dropped = sum(h.client.dropped for h in hosts.values())
        return report
    finally:
        await router.close()
        await client.close()
        for h in hosts.values():
            await h.stop()
        await server.stop()


def _probe(probe: TableProbe | None) -> dict[str, int]:
    return {} if probe is None else {f"engine.{k}": int(v) for k, v in probe().items()}


def _simulated(slots: int) -> EngineFactory:
    def make(i: int) -> Engine:
        return SimulatedEngine(slots, cache_tokens=1 << 20, prefill_s=0.0, decode_s=0.0)
    return make


async def run_soak_async(cfg: SoakConfig, engine_factory: EngineFactory | None = None,
                         probe: TableProbe | None = None) -> SoakReport:
    """:func:`run_soak` inside a running event loop (an in-process vLLM engine's pump shares
    it). ``probe`` adds an engine's own table sizes (``SagaScheduler.session_tables``)."""
    try:
        return await asyncio.wait_for(
            _soak(cfg, engine_factory or _simulated(cfg.slots), probe), cfg.max_seconds)
    except TimeoutError:
        raise SoakError(f"the soak of {cfg.sessions} sessions did not finish within "
                        f"{cfg.max_seconds:.0f} s; raise --max-seconds or lower --sessions"
                        ) from None


def run_soak(cfg: SoakConfig, engine_factory: EngineFactory | None = None,
             probe: TableProbe | None = None) -> SoakReport:
    """Run the soak (see the module docstring); ``engine_factory(i)`` builds worker ``i``'s
    engine (default: a :class:`SimulatedEngine` with ``cfg.slots`` slots and instant calls)."""
    return asyncio.run(run_soak_async(cfg, engine_factory, probe))
