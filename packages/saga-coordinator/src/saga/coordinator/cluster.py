"""A cluster of Ray worker actors behind one coordinator, and an agent workload run through it.

:func:`start_ray` joins a Ray cluster (``address``) or starts a local one on loopback (every
Ray process binds and talks over 127.0.0.1; :func:`ray_addresses` lists what Ray uses);
:func:`spawn_workers` starts one :class:`~saga.coordinator.worker.WorkerActor` per serving
instance. The coordinator runs in the driver's event loop
(:class:`~saga.coordinator.server.CoordinatorServer`), so a test can restart it.
:func:`run_workload` drives agent tasks: each LLM call is routed by the coordinator, run on the
chosen actor, and followed by a (simulated) tool call. A call whose actor died is routed again
with ``avoid_worker``; a call stolen while waiting is routed again; so every task completes while
one worker is alive.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from saga.coordinator.client import CoordinatorClient
from saga.coordinator.engine import CallMoved, Engine, EngineCall
from saga.coordinator.tls import ClientTLS
from saga.coordinator.worker import WorkerActor
from saga.policy.errors import SagaConfigError, SagaError

__all__ = [
    "AgentTask",
    "WorkloadConfig",
    "WorkloadResult",
    "make_tasks",
    "ray_addresses",
    "run_workload",
    "spawn_workers",
    "start_ray",
]

TOOLS = ("search", "run_tests", "read_file", "edit_file")
RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for single-machine mode (its default on macOS and Windows). At ``0`` Ray takes
127.0.0.1 as the node address and binds every process there. Without it Ray replaces a loopback
node address (``ray.init(_node_ip_address=...)``, ``ray start --node-ip-address``) by the
machine's interface address. Read when ``ray`` is first imported, and by each Ray process."""


def start_ray(address: str | None = None, num_cpus: float = 2) -> Any:
    """``ray.init`` for SAGA: join ``address``, or start a local Ray with ``num_cpus``.

    A local Ray runs on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` unless set): its
    processes bind and talk over 127.0.0.1 only, so a Ray with authentication off is not
    reachable from the network. If ``ray`` was imported before this call without that setting,
    Ray uses the interface address instead; :func:`ray_addresses` says which.
    Ray's uv hook (re-running workers under ``uv run``) is switched off: workers use this
    interpreter, which already has every package. A local Ray needs no token prompt.
    """
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no fork-handler notes when Ray forks
    if address is None:
        os.environ.setdefault(RAY_LOCAL_ONLY_ENV, "0")
    import ray

    if ray.is_initialized():
        return ray
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # address="local": always a new instance, never a stale one found on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SagaConfigError(
                f"cannot join the Ray cluster at --address {address}: {exc}; start it with "
                "`ray start --head` or use --local") from exc
    return ray


def ray_addresses(ray: Any) -> dict[str, str]:
    """Every IP address the Ray session of this driver uses: each node's (as the GCS records
    it), the GCS's, and the node this driver runs on."""
    out: dict[str, str] = {}
    for i, node in enumerate(ray.nodes()):
        out[f"nodes[{i}].NodeManagerAddress"] = str(node["NodeManagerAddress"])
    gcs = str(ray.get_runtime_context().gcs_address)
    out["gcs_address"] = gcs.rsplit(":", 1)[0].strip("[]")
    out["driver node"] = str(ray.util.get_node_ip_address())
    return out


def is_loopback(ip: str) -> bool:
    """Whether ``ip`` is a loopback address (127.0.0.0/8 or ::1)."""
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


async def spawn_workers(n: int, address: str, token: str,
                        engine_factory: Callable[[], Engine], *,
                        cpus_per_worker: float = 0.25, env: Mapping[str, str] | None = None,
                        prefix: str = "w", start_timeout_s: float = 300.0,
                        tls: ClientTLS | None = None) -> dict[str, Any]:
    """Start ``n`` worker actors (ids ``w0``...) that register with the coordinator at
    ``address`` (over TLS with ``tls``); returns ``{worker_id: actor handle}`` once every one
    has registered."""
    import ray

    if n < 1:
        raise SagaConfigError(f"need at least one worker, got {n}")
    actor_cls = ray.remote(WorkerActor)
    opts: dict[str, Any] = {"num_cpus": cpus_per_worker, "max_concurrency": 1000}
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    actors = {f"{prefix}{i}": actor_cls.options(**opts).remote(
        f"{prefix}{i}", address, token, engine_factory, f"node-{i}", tls) for i in range(n)}
    # Awaited, not ray.get: the coordinator may run in this very event loop.
    await asyncio.wait_for(asyncio.gather(*(a.start.remote() for a in actors.values())),
                           start_timeout_s)
    return actors


@dataclass(frozen=True)
class AgentTask:
    """One agent task: its LLM calls (new prompt tokens, output tokens) and tools between."""

    session_id: str
    tenant_id: str
    system_prompt: tuple[int, ...]
    steps: tuple[tuple[int, int], ...]
    tools: tuple[str, ...]
    tool_s: tuple[float, ...]
    deadline_s: float

    @property
    def work_tokens(self) -> float:
        """Estimated total work (prompt growth plus outputs), what AFS tracks."""
        return float(len(self.system_prompt) + sum(a + b for a, b in self.steps))


@dataclass(frozen=True)
class WorkloadConfig:
    """A seeded agent workload: ``tasks`` sessions of ``steps`` calls each."""

    tasks: int = 8
    steps: int = 4
    tenants: int = 2
    system_tokens: int = 96
    step_tokens: tuple[int, int] = (16, 48)
    output_tokens: int = 8
    tool_s: tuple[float, float] = (0.01, 0.05)
    vocab: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.steps < 1 or self.tenants < 1 or self.output_tokens < 1:
            raise SagaConfigError("WorkloadConfig: tasks, steps, tenants, output_tokens >= 1")


