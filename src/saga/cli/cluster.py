"""`saga cluster up` / `saga cluster plan`: Ray workers behind SAGA's coordinator.

`up` starts (or joins) Ray, the coordinator and N worker actors, and runs an agent workload through
them. Workers host a real vLLM engine (SAGA's scheduler in-process on CPU, serving ``--model``:
the tiny or small random Llama or a local Hugging Face directory; ``saga.vllm.worker``) or, with
``--engine sim``, a simulated engine for large counts. This module only parses options and wires
the coordinator (saga-coordinator) to the engines (saga-vllm), which never import each other.

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
from saga.coordinator.core import DEFAULT_PRESET
from saga.coordinator.engine import SimulatedEngine
from saga.coordinator.plan import LaunchPlan, launch_plan
from saga.coordinator.server import CoordinatorServer, ServerConfig
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS, get_preset
from saga.policy.spec import REFERENCE_CLUSTER

app = typer.Typer(help="Ray workers behind SAGA's global coordinator.", no_args_is_help=True)

VLLM_ENGINE, SIM_ENGINE = "vllm", "sim"
ENGINES = (VLLM_ENGINE, SIM_ENGINE)
WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false"}


@app.callback()
def _group() -> None:
    """Ray workers behind SAGA's global coordinator."""


def _engine_factory(engine: str, model: str, model_dir: Path, kv_blocks: int,
                    preset: str) -> Any:
    """A picklable engine factory for the worker actors; checks (and builds) the model first."""
    if engine == SIM_ENGINE:
        return functools.partial(SimulatedEngine, slots=8, prefill_s=1e-5, decode_s=2e-3)
    try:
        from saga.vllm.worker import vllm_engine_factory
    except ModuleNotFoundError as exc:
        raise SagaConfigError(
            "--engine vllm needs saga-vllm: pip install 'saga[vllm]' (or use --engine sim)"
        ) from exc
    return vllm_engine_factory(model, model_dir, kv_blocks, preset=preset)


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
              factory: Any, on_call: Any, kill_after: int = 0,
              cpus_per_worker: float | None = None, preset: str = DEFAULT_PRESET) -> UpResult:
    token = secrets.token_hex(16)
    ray = start_ray(address, num_cpus=2)
    ray_node = ray_addresses(ray)
    console.print(_ray_node_line(ray_node, address is None))
    server = CoordinatorServer(ServerConfig(token=token, preset=preset))
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
        cpus = cpus_per_worker or (2.0 / workers if address is None else 1.0)
        actors = await spawn_workers(workers, coord_address, token, factory,
                                     cpus_per_worker=cpus, env=WORKER_ENV)
        async with CoordinatorClient(coord_address, token, retry_s=30.0) as client:
            result = await run_workload(client, actors, make_tasks(cfg), on_call=on_each_call)
            stats = await client.stats()
        stats_json = {"preset": stats.preset, "sessions_left": stats.sessions,
                      "routes": stats.routes, "moves": stats.moves, "steals": stats.steals,
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
    model: Annotated[str, typer.Option(
        help="What the vLLM workers serve: tiny or small (a random Llama, built on the driver) "
             "or PATH, a local Hugging Face model directory (config.json and weights; at the "
             "same path on every node).", metavar="tiny|small|PATH")] = "tiny",
    model_dir: Annotated[Path | None, typer.Option(
        help="Where to build/cache a random model (default: a temporary folder).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(
        help="Ray CPUs each worker actor asks for (default: 2/N locally, 1 on a cluster).")
    ] = None,
    kill_after: Annotated[int, typer.Option(
        help="Fault drill: kill one worker actor after this many calls (0: never).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    preset: Annotated[str, typer.Option(help=(
        "The preset the coordinator and every vLLM worker's scheduler run: "
        + ", ".join(sorted(PRESETS)) + "."))] = DEFAULT_PRESET,
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
            get_preset(preset)  # an unknown name fails before Ray starts
            factory = _engine_factory(engine, model, model_dir or Path(tmp) / "model",
                                      kv_blocks, preset)
            with progress() as bar:
                job = bar.add_task(f"agent workload on {workers} {engine} worker(s)",
                                   total=tasks * steps)

                def on_call(res: WorkloadResult) -> None:
                    bar.update(job, completed=res.calls)

                result = asyncio.run(_up(engine, workers, address, cfg, factory, on_call,
                                         kill_after, cpus_per_worker, preset))
    print_table(_up_table(result))
    ok = result.workload.completed == tasks
    console.print(f"{result.workload.completed}/{tasks} tasks completed through the coordinator"
                  + ("" if ok else " — INCOMPLETE"))
    if json_out is not None:
        w = result.workload
        write_json(json_out, {
            "engine": result.engine, "model": model if engine == VLLM_ENGINE else None,
            "workers": result.workers, "tasks": tasks,
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
