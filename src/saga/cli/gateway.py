"""`saga gateway`: tools around the OpenAI-compatible gateway (`saga serve` runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from saga.cli.errors import user_errors
from saga.cli.render import console, print_table
from saga.coordinator.core import DEFAULT_PRESET
from saga.coordinator.gateway.bench import (
    GatewayBenchConfig,
    GatewayBenchResult,
    run_gateway_bench,
    write_results,
)
from saga.policy.presets import PRESETS

app = typer.Typer(help="SAGA's OpenAI-compatible gateway: its tools.", no_args_is_help=True)

P99_GOAL_MS = 2.0
RATE_GOAL = 1_000.0


@app.callback()
def _group() -> None:
    """SAGA's OpenAI-compatible gateway: its tools."""


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _cpu(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f} ms"


def bench_table(r: GatewayBenchResult) -> Table:
    """Every figure of the run beside its goal (fits 80 columns)."""
    table = Table(title=f"saga gateway bench: preset {r.config.preset}, trivial engine, "
                  f"{r.cpus} CPUs", title_justify="left")
    table.add_column("measure", no_wrap=False, overflow="fold")
    for col in ("figure", "goal", "result"):
        table.add_column(col, justify="right", no_wrap=True)
    for lat in r.latency:
        kind = "streamed" if lat.stream else "non-streamed"
        table.add_row(f"{kind}, {lat.pairs} sequential pairs: direct P50 / P99",
                      f"{lat.direct_p50_ms:.2f} / {lat.direct_p99_ms:.2f} ms", "", "")
        table.add_row("  through the gateway P50 / P99",
                      f"{lat.gateway_p50_ms:.2f} / {lat.gateway_p99_ms:.2f} ms", "", "")
        table.add_row("  added per request (paired) P50",
                      f"{lat.added_p50_ms:.2f} ms", "", "")
        table.add_row("  added per request (paired) P99", f"{lat.added_p99_ms:.2f} ms",
                      f"<= {P99_GOAL_MS:g} ms", _verdict(lat.added_p99_ms <= P99_GOAL_MS))
        table.add_row("  P99 gateway - P99 direct", f"{lat.dist_added_p99_ms:.2f} ms",
                      f"<= {P99_GOAL_MS:g} ms", _verdict(lat.dist_added_p99_ms <= P99_GOAL_MS))
        table.add_row("  gateway CPU per request", _cpu(lat.gateway_cpu_ms_per_request), "", "")
    for t in r.throughput:
        kind = "streamed" if t.stream else "non-streamed"
        name = "through the gateway" if t.target == "gateway" else "direct (ceiling)"
        goal = t.target == "gateway" and not t.stream
        table.add_row(f"{kind} {name}, {t.concurrency} clients",
                      f"{t.per_s:,.0f} req/s", f">= {RATE_GOAL:,.0f}/s" if goal else "",
                      _verdict(t.per_s >= RATE_GOAL) if goal else "")
        table.add_row("  P50 / P99 under load", f"{t.p50_ms:.1f} / {t.p99_ms:.1f} ms", "", "")
        table.add_row(f"  {t.target} CPU per request", _cpu(t.server_cpu_ms_per_request),
                      "", "")
    return table


def notes(r: GatewayBenchResult) -> list[str]:
    """How the figures were made, what shares the cores, and what the errors were."""
    before, after = r.loadavg_before, r.loadavg_after
    lines = [f"setup: {r.setup}.",
             f"machine: {r.cpus} CPUs shared by all three processes and anything else running "
             f"(load average {before[0]:.2f} before, {after[0]:.2f} after).",
             "added latency: paired = P of (gateway_i - direct_i) over interleaved sequential "
             "calls (the goal is judged on it); also the difference of the two paths' P99s."]
    for t in r.throughput:
        if t.target == "gateway" and t.server_cpu_ms_per_request:
            lines.append(f"gateway CPU per request under load {t.server_cpu_ms_per_request:.2f}"
                         f" ms{' (streamed)' if t.stream else ''}: one gateway process could "
                         f"serve at most ~{1000.0 / t.server_cpu_ms_per_request:,.0f} req/s "
                         "on a core of its own.")
        if t.errors:
            lines.append(f"{t.target}{' streamed' if t.stream else ''}: {t.errors} requests "
                         "failed during the throughput phase.")
    if r.config.profile:
        lines.append("the gateway ran under cProfile (CPU time): its figures include the "
                     "profiler's cost; do not quote them as overhead.")
    return lines


@app.command()
def bench(
    requests: Annotated[int, typer.Option(
        help="Sequential request pairs (direct, gateway) of the latency phase.")] = 500,
    concurrency: Annotated[int, typer.Option(
        help="Closed-loop keep-alive clients of the throughput phases.")] = 16,
    seconds: Annotated[float, typer.Option(help="Length of each throughput phase.")] = 5.0,
    preset: Annotated[str, typer.Option(
        metavar="NAME", help=f"The gateway's preset: {', '.join(sorted(PRESETS))}.")
    ] = DEFAULT_PRESET,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Also measure streamed (SSE) requests.")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Write gateway_bench.json and two CSVs (and the processes' logs) here.")] = None,
    profile: Annotated[Path | None, typer.Option(
        help="Run the gateway under cProfile (CPU time) and write its stats here.")] = None,
) -> None:
    """The gateway's own overhead against a trivial engine: added latency and requests/s.

    The engine, the gateway and the load generator run in separate processes on loopback.
    """
    with user_errors():
        cfg = GatewayBenchConfig(requests=requests, warmup=max(10, requests // 10),
                                 concurrency=concurrency, seconds=seconds, preset=preset,
                                 stream=stream, profile=None if profile is None else str(profile))
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
        with console.status("measuring the gateway (engine and gateway in child processes)"):
            result = run_gateway_bench(cfg, log_dir=out)
        print_table(bench_table(result))
        for line in notes(result):
            console.print(line, highlight=False)
        if out is not None:
            for path in write_results(result, out):
                console.print(f"wrote {path}", highlight=False)
        if profile is not None:
            console.print(f"wrote {profile} (read it: python -m pstats {profile}, then "
                          "`sort tottime`, `stats 30`)", highlight=False)