def make_tasks(cfg: WorkloadConfig) -> list[AgentTask]:
    """Deterministic tasks from ``cfg.seed``; each tenant shares its system prompt."""
    rng = random.Random(cfg.seed)
    systems = [tuple(rng.randrange(cfg.vocab) for _ in range(cfg.system_tokens))
               for _ in range(cfg.tenants)]
    tasks = []
    for i in range(cfg.tasks):
        t = i % cfg.tenants
        steps = tuple((rng.randint(*cfg.step_tokens), cfg.output_tokens)
                      for _ in range(cfg.steps))
        tools = tuple(rng.choice(TOOLS) for _ in range(cfg.steps))
        tool_s = tuple(rng.uniform(*cfg.tool_s) for _ in range(cfg.steps))
        tasks.append(AgentTask(f"task-{cfg.seed}-{i}", f"tenant-{t}", systems[t], steps, tools,
                               tool_s, deadline_s=60.0 + 30.0 * (i % 3)))
    return tasks


@dataclass
class WorkloadResult:
    """What happened to every task."""

    completed: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    reroutes_dead: int = 0
    reroutes_stolen: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    per_worker: dict[str, int] = field(default_factory=dict)
    task_seconds: list[float] = field(default_factory=list)
    task_workers: dict[str, set[str]] = field(default_factory=dict)
    task_time: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def hit_ratio(self) -> float:
        """Share of prompt tokens served from a prefix cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class WorkloadError(SagaError, RuntimeError):
    """A task could not complete (no live worker left, or retries exhausted)."""


@dataclass
class _Driver:
    """One workload run: routes each call through the coordinator to a worker actor, retrying
    on a dead worker (avoiding it) or a stolen call, and tallies what happened."""

    client: CoordinatorClient
    actors: Mapping[str, Any]
    agent_type: str
    max_attempts: int
    on_call: Callable[[WorkloadResult], None] | None
    result: WorkloadResult = field(default_factory=WorkloadResult)

    async def one_call(self, task: AgentTask, call: EngineCall) -> Any:
        """Route and run one call; returns the engine's result."""
        import ray.exceptions

        from saga.coordinator._proto import saga_coordinator_pb2 as pb

        result, avoid = self.result, ""
        for _ in range(self.max_attempts):
            reply = await self.client.route(
                task.session_id, task.tenant_id, prompt_tokens=len(call.prompt_token_ids),
                deadline_s=task.deadline_s, work_tokens=task.work_tokens, avoid_worker=avoid)
            name = pb.RouteReason.Name(reply.reason)
            result.reasons[name] = result.reasons.get(name, 0) + 1
            actor = self.actors.get(reply.worker_id)
            if actor is None:
                raise WorkloadError(f"coordinator chose {reply.worker_id!r}, which this driver "
                                    f"did not start (known: {sorted(self.actors)})")
            try:
                res = await actor.call.remote(call)
            except ray.exceptions.RayActorError:
                result.reroutes_dead += 1
                avoid = reply.worker_id
                continue
            except CallMoved:
                result.reroutes_stolen += 1
                avoid = ""
                continue
            result.per_worker[reply.worker_id] = result.per_worker.get(reply.worker_id, 0) + 1
            result.task_workers.setdefault(task.session_id, set()).add(reply.worker_id)
            return res
        raise WorkloadError(f"{task.session_id}: no worker served the call after "
                            f"{self.max_attempts} attempts")

    async def run_task(self, task: AgentTask) -> None:
        """The task's calls in order, its tools as sleeps, then its session's end."""
        result, t0 = self.result, time.monotonic()
        context = list(task.system_prompt)
        rng = random.Random(task.session_id)
        tool_latency: float | None = None
        for k, (new_tokens, out_tokens) in enumerate(task.steps):
            context.extend(rng.randrange(1024) for _ in range(new_tokens))
            final = k == len(task.steps) - 1
            call = EngineCall(task.session_id, task.tenant_id, self.agent_type, tuple(context),
                              out_tokens, pending_tool=None if final else task.tools[k],
                              tool_latency_s=tool_latency, final=final,
                              deadline_s=task.deadline_s)
            res = await self.one_call(task, call)
            result.calls += 1
            result.prompt_tokens += res.prompt_tokens
            result.cached_tokens += res.num_cached_tokens
            if self.on_call is not None:
                self.on_call(result)
            context.extend(res.output_token_ids)
            if not final:
                await asyncio.sleep(task.tool_s[k])   # the tool runs
                tool_latency = task.tool_s[k]
        await self.end(task)
        result.completed += 1
        result.task_seconds.append(time.monotonic() - t0)
        result.task_time[task.session_id] = time.monotonic() - t0

    async def end(self, task: AgentTask) -> None:
        """End the task's session at the coordinator."""
        try:
            await self.client.end_session(task.session_id)
        except grpc.aio.AioRpcError as exc:
            # A restarted coordinator may not know a session that finished before its
            # worker re-registered: there is nothing left to drop.
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise


async def run_workload(client: CoordinatorClient, actors: Mapping[str, Any],
                       tasks: list[AgentTask], *, agent_type: str = "agent",
                       max_attempts: int = 20,
                       on_call: Callable[[WorkloadResult], None] | None = None,
                       ) -> WorkloadResult:
    """Run every task concurrently through the coordinator and the worker actors."""
    driver = _Driver(client, actors, agent_type, max_attempts, on_call)
    t_start = time.monotonic()
    await asyncio.gather(*(driver.run_task(t) for t in tasks))
    driver.result.wall_s = time.monotonic() - t_start
    return driver.result
