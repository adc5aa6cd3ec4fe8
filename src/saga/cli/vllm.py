"""`saga vllm compare`: stock vLLM against SAGA inside vLLM on one agent workload.

Both engines get the same model (``--model``), KV budget and workload seed and are driven by the
same session client; the table puts them side by side with the SAGA ÷ stock ratio. vLLM is
imported only when a command runs, so ``saga --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, progress, write_json
from saga.policy.errors import SagaConfigError
from saga.vllm.compare import (
    DEFAULT_KV_BLOCKS,
    DRIVERS,
    SAGA_ENGINE,
    STOCK_ENGINE,
    CompareConfig,
    CompareResult,
    EngineRun,
    run_compare,
    seed_spread,
)
from saga.vllm.workload import WORKLOAD_KINDS, WorkloadConfig

app = typer.Typer(help="SAGA inside a real vLLM engine.", no_args_is_help=True)

RECOMPUTE_GOAL = 0.3
"""SAGA's recomputed prompt tokens should be at most this share of stock vLLM's."""


@app.callback()
def _group() -> None:
    """SAGA inside a real vLLM engine."""


def kv_blocks_from(kv_blocks: int | None, kv_mb: float | None, block_size: int,
                   model: str = "tiny") -> int:
    """The KV pool in blocks from ``--kv-blocks`` or ``--kv-mb`` (not both); ``--kv-mb``
    counts in the KV bytes per block of ``model`` (tiny, small or a model directory)."""
    from saga.vllm.models import kv_bytes_per_block, model_shape

    if kv_blocks is not None and kv_mb is not None:
        raise SagaConfigError("give --kv-blocks or --kv-mb, not both")
    if kv_mb is not None:
        if not (kv_mb > 0 and math.isfinite(kv_mb)):
            raise SagaConfigError(f"--kv-mb must be > 0, got {kv_mb}")
        # vLLM keeps one block of the pool for itself.
        return int(kv_mb * 2**20) // kv_bytes_per_block(block_size, model_shape(model)) - 1
    return DEFAULT_KV_BLOCKS if kv_blocks is None else kv_blocks


def parse_saga_overrides(text: str | None) -> dict[str, Any]:
    """``--saga-config '{"queue": "fcfs"}'`` → a dict of SagaSchedulerConfig fields."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SagaConfigError(f"--saga-config must be a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise SagaConfigError(
            f"--saga-config must be a JSON object, got {type(data).__name__}")
    return data


def _fmt_ratio(x: float | None) -> str:
    if x is None:
        return "—"
    return "inf" if math.isinf(x) else f"{x:.2f}×"


def compare_table(result: CompareResult) -> Table:
    """Metrics as rows, engines as columns, then SAGA ÷ stock."""
    runs = sorted(result.runs, key=lambda r: r.name != STOCK_ENGINE)  # stock first, always
    ratios = result.ratios()
    cfg = result.config
    w = result.workload.summary()
    table = Table(
        title=(f"{int(w['sessions'])} sessions ({cfg.workload.kind}), {int(w['calls'])} calls, "
               f"KV pool {cfg.kv_blocks} blocks × {cfg.block_size} tokens"
               + (f" + DRAM tier {cfg.dram_blocks} blocks" if cfg.dram_blocks else "")
               + f", model {cfg.model}, seed {cfg.workload.seed}"),
        title_justify="left")
    table.add_column("metric", no_wrap=True)
    for r in runs:
        table.add_column("SAGA" if r.name == SAGA_ENGINE else "stock vLLM", justify="right")
    if ratios:
        table.add_column("SAGA ÷ stock", justify="right")

    def row(label: str, key: str | None, fmt: Any) -> None:
        cells = [fmt(r) for r in runs]
        if ratios:
            cells.append(_fmt_ratio(ratios.get(key)) if key else "")
        table.add_row(label, *cells)

    def recomputed(r: EngineRun) -> str:
        return f"{r.recomputed_tokens:,}"

    row("recomputed prompt tokens (prompt − cached)", "recomputed_tokens", recomputed)
    row("  of which re-prefilled context", "reprefilled_tokens",
        lambda r: f"{r.reprefilled_tokens:,}")
    row("prompt tokens", None, lambda r: f"{r.prompt_tokens:,}")
    row("prefix hit rate", "prefix_hit_rate", lambda r: f"{r.hit_rate:.1%}")
    row("task completion time mean", "tct_mean_s", lambda r: f"{r.tct_mean_s:.2f} s")
    row("task completion time p95", "tct_p95_s", lambda r: f"{r.tct_p95_s:.2f} s")
    row("call latency mean", None, lambda r: f"{r.call_latency_mean_s * 1e3:.0f} ms")
    row("throughput (calls/s)", "calls_per_s", lambda r: f"{r.calls_per_s:.2f}")
    row("throughput (tokens/s)", "tokens_per_s", lambda r: f"{r.tokens_per_s:,.0f}")
    row("wall time", "wall_s", lambda r: f"{r.wall_s:.1f} s")
    if cfg.dram_blocks:
        row("prefetches during tool calls", None, lambda r: f"{r.prefetches:,}")
    row("engine start (+ warm-up)", None, lambda r: f"{r.start_s:.1f} s")
    return table


