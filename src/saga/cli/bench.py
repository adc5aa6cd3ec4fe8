"""`saga bench`: the paper's tables 3-10 computed by saga-bench's simulator.

``saga bench`` runs a reduced grid (tables 3, 4 and 6 on one simulated node of 2 TP4 instances,
2 seeds, about a minute on 2 cores); ``--full`` runs every table (10 seeds; 5 for the sweeps of
tables 5-9) in parallel processes, and table 3c (table 3 on the whole 16-instance reference
cluster, 1 seed), within 15 minutes on 2 cores; ``--seeds N`` runs every table on N seeds;
``--nodes 8`` simulates every requested table on the reference cluster. ``saga bench
validate`` runs the real CPU vLLM engine (``saga vllm compare``) and the simulator configured as
that engine, and reports the simulator's error. ``--out DIR`` writes each run to ``DIR/runs/`` as
it finishes and ``--resume`` reuses them after an interruption (``saga.bench.store``);
``--smoke`` runs the pipeline on a handful of tasks in seconds. ``--tables map`` runs the regime
map (``saga.bench.tables_map``: SAGA against the best peer over load, DRAM tier and tool latency),
which is part of neither the quick grid nor ``--full``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from saga.bench.costmodel import check_published_rates
from saga.bench.jobs import FULL, QUICK, SMOKE, Job, Scale, with_nodes
from saga.bench.report import write_report
from saga.bench.runner import BenchRun, parse_tables, run_bench
from saga.bench.store import RunStore
from saga.bench.tables import ABLATION_SETS, TableResult, check_saga
from saga.bench.trace_workload import TraceSource, describe, open_trace_source
from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, progress
from saga.policy.errors import SagaConfigError
from saga.policy.presets import SAGA

QUICK_TABLES = "3,4,6"

app = typer.Typer(help="The paper's tables, computed by the simulator.",
                  invoke_without_command=True)


def rich_table(t: TableResult) -> Table:
    """A finished table for the terminal (print it with ``print_table``: it splits to fit)."""
    table = Table(title=f"Table {t.id}: {t.title} (simulated)", title_justify="left")
    for i, c in enumerate(t.columns):
        table.add_column(c, justify="left" if i == 0 else "right",
                         style="dim" if c.startswith("paper") else None)
    for r in t.rows:
        table.add_row(*(str(r.get(c, "")) for c in t.columns))
    return table


def _scale(full: bool, smoke: bool, nodes: int | None) -> Scale:
    if full and smoke:
        raise SagaConfigError("give --full or --smoke, not both")
    scale = FULL if full else SMOKE if smoke else QUICK
    return scale if nodes is None else with_nodes(scale, nodes)


def run_and_show(tables: str | None, full: bool, seeds: int | None, workers: int | None,
                 nodes: int | None = None, *, smoke: bool = False, out: Path | None = None,
                 resume: bool = False, trace: TraceSource | None = None,
                 saga: str = "saga") -> BenchRun:
    """Run the bench with a progress bar and print each table.

    With ``out``, each finished run is written to ``out/runs/`` at once; with ``resume`` too,
    runs already there (same configuration hash) are loaded instead of run again. ``saga``:
    the preset that plays SAGA in the tables (``check_saga`` lists the valid ones)."""
    scale = dataclasses.replace(_scale(full, smoke, nodes), saga=check_saga(saga))
    if trace is not None:
        scale = dataclasses.replace(scale, trace=trace)
    ids = parse_tables(tables if tables is not None else (None if full else QUICK_TABLES))
    seed_list = list(range(seeds)) if seeds is not None else None
    store = RunStore(out) if out is not None else None
    if resume and store is None:
        raise SagaConfigError("--resume needs --out DIR: the folder whose runs/ to reuse")
    warnings: list[str] = []
    with progress() as bar:
        task = bar.add_task(f"simulating ({scale.name}: tables {', '.join(ids)})", total=None)

        def planned(n: int) -> None:
            bar.update(task, total=n)

        def done(job: Job, result: dict[str, Any]) -> None:
            bar.advance(task)

        run = run_bench(ids, scale, seed_list, workers=workers, on_job=done, on_plan=planned,
                        store=store, resume=resume, warn=warnings.append)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    for t in run.tables:
        print_table(rich_table(t))
        for n in t.notes:
            console.print(f"  [dim]{escape(n)}[/]")
        for line in t.summary:
            console.print(escape(line), highlight=False)
    if store is not None:
        console.print(f"runs: {store.dir} ({run.reused} of {run.jobs} reused, "
                      f"{run.jobs - run.reused} run now)" if resume else
                      f"runs: {store.dir} ({run.jobs} written; `--resume` reuses them)")
    console.print(f"{run.jobs - run.reused} runs in {run.wall_s:.1f} s; simulator: "
                  f"{run.calls_per_s:,.0f} simulated LLM calls per CPU second.")
    return run


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Every table, 10 seeds (5 for tables "
                                       "5-9; one simulated node; table 3c on the 16-instance "
                                       "cluster, 1 seed).")] = False,
    tables: Annotated[str | None, typer.Option(help="Comma-separated table ids, e.g. 3,6, "
                                               "or map: the regime map (default: 3,4,6 "
                                               "quick; 3-10 with --full).")
                      ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per point (default: 2 "
                                              "quick, 10 full).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write each finished run to DIR/runs/ "
                                             "at once, and JSON, CSV and PNG per table and "
                                             "report.md to DIR at the end.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="With --out: load the runs "
                                         "already in DIR/runs/ (same configuration) instead "
                                         "of running them again.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes (default: one per "
                                                "core).")] = None,
    nodes: Annotated[int | None, typer.Option(min=1, max=8, help="Simulate this many 8-GPU "
                                              "nodes (8 = the whole reference cluster), tasks "
                                              "scaled to keep the load per instance.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A few tasks per run: checks the "
                                        "pipeline in seconds (its numbers mean nothing).")
                     ] = False,
    trace_path: Annotated[Path | None, typer.Option(
        "--trace", help="Run the tables' SWE and WebArena workloads on this trace's sessions: "
                        "a file, or a directory of trajectory JSON files (atif, "
                        "mini-swe-agent).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Trace format: agent, atif, "
                                     "mini-swe-agent (mooncake has no sessions).")] = "agent",
    skip_bad_lines: Annotated[bool, typer.Option(
        "--skip-bad-lines", help="Count and skip malformed trace lines (or files) instead of "
                                 "stopping.")] = False,
    trace_rate: Annotated[float | None, typer.Option(
        "--trace-rate", help="Trace tasks per second per instance, Poisson (default: the "
                             "scale's SWE rate).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Instead of --trace-rate: N trace tasks in flight (each further task "
                    "starts when one would finish on an idle instance).")] = None,
    trace_tasks: Annotated[int | None, typer.Option(
        min=1, help="Use the trace's first N sessions (default: the scale's SWE task "
                    "count).")] = None,
    latency_model: Annotated[str, typer.Option(
        help="Durations of the tool calls the trace did not time: swe-template or "
             "lognormal.")] = "swe-template",
    saga: Annotated[str, typer.Option(
        "--saga", help="The preset that plays SAGA in every table (table 6 ablates it): "
                       f"{', '.join(ABLATION_SETS)}. Peers, grid and seeds stay the same; "
                       "SAGA's runs are stored under their own preset.")] = "saga",
) -> None:
    """Compute the paper's tables by simulation (quick grid by default)."""
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        trace: TraceSource | None = None
        trace_lines: list[str] = []
        if trace_path is not None:
            trace, trace_lines = open_bench_trace(
                trace_path, fmt, _scale(full, smoke, nodes), skip_bad_lines=skip_bad_lines,
                tasks=trace_tasks, rate_per_instance=trace_rate, concurrency=concurrency,
                latency_model=latency_model)
        run = run_and_show(tables, full, seeds, workers, nodes, smoke=smoke, out=out,
                           resume=resume, trace=trace, saga=saga)
        if out is not None:
            validation = _load_validation(out)
            args = ["saga", "bench", *(["--full"] if full else []),
                    *(["--smoke"] if smoke else []), *(["--resume"] if resume else []),
                    *(["--skip-bad-lines"] if skip_bad_lines and trace else [])]
            for flag, value in (("--tables", tables), ("--seeds", seeds), ("--nodes", nodes),
                                ("--workers", workers), ("--out", out),
                                ("--trace", trace_path), ("--format", trace and fmt),
                                ("--trace-rate", trace_rate), ("--concurrency", concurrency),
                                ("--trace-tasks", trace_tasks),
                                ("--latency-model", trace and latency_model),
                                ("--saga", saga if saga != SAGA.name else None)):
                if value is not None:
                    args += [flag, str(value)]
            section = [TRACE_HEADING, "", *(f"- {x}" for x in trace_lines), ""]
            path = write_report(run, out, shlex.join(args), validation,
                                extra=section if trace_lines else ())
            console.print(f"report: {path}")


