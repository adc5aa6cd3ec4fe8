"""`saga cluster up` / `saga cluster plan`: Ray workers behind SAGA's coordinator.

`up` starts (or joins) Ray, the coordinator and N worker actors, and runs an agent workload through
them. Workers host a real vLLM engine (SAGA's scheduler, the tiny random Llama, in-process on
CPU) or, with ``--engine sim``, a simulated engine for large counts. The vLLM adapter lives here,
in the meta-package, because saga-coordinator must not import saga-vllm.

`plan` prints how the reference deployment (``REFERENCE_CLUSTER``) maps onto Ray: one placement
group per TP instance, the coordinator, and the resources each asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, progress, write_json
from saga.coordinator.client import CoordinatorClient
from saga.coordinator.cluster import (
    RAY_LOCAL_ONLY_ENV,
    WorkloadConfig,
    WorkloadResult,
    is_loopback,
    make_tasks,
    ray_addresses,
    run_workload,
    spawn_workers,
    start_ray,
)
from saga.coordinator.engine import EngineCall, EngineReport, EngineResult, SimulatedEngine
from saga.coordinator.plan import LaunchPlan, launch_plan
from saga.coordinator.server import CoordinatorServer, ServerConfig
from saga.policy.errors import SagaConfigError
from saga.policy.spec import REFERENCE_CLUSTER

app = typer.Typer(help="Ray workers behind SAGA's global coordinator.", no_args_is_help=True)

ENGINES = ("vllm", "sim")
WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false"}


@app.callback()
def _group() -> None:
    """Ray workers behind SAGA's global coordinator."""


class VllmEngine:
    """A real vLLM engine (in-process, stepped by asyncio) behind the worker's engine protocol.

    Each coordinator session becomes an ``AsyncSession`` of ``saga.vllm``'s
    :class:`~saga.vllm.engine.AsyncSagaEngine`, so the request metadata SAGA's scheduler reads
    (session, tenant, AEG node, pending tool, tool latency, deadline) is filled by the same code
    as everywhere else. The tool clock runs between a call that ends in a tool and the session's
    next call on this worker.
    """

    def __init__(self, engine_kwargs: dict[str, Any]) -> None:
        from saga.vllm.engine import AsyncSagaEngine
        from saga.vllm.testing import scoped_env

        with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
            self.engine = AsyncSagaEngine.from_engine_args(engine_kwargs, in_process=True)
        self.slots = int(engine_kwargs.get("max_num_seqs", 16))
        self._sessions: dict[str, Any] = {}
        self._in_tool: set[str] = set()
        self._running = 0
        self._idle_since: float | None = time.monotonic()
        self._step_time = 0.0

    async def call(self, call: EngineCall) -> EngineResult:
        session = self._sessions.get(call.session_id)
        if session is None:
            session = self.engine.start_session(call.agent_type, call.tenant_id,
                                                call.deadline_s, session_id=call.session_id)
            self._sessions[call.session_id] = session
        if call.session_id in self._in_tool:
            self._in_tool.discard(call.session_id)
            session.tool_finished()
        self._running += 1
        self._idle_since = None
        try:
            res = await session.call(list(call.prompt_token_ids), call.max_tokens,
                                     pending_tool=call.pending_tool, final=call.final)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle_since = time.monotonic()
        self._step_time = 0.8 * self._step_time + 0.2 * res.latency_s
        if call.final:
            self._sessions.pop(call.session_id, None)
        elif call.pending_tool:
            session.tool_started(call.pending_tool)
            self._in_tool.add(call.session_id)
        return EngineResult(list(res.output_token_ids), res.num_cached_tokens,
                            res.prompt_tokens, res.latency_s)

    def report(self) -> EngineReport:
        """Load and KV pressure from vLLM's own scheduler (in this process); waiting sessions
        are not offered to the stealer, since a call queued inside vLLM cannot be handed back."""
        idle = -1.0 if self._idle_since is None else time.monotonic() - self._idle_since
        load, pressure = self._running / self.slots, 0.0
        sync = self.engine.sync_engine
        sched = sync.scheduler if sync is not None else None
        if sched is not None:
            running, waiting = sched.get_request_counts()
            load = (running + waiting) / self.slots
            pressure = min(max(float(sched.get_kv_cache_usage()), 0.0), 1.0)
        return EngineReport(load, idle, (), self._step_time, pressure)

    def cancel_waiting(self, session_id: str) -> bool:
        """vLLM's queue is the engine's own; a stolen session moves on its next call."""
        return False

    def set_order(self, order: Any) -> None:
        """SAGA's scheduler orders its queue itself (AFS inside the engine)."""

    def shutdown(self) -> None:
        self.engine.shutdown()