def goal_lines(result: CompareResult) -> list[str]:
    """Whether the run met the two goals, stated plainly."""
    ratios = result.ratios()
    if not ratios:
        return []
    rec, rep, tct = (ratios["recomputed_tokens"], ratios["reprefilled_tokens"],
                     ratios["tct_mean_s"])
    ok = "[green]met[/]"
    missed = "[red]not met[/]"
    return [
        f"goal: recomputed tokens ≤ {RECOMPUTE_GOAL:.1f}× stock — {_fmt_ratio(rec)}: "
        f"{ok if rec <= RECOMPUTE_GOAL else missed} (re-prefilled context only: "
        f"{_fmt_ratio(rep)})",
        f"goal: lower mean task completion time — {_fmt_ratio(tct)}: "
        f"{ok if tct < 1.0 else missed}",
    ]


def parse_seeds(text: str | None, seed: int) -> list[int]:
    """``--seeds 0,1,2`` (or ``0-4``) → seeds; without it, just ``--seed``."""
    if not text:
        return [seed]
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise SagaConfigError(
            f"--seeds must be integers like 0,1,2 or 0-4, got {text!r}") from None
    if not out:
        raise SagaConfigError(f"--seeds names no seed: {text!r}")
    return sorted(set(out))


def seeds_table(results: list[CompareResult]) -> Table:
    """One row per seed (the SAGA ÷ stock ratios), then median, range and geometric mean.

    Each seed's absolute figures are in its own table above; this one holds ratios only, so
    that it fits 80 terminal columns."""
    table = Table(title=f"SAGA ÷ stock vLLM over {len(results)} seeds", title_justify="left")
    cols = [("recomputed", "recomputed_tokens"), ("re-prefilled", "reprefilled_tokens"),
            ("hit rate", "prefix_hit_rate"), ("TCT mean", "tct_mean_s"),
            ("TCT p95", "tct_p95_s"), ("calls/s", "calls_per_s")]
    table.add_column("seed", justify="right")
    for label, _ in cols:
        table.add_column(label, justify="right")
    for r in results:
        ratios = r.ratios()
        table.add_row(str(r.config.workload.seed),
                      *(_fmt_ratio(ratios.get(key)) for _, key in cols))
    spread = seed_spread(results)
    for stat in ("median", "min", "max", "geomean"):
        table.add_row(stat, *(_fmt_ratio(spread[key][stat]) if key in spread else "—"
                              for _, key in cols), style="bold" if stat == "median" else None)
    return table


def run_with_progress(config: CompareConfig) -> CompareResult:
    """Run the comparison with one progress bar per engine (calls finished)."""
    from saga.vllm.workload import build_workload

    total = build_workload(config.workload).calls
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def on_engine(name: str) -> None:
            tasks[name] = bar.add_task(f"{name}: starting engine", total=total)

        def on_call(name: str, done: int) -> None:
            bar.update(tasks[name], completed=done, description=f"{name}: running workload")

        return run_compare(config, on_call=on_call, on_engine=on_engine)