TRACE_HEADING = "## Trace-driven workload"


def open_bench_trace(path: Path, fmt: str, scale: Scale, **options: Any
                     ) -> tuple[TraceSource, list[str]]:
    """Read the ``--trace`` for the bench and print what it supplies and what was assumed
    (fallbacks for missing timings, the latency model and its parameters, skipped lines)."""
    src, trace = open_trace_source(path, fmt, **options)
    lines = describe(src, trace, dataclasses.replace(scale, trace=src))
    for line in lines:
        console.print(escape(line), highlight=False)
    return src, lines


def _load_validation(out: Path) -> dict[str, Any] | None:
    """``validation.json`` from ``saga bench validate --out``, or None. One that cannot be read
    leaves the report without its validation section and says so: the bench's results are
    kept either way."""
    p = out / "validation.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_bytes())
        if not (isinstance(data, dict) and isinstance(data.get("markdown", []), list)
                and all(isinstance(line, str) for line in data.get("markdown", []))):
            raise ValueError("not the object `saga bench validate` writes")
    except (ValueError, RecursionError) as exc:
        console.print(f"[yellow]warning:[/] ignoring {escape(str(p))} ({escape(str(exc))}); "
                      "run `saga bench validate --out` again to add the validation section",
                      highlight=False)
        return None
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
    print_table(table)


