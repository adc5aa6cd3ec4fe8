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
from saga.cli.render import console, print_table, progress, write_json
from saga.coordinator.bench import BenchConfig, BenchResult, run_bench
from saga.coordinator.core import DEFAULT_PRESET, FINAL_GRACE_S, SESSION_IDLE_S
from saga.coordinator.serve import TOKEN_ENV, serve
from saga.coordinator.server import ServerConfig
from saga.coordinator.soak import SoakConfig, SoakReport, run_soak
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS, Preset, get_preset

app = typer.Typer(help="SAGA's global coordinator (gRPC).", no_args_is_help=True)

P99_GOAL_MS = 1.0
PRESET_HELP = ("Policy preset whose router, stealing, TTL pins and fairness the coordinator runs: "
               f"{', '.join(sorted(PRESETS))}.")
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
        # The mode is text: it wraps so that the numbers fit 80 columns whole.
        table.add_column(col, justify="left" if col == "mode" else "right",
                         no_wrap=col != "mode", overflow="fold" if col == "mode" else "ellipsis")
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
    tls_cert: Annotated[Path | None, typer.Option(
        help="Serve the benchmarked coordinator over TLS with this PEM certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="PEM CA the load generator trusts (default: --tls-cert, if self-signed).")] = None,
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

            result = run_bench(cfg, on_progress, tls_cert=_opt(tls_cert),
                               tls_key=_opt(tls_key), tls_ca=_opt(tls_ca))
    print_table(bench_table(result))
    load = os.getloadavg()
    console.print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} "
                  f"(other processes share these cores); transport: "
                  f"{'TLS' if result.tls else 'plaintext'}")
    for line in goal_lines(result):
        console.print(line)
    if json_out is not None:
        write_json(json_out, {**result.to_json(), "loadavg": list(load)})
        console.print(f"wrote {json_out}")


def soak_table(r: SoakReport) -> Table:
    """Every per-session table before and after the soak (fits 80 columns)."""
    table = Table(title=f"saga coordinator soak: {r.sessions:,} sessions, {r.calls:,} calls "
                  f"in {r.duration_s:.1f} s", title_justify="left")
    for col in ("table", "before", "after", "leak"):
        table.add_column(col, justify="left" if col == "table" else "right", no_wrap=True)
    for name, after in r.tables_after.items():
        leak = "LEAK" if name in r.leaks else "no"
        table.add_row(name, str(r.tables_before.get(name, 0)), str(after), leak)
    return table


@app.command()
def soak(
    sessions: Annotated[int, typer.Option(help="Agent sessions to run.")] = 10_000,
    workers: Annotated[int, typer.Option(help="Simulated workers.")] = 4,
    concurrency: Annotated[int, typer.Option(help="Sessions running at once.")] = 400,
    max_seconds: Annotated[float, typer.Option(help="Give up after this long.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the sessions' calls and tools.")] = 0,
    preset: Annotated[str, typer.Option(metavar="NAME", help=PRESET_HELP)] = DEFAULT_PRESET,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Run many sessions through a loopback coordinator, then check nothing stayed behind."""
    with user_errors():
        r = run_soak(SoakConfig(sessions=sessions, workers=workers, concurrency=concurrency,
                                warmup=min(2 * concurrency, sessions // 5),
                                max_seconds=max_seconds, seed=seed, preset=preset))
    print_table(soak_table(r))
    console.print(f"sessions ended {r.sessions_ended:,}, expired {r.sessions_expired:,}; "
                  f"moves {r.moves:,}")
    console.print(f"RSS {r.rss_before_kib / 1024:.1f} MiB after warm-up, "
                  f"{r.rss_after_kib / 1024:.1f} MiB at the end "
                  f"({r.rss_growth_kib / 1024:+.1f} MiB)")
    console.print("no leaks" if not r.leaks else f"LEAKS: {', '.join(r.leaks)}")
    if json_out is not None:
        write_json(json_out, r.to_dict())
        console.print(f"wrote {json_out}")
    if r.leaks:
        raise typer.Exit(1)


def preset_line(preset: Preset) -> str:
    """The coordinator's layers of ``preset`` in one line (what ``serve`` says it runs)."""
    layers = preset.layers()
    return ", ".join(f"{layer} {'off' if layers[layer] is None else layers[layer]['name']}"
                     for layer in ("router", "stealing", "ttl", "fairness"))


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 50051,
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve Prometheus metrics over HTTP on this port.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        help="Serve TLS with this PEM certificate (chain); needs --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(
        help="Mutual TLS: require client certificates signed by this PEM CA.")] = None,
    final_grace_s: Annotated[float, typer.Option(
        help="Seconds a session stays after its final call (late observations land).")
    ] = FINAL_GRACE_S,
    session_idle_s: Annotated[float, typer.Option(
        help="Seconds without calls or observations before a session is dropped.")
    ] = SESSION_IDLE_S,
    preset: Annotated[str, typer.Option(metavar="NAME", help=PRESET_HELP)] = DEFAULT_PRESET,
) -> None:
    """Run a coordinator until interrupted (token from $SAGA_COORDINATOR_TOKEN).

    Give --tls-cert and --tls-key whenever clients are on other nodes: without them the token
    travels in plaintext.
    """
    with user_errors():
        chosen = get_preset(preset)
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            raise SagaConfigError(f"set ${TOKEN_ENV} to the shared secret of the cluster")
        config = ServerConfig(token=token, host=host, port=port, tls_cert=_opt(tls_cert),
                              tls_key=_opt(tls_key), tls_client_ca=_opt(tls_client_ca),
                              final_grace_s=final_grace_s, session_idle_s=session_idle_s,
                              preset=preset)
        typer.echo(f"preset {chosen.name}: {preset_line(chosen)}", err=True)
        asyncio.run(serve(config, metrics_port))
