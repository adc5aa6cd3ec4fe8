"""`saga kernels ...` and `saga show native`: which kernels are native, and how fast they are."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, write_json
from saga.cli.replay import parse_int_list
from saga.kernels import native_status
from saga.kernels.bench import BENCHES, DEFAULT_SIZES, BenchReport, Timing, run_bench
from saga.policy.errors import SagaConfigError

app = typer.Typer(help="SAGA's native kernels: status and benchmark.", no_args_is_help=True)

_EXPERIMENTAL = ("experimental: no caller in SAGA yet (saga.kernels.experimental; the "
                 "saga-kernels README says why each is kept)")


def native_table() -> Table:
    """One row per kernel: host or CUDA (and experimental: no caller in SAGA yet), where it
    runs now, and why."""
    table = Table(title="SAGA kernels (native = C++/OpenMP, cuda = GPU, twin = NumPy fallback)",
                  title_justify="left", caption=_EXPERIMENTAL, caption_justify="left")
    for col in ("kernel", "kind", "runs", "detail"):
        table.add_column(col, no_wrap=col != "detail",
                         overflow="fold" if col == "detail" else "ellipsis")
    colour = {"native": "green", "cuda": "green", "twin": "yellow"}
    for r in native_status():
        kind = f"{r.kind}, experimental" if r.experimental else r.kind
        table.add_row(r.name, kind, f"[{colour[r.backend]}]{r.backend}[/]", r.detail)
    return table


def _us(t: Timing) -> str:
    return "—" if t.seconds is None else f"{t.seconds * 1e6:,.1f}"


def _x(x: float | None) -> str:
    return "—" if x is None else f"{x:,.1f}×"


def bench_table(report: BenchReport) -> Table:
    """Times in µs per call, native speed-ups, and bandwidth against memcpy; an experimental
    kernel is marked ``*``."""
    marked = any(r.experimental for r in report.rows)
    table = Table(title=f"Kernel benchmark (one run; {report.threads} thread(s); memcpy "
                        f"{report.memcpy_gbps:.1f} GB/s read+write)", title_justify="left",
                  caption=f"* {_EXPERIMENTAL}" if marked else None, caption_justify="left")
    for col in ("kernel", "N", "native µs", "NumPy µs", "Python µs", "vs Python", "vs NumPy",
                "native GB/s", "% memcpy"):
        table.add_column(col, justify="left" if col == "kernel" else "right", no_wrap=True)
    for r in report.rows:
        gbps = r.gbps(r.native)
        table.add_row(f"{r.kernel}*" if r.experimental else r.kernel, f"{r.n:,}",
                      _us(r.native), _us(r.numpy), _us(r.python),
                      _x(r.ratio(r.python)), _x(r.ratio(r.numpy)),
                      "—" if gbps is None else f"{gbps:.1f}",
                      "—" if gbps is None else f"{100 * gbps / report.memcpy_gbps:.0f}%")
    return table


@app.command("bench")
def bench(
    sizes: Annotated[str, typer.Option(help="Comma-separated N (candidates, references or "
                                            "lookups).")] = ",".join(map(str, DEFAULT_SIZES)),
    kernels: Annotated[str, typer.Option(help="Comma-separated kernels: " + ", ".join(BENCHES))
                       ] = ",".join(BENCHES),
    python_max_n: Annotated[int, typer.Option(help="Skip the plain-Python twin above this N.")
                            ] = 1 << 20,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures "
                                                                 "here as JSON.")] = None,
) -> None:
    """Native vs NumPy vs plain Python for each host kernel, measured in this one run."""
    with user_errors():
        ns = parse_int_list(sizes, "--sizes")
        names = [k.strip() for k in kernels.split(",") if k.strip()]
        unknown = sorted(set(names) - set(BENCHES))
        if unknown or not names:
            raise SagaConfigError(f"--kernels: unknown {unknown or names}; choose from "
                                  f"{', '.join(BENCHES)}")
        with console.status("benchmarking") as status:
            report = run_bench(ns, kernels=names, python_max_n=python_max_n,
                               on_step=lambda s: status.update(f"benchmarking {s}"))
    print_table(bench_table(report), keep=2)
    console.print(f"native build: {report.native_detail}")
    for r in report.rows:
        for impl in ("native", "numpy", "python"):
            note = getattr(r, impl).note
            if note:
                console.print(f"{r.kernel} N={r.n:,} {impl}: {note}")
    for note in report.notes:
        console.print(f"note: {note}")
    if json_out is not None:
        write_json(json_out, dataclasses.asdict(report))
        console.print(f"wrote {json_out}")