def compare(
    sessions: Annotated[int, typer.Option(help="Concurrent agent sessions.")] = 8,
    workload: Annotated[str, typer.Option(
        help="Agent templates: swe (SWE-bench), web (WebArena) or mixed.")] = "mixed",
    seed: Annotated[int, typer.Option(help="Workload and model seed.")] = 0,
    kv_blocks: Annotated[int | None, typer.Option(
        help=f"KV pool in blocks of 32 tokens (default {DEFAULT_KV_BLOCKS}).")] = None,
    kv_mb: Annotated[float | None, typer.Option(
        help="KV pool in MiB instead of --kv-blocks.")] = None,
    tool_scale: Annotated[float, typer.Option(
        help="Multiply the templates' tool latencies (real sleeps).")] = WorkloadConfig.tool_scale,
    max_steps: Annotated[int, typer.Option(
        help="At most this many LLM calls per session.")] = WorkloadConfig.max_steps,
    max_context: Annotated[int, typer.Option(
        help="Cut a session where its context would pass this many tokens.")
    ] = WorkloadConfig.max_context,
    driver: Annotated[str | None, typer.Option(
        help="inproc: engine core in this process; async-llm: vLLM's AsyncLLM "
             "(engine core in its own process). Default: inproc, async-llm with a DRAM tier."
    )] = None,
    dram_mb: Annotated[float | None, typer.Option(
        help="Give both engines a DRAM tier of this many MiB (vLLM's OffloadingConnector: "
             "stock with LRU, SAGA with WA-LRU and prefetch during tool calls).")] = None,
    prefetch_quantile: Annotated[float, typer.Option(
        help="With a DRAM tier, SAGA prefetches a session when this share of its tool's "
             "calls have usually returned.")] = 0.5,
    saga_config: Annotated[str | None, typer.Option(
        help='SagaSchedulerConfig fields over the saga_no_afs preset, as JSON, e.g. '
             '\'{"queue": "fcfs"}\' or \'{"preset": "saga"}\'.')
    ] = None,
    engines: Annotated[str, typer.Option(
        help="Which engines to run, comma-separated: stock,saga.")] = "stock,saga",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    per_call: Annotated[bool, typer.Option(
        help="Include every session's calls in the JSON.")] = False,
    model: Annotated[str, typer.Option(
        help="tiny or small (a random Llama: tiny's prefill is nearly free, small has ~60M "
             "parameters, so a re-prefill costs time, as with trained models) or PATH, a local "
             "Hugging Face model directory (config.json and weights; driven with token ids).",
        metavar="tiny|small|PATH")] = "tiny",
    seeds: Annotated[str | None, typer.Option(
        help="Run several seeds (e.g. 0,1,2 or 0-4) and print the median and spread.")] = None,
    cpu_threads: Annotated[int, typer.Option(
        min=0, help="Unbound OpenMP threads per engine; 0 keeps vLLM's binding of threads to "
                    "cores (which stalls when other jobs share the cores).")] = 1,
) -> None:
    """Run one agent workload on stock vLLM and on SAGA (same model, KV budget, seed)."""
    # vLLM logs every engine start at INFO on stdout, burying the table; VLLM_LOGGING_LEVEL
    # set by the caller wins. It must be set before vLLM is imported.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    with user_errors():
        if workload not in WORKLOAD_KINDS:
            raise SagaConfigError(
                f"--workload must be one of {', '.join(WORKLOAD_KINDS)}, got {workload!r}")
        if dram_mb is not None and not (dram_mb > 0 and math.isfinite(dram_mb)):
            raise SagaConfigError(f"--dram-mb must be > 0, got {dram_mb}")
        if driver is None:
            driver = "async-llm" if dram_mb else "inproc"
        if driver not in DRIVERS:
            raise SagaConfigError(
                f"--driver must be one of {', '.join(DRIVERS)}, got {driver!r}")
        dram_blocks = 0
        if dram_mb:
            from saga.vllm.models import kv_bytes_per_block, model_shape

            dram_blocks = int(dram_mb * 2**20) // kv_bytes_per_block(32, model_shape(model))
        names = tuple(x.strip() for x in engines.split(",") if x.strip())
        configs = [CompareConfig(
            workload=WorkloadConfig(sessions=sessions, kind=workload,  # type: ignore[arg-type]
                                    seed=s, tool_scale=tool_scale, max_steps=max_steps,
                                    max_context=max_context),
            kv_blocks=kv_blocks_from(kv_blocks, kv_mb, 32, model),
            driver=driver,  # type: ignore[arg-type]
            saga_overrides=parse_saga_overrides(saga_config),
            # Over several seeds the engines take turns at going first, so a load trend on the
            # machine during the runs does not favour one of them.
            engines=names if i % 2 == 0 else tuple(reversed(names)), model=model,
            dram_blocks=dram_blocks, prefetch_quantile=prefetch_quantile,
            cpu_threads=cpu_threads or None)
            for i, s in enumerate(parse_seeds(seeds, seed))]
        results: list[CompareResult] = []
        for config in configs:
            result = run_with_progress(config)
            results.append(result)
            print_table(compare_table(result))
            for line in goal_lines(result):
                console.print(line)
        if len(results) > 1:
            print_table(seeds_table(results))
        console.print(f"model {model}; vLLM import {results[0].vllm_import_s:.1f} s, model build "
                      f"{results[0].model_build_s:.1f} s", style="dim")
        if json_out is not None:
            if len(results) == 1:
                write_json(json_out, results[0].to_dict(sessions=per_call))
            else:
                write_json(json_out, {
                    "seeds": [r.to_dict(sessions=per_call) for r in results],
                    "saga_over_stock_over_seeds": seed_spread(results)})
            console.print(f"wrote {json_out}")


app.command("compare")(compare)
