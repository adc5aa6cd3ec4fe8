"""`saga coordinator`: serve a coordinator, or benchmark one from a separate process."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID
from rich.table import Table

from saga.cli.errors import user_errors
from saga.cli.render import console, progress, write_json
from saga.coordinator.bench import BenchConfig, BenchResult, run_bench
from saga.coordinator.serve import TOKEN_ENV, serve
from saga.coordinator.server import ServerConfig
from saga.policy.errors import SagaConfigError

app = typer.Typer(help="SAGA's global coordinator (gRPC).", no_args_is_help=True)

P99_GOAL_MS = 1.0
ROUTES_GOAL = 10_000.0


@app.callback()
def _group() -> None:
    """SAGA's global coordinator (gRPC)."""


def bench_table(result: BenchResult) -> Table:
    """One row per phase: load, routes/s and latency percentiles."""
    table = Table(title="saga coordinator bench: loopback, coordinator in its own process; "
                  "latency of one call (unary), one batch (streamed) or one routing decision "
                  "without gRPC", title_justify="left")
    for col in ("mode", "callers", "batch", "routes", "routes/s", "P50 ms", "P99 ms"):
        table.add_column(col, justify="left" if col == "mode" else "right", no_wrap=True)
    for p in result.phases:
        table.add_row(p.mode, str(p.concurrency), str(p.batch), f"{p.routes:,}",
                      f"{p.routes_per_s:,.0f}", f"{p.p50_ms:.3f}", f"{p.p99_ms:.3f}")
    return table


def goal_lines(result: BenchResult) -> list[str]:
    """The issue's goals, met or not, from this run's numbers."""
    floor = next((p for p in result.phases if p.mode.startswith("unary Ping")), None)
    best = max(p.routes_per_s for p in result.phases if p.mode in ("unary", "streamed"))
    rate_ok = best >= ROUTES_GOAL
    lines = [
        f"P99 of Route, {p.mode} ({p.concurrency} caller): {p.p99_ms:.3f} ms "
        f"(goal <= {P99_GOAL_MS} ms): {'met' if p.p99_ms <= P99_GOAL_MS else 'NOT met'}"
        for p in result.phases if p.mode.startswith("unary") and "Ping" not in p.mode
        and p.concurrency == 1]
    return lines + [
        f"best sustained rate: {best:,.0f} routes/s (goal >= {ROUTES_GOAL:,.0f}): "
        f"{'met' if rate_ok else 'NOT met'}",
    ] + ([f"gRPC floor on this machine now (no-op Ping, 1 caller): P50 {floor.p50_ms:.3f} ms, "
          f"P99 {floor.p99_ms:.3f} ms"] if floor is not None else [])


@app.command()
def bench(
    workers: Annotated[int, typer.Option(help="Synthetic workers registered.")] = 4,
    sessions: Annotated[int, typer.Option(help="Distinct agent sessions routed.")] = 2000,
    calls: Annotated[int, typer.Option(help="Unary Route calls per load level.")] = 20_000,
    concurrency: Annotated[str, typer.Option(
        help="Comma-separated closed-loop caller counts for the unary phases.")] = "1,8",
    stream_routes: Annotated[int, typer.Option(help="Routes sent over RouteStream.")] = 200_000,
    streams: Annotated[int, typer.Option(help="Concurrent RouteStreams.")] = 2,
    batch: Annotated[int, typer.Option(help="Routes per RouteStream message.")] = 64,
    max_seconds: Annotated[float, typer.Option(help="Time cap per phase.")] = 20.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Route calls/s and P50/P99 latency, unary and streamed, from a separate process."""
    with user_errors():
        try:
            levels = tuple(int(x) for x in concurrency.split(",") if x.strip())
        except ValueError:
            raise SagaConfigError(
                f"--concurrency must be comma-separated integers, got {concurrency!r}") from None
        cfg = BenchConfig(workers=workers, sessions=sessions, unary_calls=calls,
                          concurrency=levels, stream_routes=stream_routes, streams=streams,
                          batch=batch, max_seconds=max_seconds)
        with progress() as bar:
            tasks: dict[str, TaskID] = {}

            def on_progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done)

            result = run_bench(cfg, on_progress)
    console.print(bench_table(result))
    load = os.getloadavg()
    console.print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} "
                  f"(other processes share these cores)")
    for line in goal_lines(result):
        console.print(line)
    if json_out is not None:
        write_json(json_out, {**result.to_json(), "loadavg": list(load)})
        console.print(f"wrote {json_out}")


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 50051,
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve Prometheus metrics over HTTP on this port.")] = None,
) -> None:
    """Run a coordinator until interrupted (token from $SAGA_COORDINATOR_TOKEN)."""
    with user_errors():
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            raise SagaConfigError(f"set ${TOKEN_ENV} to the shared secret of the cluster")
        asyncio.run(serve(ServerConfig(token=token, host=host, port=port), metrics_port))