@dataclass(frozen=True)
class VllmEngineFactory:
    """Builds a :class:`VllmEngine` inside the worker actor (picklable: paths and numbers)."""

    model_dir: str
    kv_blocks: int = 256
    max_num_seqs: int = 8

    def __call__(self) -> VllmEngine:
        from saga.vllm.config import SagaSchedulerConfig
        from saga.vllm.testing import kv_bytes_for_blocks, tiny_engine_kwargs

        kwargs = tiny_engine_kwargs(
            self.model_dir, kv_bytes_for_blocks(self.kv_blocks), saga=SagaSchedulerConfig.all_on(),
            max_num_seqs=self.max_num_seqs)
        return VllmEngine(kwargs)


def _engine_factory(engine: str, model_dir: Path, kv_blocks: int) -> Any:
    if engine == "sim":
        return functools.partial(SimulatedEngine, slots=8, prefill_s=1e-5, decode_s=2e-3)
    try:
        from saga.vllm.testing import build_tiny_llama
    except ModuleNotFoundError as exc:
        raise SagaConfigError(
            "--engine vllm needs saga-vllm: pip install 'saga[vllm]' (or use --engine sim)"
        ) from exc
    return VllmEngineFactory(str(build_tiny_llama(model_dir)), kv_blocks)


@dataclass(frozen=True)
class UpResult:
    engine: str
    workers: int
    ray_address: str
    coordinator: str
    workload: WorkloadResult
    stats: dict[str, Any]
    killed: list[str]
    ray_node: str = ""


def _ray_node_line(addrs: dict[str, str], local: bool) -> str:
    """The Ray node address this run got, and whether Ray keeps to loopback."""
    node = addrs["driver node"]
    if all(is_loopback(a) for a in addrs.values()):
        return f"Ray node address: {node} (loopback only: every Ray process binds 127.0.0.1)"
    if local:
        return (f"Ray node address: {node} (not loopback: Ray was imported before start, or "
                f"{RAY_LOCAL_ONLY_ENV} is set to 1; Ray's ports are open on this interface)")
    return f"Ray node address: {node} (the joined cluster's)"


async def _up(engine: str, workers: int, address: str | None, cfg: WorkloadConfig,
              model_dir: Path, kv_blocks: int, on_call: Any, kill_after: int = 0,
              cpus_per_worker: float | None = None) -> UpResult:
    token = secrets.token_hex(16)
    ray = start_ray(address, num_cpus=2)
    ray_node = ray_addresses(ray)
    console.print(_ray_node_line(ray_node, address is None))
    server = CoordinatorServer(ServerConfig(token=token))
    coord_address = await server.start()
    actors: dict[str, Any] = {}
    killed: list[str] = []

    def on_each_call(res: WorkloadResult) -> None:
        on_call(res)
        if kill_after and res.calls >= kill_after and not killed and len(actors) > 1:
            victim = sorted(actors)[-1]
            killed.append(victim)
            ray.kill(actors[victim])
    try:
        factory = _engine_factory(engine, model_dir, kv_blocks)
        cpus = cpus_per_worker or (2.0 / workers if address is None else 1.0)
        actors = await spawn_workers(workers, coord_address, token, factory,
                                     cpus_per_worker=cpus, env=WORKER_ENV)
        async with CoordinatorClient(coord_address, token, retry_s=30.0) as client:
            result = await run_workload(client, actors, make_tasks(cfg), on_call=on_each_call)
            stats = await client.stats()
        stats_json = {"sessions_left": stats.sessions, "routes": stats.routes,
                      "moves": stats.moves, "steals": stats.steals,
                      "afs_epochs": stats.afs_epochs, "observations": stats.observations,
                      "workers": {w.worker_id: {"alive": w.alive, "node": w.node}
                                  for w in stats.workers}}
        ray_address = str(ray.get_runtime_context().gcs_address)
        return UpResult(engine, workers, ray_address, coord_address, result, stats_json, killed,
                        ray_node["driver node"])
    finally:
        for a in actors.values():
            with contextlib.suppress(Exception):  # the actor may be gone already
                await asyncio.wait_for(a.stop.remote(), 10)
            ray.kill(a)
        await server.stop()
        # Stops a local Ray; on a joined cluster it only disconnects this driver.
        ray.shutdown()


