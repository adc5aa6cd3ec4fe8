"""`saga bench`: the paper's tables 3-10 computed by saga-bench's simulator.

``saga bench`` runs a reduced grid (tables 3, 4 and 6 on 4 instances, 2 seeds, about a minute on
2 cores); ``--full`` runs every table on the 16-instance reference cluster with 10 seeds, seeds in
parallel processes. ``saga bench validate`` runs the real CPU vLLM engine (``saga vllm compare``)
and the simulator configured as that engine, and reports the simulator's error.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from saga.bench.costmodel import check_published_rates
from saga.bench.jobs import FULL, QUICK, Job, with_nodes
from saga.bench.report import write_report
from saga.bench.runner import BenchRun, parse_tables, run_bench
from saga.bench.tables import TableResult
from saga.cli.errors import user_errors
from saga.cli.render import console, progress

QUICK_TABLES = "3,4,6"

app = typer.Typer(help="The paper's tables, computed by the simulator.",
                  invoke_without_command=True)


def rich_table(t: TableResult) -> Table:
    """A finished table for the terminal."""
    table = Table(title=f"Table {t.id}: {t.title} (simulated)", title_justify="left")
    for i, c in enumerate(t.columns):
        table.add_column(c, justify="left" if i == 0 else "right",
                         style="dim" if c.startswith("paper") else None)
    for r in t.rows:
        table.add_row(*(str(r.get(c, "")) for c in t.columns))
    return table


def run_and_show(tables: str | None, full: bool, seeds: int | None, workers: int | None,
                 nodes: int | None = None) -> BenchRun:
    """Run the bench with a progress bar and print each table."""
    scale = FULL if full else QUICK
    if nodes is not None:
        scale = with_nodes(scale, nodes)
    ids = parse_tables(tables if tables is not None else (None if full else QUICK_TABLES))
    seed_list = list(range(seeds)) if seeds is not None else None
    with progress() as bar:
        task = bar.add_task(f"simulating ({scale.name}: tables {', '.join(ids)})", total=None)

        def planned(n: int) -> None:
            bar.update(task, total=n)

        def done(job: Job, result: dict[str, Any]) -> None:
            bar.advance(task)

        run = run_bench(ids, scale, seed_list, workers=workers, on_job=done, on_plan=planned)
    for t in run.tables:
        console.print(rich_table(t))
        for n in t.notes:
            console.print(f"  [dim]{n}[/]")
    console.print(f"{run.jobs} runs in {run.wall_s:.1f} s; simulator: "
                  f"{run.calls_per_s:,.0f} simulated LLM calls/s per process.")
    return run


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Every table, reference cluster, "
                                       "10 seeds.")] = False,
    tables: Annotated[str | None, typer.Option(help="Comma-separated table ids, e.g. 3,6 "
                                               "(default: 3,4,6 quick; all with --full).")
                      ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per point (default: 2 "
                                              "quick, 10 full).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write JSON, CSV and PNG per table and "
                                             "report.md here.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes (default: one per "
                                                "core).")] = None,
    nodes: Annotated[int | None, typer.Option(min=1, max=8, help="Simulate this many 8-GPU "
                                              "nodes (8 = the whole reference cluster), tasks "
                                              "scaled to keep the load per instance.")] = None,
) -> None:
    """Compute the paper's tables by simulation (quick grid by default)."""
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        run = run_and_show(tables, full, seeds, workers, nodes)
        if out is not None:
            validation = _load_validation(out)
            path = write_report(run, out, "saga " + shlex.join(sys.argv[1:]), validation)
            console.print(f"report: {path}")


def _load_validation(out: Path) -> dict[str, Any] | None:
    p = out / "validation.json"
    if not p.is_file():
        return None
    data: dict[str, Any] = json.loads(p.read_text())
    return data


@app.command("rates")
def rates() -> None:
    """The cost model's prefill/decode rates against the published ranges."""
    table = Table(title="Cost model vs published rates (Llama-3-70B, TP4, A100-80GB)",
                  title_justify="left")
    for c in ("rate", "model", "published range", "in range"):
        table.add_column(c)
    for r in check_published_rates():
        table.add_row(r.name, f"{r.value:,.1f}", f"{r.low:,.0f}–{r.high:,.0f}",
                      "yes" if r.ok else "NO")
    console.print(table)


__all__ = ["app", "rich_table", "run_and_show"]