__all__ = ["app", "rich_table", "run_and_show", "validation_table"]


# ---------------------------------------------------------------------------- validation
# The real engine's run comes from saga-vllm (``CompareResult.measurement()``, plain data) and
# the simulated side from saga-bench (``saga.bench.validate``); neither package imports the
# other, so the command wires them here.


def validate_against_engine(sessions: int = 8, seed: int = 0, max_steps: int = 10,
                            on_call: Any = None, kv_blocks: int | None = None,
                            measured: Any = None, model: str = "tiny") -> dict[str, Any]:
    """Run ``saga vllm compare`` (steps recorded) and the simulator configured as that
    engine; compare them (:func:`saga.bench.validate.validate`). ``kv_blocks`` overrides
    compare's default pool (smaller: more cache pressure); ``model``: tiny, small or a local
    model directory. ``measured``: a ``CompareResult`` already run with its step log on to
    validate against instead of running one (the other arguments are then unused)."""
    from saga.bench.validate import validate
    from saga.vllm.compare import DEFAULT_KV_BLOCKS, CompareConfig, run_compare
    from saga.vllm.workload import WorkloadConfig

    load_before = os.getloadavg()[0]
    if measured is None:
        cfg = CompareConfig(workload=WorkloadConfig(sessions=sessions, seed=seed,
                                                    max_steps=max_steps), model=model,
                            kv_blocks=kv_blocks or DEFAULT_KV_BLOCKS, record_steps=1_000_000)
        measured = run_compare(cfg, on_call=on_call)
    data = measured.measurement()
    data["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    result = validate(data)
    result["measured"] = measured.to_dict(sessions=True)
    return result


def validation_table(result: dict[str, Any]) -> Table:
    """One row per figure, one column per engine: readable in 80 columns."""
    table = Table(title="Simulator validation against the real engine", title_justify="left")
    table.add_column("")
    for r in result["rows"]:
        table.add_column(str(r["engine"]), justify="right")
    for key in list(result["rows"][0])[1:]:
        table.add_row(key, *(str(r[key]) for r in result["rows"]))
    return table


VALIDATION_HEADING = "## Simulator validation against the real engine"


def with_validation(report: str, markdown: list[str]) -> str:
    """``report.md`` text with its validation section replaced by ``markdown``."""
    start = report.find(VALIDATION_HEADING)
    if start < 0:
        return report + "\n" + "\n".join([VALIDATION_HEADING, "", *markdown, ""])
    end = report.find("\n## ", start + len(VALIDATION_HEADING))
    end = len(report) if end < 0 else end + 1
    return report[:start] + "\n".join([VALIDATION_HEADING, "", *markdown, "", ""]) + report[end:]


@app.command("validate")
def validate(
    out: Annotated[Path | None, typer.Option(help="Write validation.json here (the next "
                                             "`saga bench --out` there includes it).")] = None,
    sessions: Annotated[int, typer.Option(min=1, help="Agent sessions.")] = 8,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    max_steps: Annotated[int, typer.Option(min=1, help="LLM calls per session at most.")] = 10,
    kv_blocks: Annotated[int | None, typer.Option(
        min=8, help="KV pool in blocks of 32 tokens (default: compare's 160; fewer: more "
                    "cache pressure).")] = None,
    model: Annotated[str, typer.Option(
        help="tiny or small (random Llama shapes) or PATH, a local Hugging Face model "
             "directory.")] = "tiny",
    live: Annotated[Path | None, typer.Option(
        help="Instead: simulate the multi-engine run in this `saga bench live` live.json "
             "and print simulated / live per system.")] = None,
) -> None:
    """Simulated vs measured TCT and recomputed tokens on the real (CPU) vLLM engine."""
    with user_errors():
        if live is not None:
            from saga.cli.live import validate_live_file

            validate_live_file(live, out)
            return
        try:
            import saga.vllm  # noqa: F401
        except ModuleNotFoundError:
            raise typer.BadParameter(
                "needs saga-vllm: pip install 'saga[vllm]' (or uv sync --all-packages)"
            ) from None
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        with progress() as bar:
            task = bar.add_task("real engine: stock then SAGA", total=None)
            result = validate_against_engine(sessions, seed, max_steps,
                                             on_call=lambda name, n: bar.advance(task),
                                             kv_blocks=kv_blocks, model=model)
        print_table(validation_table(result))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "validation.json").write_text(json.dumps(result, indent=2, default=str))
            console.print(f"validation: {out / 'validation.json'}")
            report = out / "report.md"
            if report.is_file():
                report.write_text(with_validation(report.read_text(), result["markdown"]))
                console.print(f"report updated: {report}")