def _up_table(r: UpResult) -> Table:
    w = r.workload
    table = Table(title=f"saga cluster up: {r.workers} {r.engine} worker(s) "
                  f"({'simulated engines' if r.engine == 'sim' else 'real vLLM engines'})",
                  title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right", overflow="fold")
    rows = [
        ("tasks completed", f"{w.completed}"),
        ("LLM calls", f"{w.calls}"),
        ("prompt tokens served from cache", f"{w.cached_tokens:,} / {w.prompt_tokens:,} "
                                            f"({w.hit_ratio:.1%})"),
        ("routes: home / new / overloaded / re-homed",
         " / ".join(str(w.reasons.get(k, 0))
                    for k in ("HOME", "NEW_SESSION", "OVERLOADED", "REHOMED"))),
        ("calls per worker", ", ".join(f"{k}={v}" for k, v in sorted(w.per_worker.items()))),
        ("worker actors killed on purpose", ", ".join(r.killed) or "none"),
        ("re-routed after a worker died", f"{w.reroutes_dead}"),
        ("observations the coordinator accepted", f"{r.stats['observations']}"),
        ("AFS epochs", f"{r.stats['afs_epochs']}"),
        ("median task time", f"{statistics.median(w.task_seconds):.2f} s"),
        ("wall time", f"{w.wall_s:.2f} s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


@app.command()
def up(
    local: Annotated[bool, typer.Option("--local", help=(
        "Start a local Ray (2 CPUs) on loopback: every Ray process binds and talks over "
        f"127.0.0.1 ({RAY_LOCAL_ONLY_ENV}=0 unless set). The Ray node address is printed "
        "at start."))] = False,
    address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster (e.g. 10.0.0.1:6379) instead of starting one.")] = None,
    workers: Annotated[int, typer.Option(help="Worker actors (one engine each).")] = 2,
    engine: Annotated[str, typer.Option(help="vllm (real engine) or sim (simulated).")] = "vllm",
    tasks: Annotated[int, typer.Option(help="Agent tasks in the workload.")] = 6,
    steps: Annotated[int, typer.Option(help="LLM calls per task.")] = 4,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    kv_blocks: Annotated[int, typer.Option(help="KV pool per vLLM worker, in blocks.")] = 256,
    model_dir: Annotated[Path | None, typer.Option(
        help="Where to build/cache the tiny model (default: a temporary folder).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(
        help="Ray CPUs each worker actor asks for (default: 2/N locally, 1 on a cluster).")
    ] = None,
    kill_after: Annotated[int, typer.Option(
        help="Fault drill: kill one worker actor after this many calls (0: never).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Start Ray, the coordinator and N workers; run an agent workload through them."""
    with user_errors():
        if local == (address is not None):
            raise SagaConfigError("give exactly one of --local or --address")
        if engine not in ENGINES:
            raise SagaConfigError(f"--engine must be one of {ENGINES}, got {engine!r}")
        if workers < 1:
            raise SagaConfigError(f"--workers must be >= 1, got {workers}")
        if cpus_per_worker is not None and not cpus_per_worker > 0:
            raise SagaConfigError(f"--cpus-per-worker must be > 0, got {cpus_per_worker}")
        cfg = WorkloadConfig(tasks=tasks, steps=steps, seed=seed)
        with tempfile.TemporaryDirectory(prefix="saga-cluster-") as tmp:
            mdir = model_dir or Path(tmp) / "tiny-llama"
            with progress() as bar:
                job = bar.add_task(f"agent workload on {workers} {engine} worker(s)",
                                   total=tasks * steps)

                def on_call(res: WorkloadResult) -> None:
                    bar.update(job, completed=res.calls)

                result = asyncio.run(_up(engine, workers, address, cfg, mdir, kv_blocks,
                                         on_call, kill_after, cpus_per_worker))
    print_table(_up_table(result))
    ok = result.workload.completed == tasks
    console.print(f"{result.workload.completed}/{tasks} tasks completed through the coordinator"
                  + ("" if ok else " — INCOMPLETE"))
    if json_out is not None:
        w = result.workload
        write_json(json_out, {
            "engine": result.engine, "workers": result.workers, "tasks": tasks,
            "completed": w.completed, "calls": w.calls, "prompt_tokens": w.prompt_tokens,
            "cached_tokens": w.cached_tokens, "reasons": w.reasons, "per_worker": w.per_worker,
            "reroutes_dead": w.reroutes_dead, "killed": result.killed, "wall_s": w.wall_s,
            "ray_node_address": result.ray_node, "coordinator": result.stats})
        console.print(f"wrote {json_out}")
    if not ok:
        raise typer.Exit(code=1)


def plan_table(p: LaunchPlan) -> Table:
    table = Table(title=f"launch plan: {p.summary}", title_justify="left")
    for col in ("actor", "kind", "node", "GPUs", "CPUs", "placement group", "strategy"):
        table.add_column(col)
    for a in p.actors:
        table.add_row(a.name, a.kind, a.node, str(a.gpus), f"{a.cpus:g}", a.placement_group,
                      a.strategy)
    return table


@app.command()
def plan(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the plan here.")] = None,
) -> None:
    """Print how the 8-node reference deployment maps onto Ray (no cluster is started)."""
    with user_errors():
        p = launch_plan(REFERENCE_CLUSTER)
    print_table(plan_table(p))
    for line in p.notes:
        console.print(line)
    if json_out is not None:
        write_json(json_out, p.to_json())
        console.print(f"wrote {json_out}")
