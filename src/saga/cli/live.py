"""`saga bench live`: agent tasks through the gateway against N real vLLM engines, per system.

The tasks are the simulator's workloads (saga-bench: the saga-aeg templates, the bundled
mini-swe-agent trajectories, or a ``--trace``), sized for the model served here; the runs are
saga-coordinator's (``saga.coordinator.gateway.live``); the engines' options come from
saga-vllm. This module wires the three, so none of them imports another.

Systems (preset names): ``saga`` — the gateway's affinity routing and stealing, engines running
SagaScheduler with the saga preset and a WA-LRU DRAM tier; ``vllm_apc`` — vLLM's own scheduler
with automatic prefix caching and a CPU (DRAM) tier under LRU, behind the preset's llm-d-like
prefix + load routing; ``vllm`` — vLLM without prefix caching, least-loaded routing. Every
check runs before an engine starts: a bad option is one line ``error: ...``, exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, progress
from saga.policy.errors import SagaConfigError
from saga.policy.presets import get_preset

if TYPE_CHECKING:
    from saga.coordinator.gateway.launch import EngineSpec
    from saga.coordinator.gateway.live import LiveSystem
    from saga.coordinator.gateway.live_tasks import LiveTask

DEFAULT_SYSTEMS = "saga,vllm_apc,vllm"
WORKLOADS = ("mixed", "swe", "web", "trace-swe")
"""Template workloads (``trace-swe``: the bundled mini-swe-agent trajectories)."""
BLOCK = 32
MAX_OUTPUT = 32

__all__ = ["build_tasks", "engine_spec", "live", "parse_seeds", "parse_systems"]


def parse_seeds(text: str) -> list[int]:
    """Seed *names*, as ``saga vllm compare --seeds`` reads them: ``0-2`` → [0, 1, 2],
    ``0,3`` → [0, 3], ``4`` → [4] (seed 4 alone, not four seeds); sorted, a repeat counted
    once. A reversed range or a negative seed is an error, not an empty list."""
    seeds: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            a, b = int(lo), int(hi) if sep else int(lo)
            if a < 0 or b < a:
                raise ValueError(part)
            seeds.update(range(a, b + 1))
    except ValueError:
        raise SagaConfigError(f"--seeds {text!r}: give seeds as a range like 0-2 or a list "
                              "like 0,3 of non-negative integers (--seeds 4 is seed 4 alone; "
                              "for seeds 0 to 3 give 0-3)") from None
    if not seeds:
        raise SagaConfigError(f"--seeds {text!r} names no seed; e.g. 0 or 0-2")
    return sorted(seeds)


def parse_systems(text: str) -> list[str]:
    """Comma-separated preset names, each checked (an unknown one lists the valid ones)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise SagaConfigError(f"--systems {text!r} names no system; e.g. {DEFAULT_SYSTEMS}")
    for n in names:
        try:
            get_preset(n)
        except SagaConfigError as exc:
            raise SagaConfigError(f"--systems: {exc}") from None
    if len(set(names)) != len(names):
        raise SagaConfigError(f"--systems {text!r} names a system twice")
    return names


def _dram_tier(system: str, model: str, dram_blocks: int) -> dict[str, Any]:
    """vLLM's OffloadingConnector as a DRAM tier of ``dram_blocks`` blocks: SAGA's WA-LRU when
    the preset's eviction reads workflow hints, vLLM's LRU otherwise."""
    from saga.vllm.models import kv_bytes_per_block, model_shape
    from saga.vllm.offload import SAGA_WALRU, offload_engine_kwargs

    walru = get_preset(system).build().engine().eviction.reads_hints
    tier = offload_engine_kwargs(dram_blocks * kv_bytes_per_block(BLOCK, model_shape(model)),
                                 policy=SAGA_WALRU if walru else "lru")["kv_transfer_config"]
    return {"kv_connector": tier.kv_connector, "kv_role": tier.kv_role,
            "kv_connector_extra_config": tier.kv_connector_extra_config}


def _connectors(system: str, model: str, dram_blocks: int,
                kv_store: str | None) -> dict[str, Any] | None:
    """The engines' ``--kv-transfer-config``: the DRAM tier, SAGA's KV store, both through
    vLLM's MultiConnector, or None."""
    from saga.vllm.kv_store import kv_transfer_config

    preset = get_preset(system)
    parts = []
    if kv_store is not None and preset.is_saga:
        parts.append(kv_transfer_config(kv_store))
    if preset.dram_tier and dram_blocks > 0:
        parts.append(_dram_tier(system, model, dram_blocks))
    if len(parts) < 2:
        return parts[0] if parts else None
    return {"kv_connector": "MultiConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"connectors": parts}}


def engine_spec(system: str, model: str, kv_blocks: int | None, dram_blocks: int,
                max_num_seqs: int, kv_store: str | None = None) -> EngineSpec:
    """What the engines of ``system`` run: its preset in SagaScheduler, prefix caching as the
    preset has it, a DRAM tier when the preset has one and ``dram_blocks`` > 0, and for SAGA
    with ``kv_store`` the node KV store a moved session's KV is loaded from."""
    from saga.coordinator.gateway.launch import EngineSpec

    extra: tuple[str, ...] = ()
    if not get_preset(system).prefix_caching:
        extra = ("--no-enable-prefix-caching",)
    else:
        cfg = _connectors(system, model, dram_blocks, kv_store)
        if cfg is not None:
            extra = ("--kv-transfer-config", json.dumps(cfg, sort_keys=True))
    return EngineSpec(model=model, preset=system, kv_blocks=kv_blocks,
                      max_num_seqs=max_num_seqs, extra_args=extra)


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Where the tasks come from and how they are sized for the model served."""

    workload: str = "mixed"
    trace: Path | None = None
    fmt: str = "agent"
    tasks: int = 6
    rate: float = 1.0
    token_scale: float = 0.08
    output_scale: float = 0.1
    max_context: int = 1536
    max_calls: int = 10
    tool_scale: float = 0.1
    max_tool_s: float = 3.0

    @property
    def source(self) -> str:
        return f"trace {self.trace} ({self.fmt})" if self.trace else self.workload


def _bench_tasks(opts: TaskOptions, seed: int) -> list[Any]:
    """saga-bench's tasks for ``seed`` (full-size: a frontier model's token counts)."""
    from saga.bench.workload import WorkloadSpec, build_workload

    if opts.trace is None:
        if opts.workload not in WORKLOADS:
            raise SagaConfigError(f"--workload must be one of {', '.join(WORKLOADS)}, got "
                                  f"{opts.workload!r} (or give --trace PATH)")
        spec = WorkloadSpec(opts.workload, opts.tasks, opts.rate, seed)
        return list(build_workload(spec).tasks)
    from saga.bench.trace_workload import TraceWorkloadSpec, open_trace_source

    src, _ = open_trace_source(opts.trace, opts.fmt)
    tspec = TraceWorkloadSpec("trace", min(opts.tasks, src.sessions), opts.rate, seed,
                              trace_path=src.path, trace_sha256=src.sha256,
                              trace_format=src.format)
    return list(build_workload(tspec).tasks)


def build_tasks(opts: TaskOptions, seed: int) -> list[LiveTask]:
    """The live tasks of ``seed``: saga-bench's, as plain data, sized by :func:`fit_tasks`."""
    from saga.coordinator.gateway.live_tasks import LiveCall, LiveTask, fit_tasks

    if opts.tasks < 1:
        raise SagaConfigError(f"--tasks must be >= 1, got {opts.tasks}")
    if not opts.rate > 0:
        raise SagaConfigError(f"--rate must be > 0 tasks per second, got {opts.rate}")
    raw = [LiveTask(t.task_id, t.agent_type, t.arrival_s,
                    tuple(LiveCall(c.new_tokens, c.output_tokens, c.tool, c.tool_s)
                          for c in t.calls), t.system_key, t.system_tokens, t.tenant)
           for t in _bench_tasks(opts, seed)]
    return fit_tasks(raw, token_scale=opts.token_scale, output_scale=opts.output_scale,
                     max_context=opts.max_context, max_calls=opts.max_calls,
                     tool_scale=opts.tool_scale, max_tool_s=opts.max_tool_s,
                     max_output=MAX_OUTPUT)


def _model(model: str, kv_blocks: int | None, max_context: int) -> tuple[str, int]:
    """(served model name, vocabulary size); the context must fit the pool and the model."""
    from saga.vllm.models import resolve_model

    try:
        source = resolve_model(model)
    except SagaConfigError as exc:
        raise SagaConfigError(f"--model: {exc}") from None
    limit = source.shape.max_positions
    if kv_blocks is not None:
        limit = min(limit, kv_blocks * BLOCK)
    if max_context + MAX_OUTPUT > limit:
        raise SagaConfigError(
            f"--max-context {max_context} (+ up to {MAX_OUTPUT} output tokens) does not fit "
            f"one engine ({limit} tokens: --kv-blocks x {BLOCK}, at most the model's "
            f"positions); raise --kv-blocks or lower --max-context")
    name = model if source.path is None else source.path.name
    return name, source.shape.vocab_size


def summary_table(summary: dict[str, dict[str, Any]], title: str) -> Table:
    """Per system: mean ± std over seeds of the figures the report gives."""
    table = Table(title=title, title_justify="left")
    cols = (("mean TCT s", "tct_mean_s", ".2f"), ("p95 TCT s", "tct_p95_s", ".2f"),
            ("re-prefilled ctx", "reprefilled_context_tokens", ",.0f"),
            ("hit rate", "hit_rate", ".3f"), ("calls/s", "calls_per_s", ".2f"),
            ("re-homes", "rehomes", ".0f"), ("steals", "steals", ".0f"),
            ("KV moves", "kv_moves", ".0f"))
    table.add_column("system")
    for c, _, _ in cols:
        table.add_column(c, justify="right")
    for s, r in summary.items():
        table.add_row(s, *(f"{r[k]['mean']:{f}}" + (f" ± {r[k]['std']:{f}}" if r[k]['std']
                                                    else "") for _, k, f in cols))
    return table


def _check_counts(**counts: int | None) -> None:
    """Counts a run needs positive (``dram_blocks`` may be 0), checked before anything
    starts."""
    for name, value in counts.items():
        low = 0 if name == "dram_blocks" else 2 if name == "kv_blocks" else 1
        if value is not None and value < low:
            raise SagaConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _systems(names: Sequence[str], model: str, kv_blocks: int | None, dram_blocks: int,
             max_num_seqs: int, kv_store: str | None) -> list[LiveSystem]:
    from saga.coordinator.gateway.live import LiveSystem

    return [LiveSystem(n, engine_spec(n, model, kv_blocks, dram_blocks, max_num_seqs,
                                      kv_store)) for n in names]


def _store_dir() -> str:
    """A fresh node KV store for this run's SAGA engines (shared memory where there is)."""
    shm = Path("/dev/shm")
    return tempfile.mkdtemp(prefix="saga-live-kv-", dir=shm if shm.is_dir() else None)


def _document(config: Any, opts: TaskOptions, command: str, model: str,
              kv_blocks: int | None, dram_blocks: int, runs: Sequence[Any]) -> dict[str, Any]:
    """Everything ``live.json`` holds but the runs: setup, tasks, per-system summary."""
    from saga.coordinator.gateway.launch import engine_command
    from saga.coordinator.gateway.live_report import best_baseline_ratios
    from saga.coordinator.gateway.live_results import over_seeds
    from saga.coordinator.gateway.live_tasks import tasks_to_json

    names = [s.name for s in config.systems]
    summary = over_seeds(runs, names)
    loads = [x for r in runs for x in (r.load_before, r.load_after)]
    first = config.tasks[config.seeds[0]]
    return {
        "kind": "saga-live", "command": command,
        "config": {"engines": config.engines, "model": model, "kv_blocks": kv_blocks,
                   "dram_blocks": dram_blocks, "tasks": len(first),
                   "calls": sum(len(t.calls) for t in first), "workload": opts.source,
                   "max_context": opts.max_context, "tool_scale": opts.tool_scale,
                   "token_scale": opts.token_scale, "output_scale": opts.output_scale,
                   "seeds": config.seeds, "block_size": BLOCK,
                   "max_num_seqs": config.systems[0].engine.max_num_seqs},
        "systems": {s.name: {"layers": get_preset(s.name).layers(),
                             "engine_command": engine_command(s.engine, "127.0.0.1", 0)[1:]}
                    for s in config.systems},
        "tasks": {str(seed): tasks_to_json(ts) for seed, ts in config.tasks.items()},
        "summary": summary, "ratios": best_baseline_ratios(summary),
        "machine": {"cpus": os.cpu_count(), "load_min": min(loads, default=0.0),
                    "load_max": max(loads, default=0.0)},
    }


def live(
    engines: Annotated[int, typer.Option(help="Engines per system.")] = 2,
    model: Annotated[str, typer.Option(help="tiny, small or a local model directory.")
                     ] = "tiny",
    kv_blocks: Annotated[int | None, typer.Option(
        help="Each engine's KV pool in blocks of 32 tokens (fewer: more memory "
             "pressure).")] = 64,
    dram_blocks: Annotated[int, typer.Option(
        help="DRAM tier per engine, in blocks, for systems whose preset has one "
                    "(0: none).")] = 32,
    systems: Annotated[str, typer.Option(help="Comma-separated presets to compare: any "
                                         "preset name (e.g. saga_no_ttl), the gateway "
                                         "and the engines running it.")] = DEFAULT_SYSTEMS,
    seeds: Annotated[str, typer.Option(help="Which seeds, as `saga vllm compare --seeds`: a "
                                       "range 0-2 or a list 0,3; 4 is seed 4 alone (not 4 "
                                       "seeds, unlike `saga bench --seeds N`). Seed k starts "
                                       "with system k.")] = "0",
    tasks: Annotated[int, typer.Option(help="Tasks per seed.")] = 6,
    workload: Annotated[str, typer.Option(help="mixed, swe, web (saga-aeg templates) or "
                                          "trace-swe (bundled trajectories).")] = "mixed",
    trace: Annotated[Path | None, typer.Option(help="Tasks from this trace instead (any "
                                               "`saga bench --trace` reads).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Trace format: agent, atif, "
                                     "mini-swe-agent.")] = "agent",
    rate: Annotated[float, typer.Option(help="Task arrivals per second (Poisson).")] = 1.0,
    tool_scale: Annotated[float, typer.Option(help="Tool sleeps = the workload's tool "
                                              "latencies x this.")] = 0.1,
    max_tool_s: Annotated[float, typer.Option(help="Longest tool sleep (s).")] = 3.0,
    token_scale: Annotated[float, typer.Option(help="Prompt growth = the workload's x this."
                                               )] = 0.08,
    output_scale: Annotated[float, typer.Option(help="Output tokens = the workload's x this "
                                                f"(at most {MAX_OUTPUT}).")] = 0.1,
    max_context: Annotated[int, typer.Option(help="Cut a task where its context would pass "
                                             "this.")] = 1536,
    max_calls: Annotated[int, typer.Option(help="LLM calls per task at most.")] = 10,
    max_num_seqs: Annotated[int, typer.Option(help="Requests each engine runs at once."
                                              )] = 8,
    kv_moves: Annotated[bool, typer.Option(
        "--kv-moves/--no-kv-moves", help="SAGA's engines share a node KV store, so a session "
                                         "the gateway moves loads its KV on its new engine."
    )] = True,
    out: Annotated[Path, typer.Option(help="Write live.json, live.csv, live.png and the "
                                      "report section here.")] = Path("saga-live"),
    start_timeout: Annotated[float, typer.Option(help="Seconds engines may take to start.")
                             ] = 300.0,
) -> None:
    """Replay agent tasks through the gateway on real vLLM engines, per system and seed."""
    with user_errors():
        if trace is not None and workload != "mixed":
            raise SagaConfigError("give --workload or --trace, not both")
        _check_counts(engines=engines, kv_blocks=kv_blocks, max_num_seqs=max_num_seqs,
                      dram_blocks=dram_blocks)
        names = parse_systems(systems)
        seed_list = parse_seeds(seeds)
        if not (start_timeout > 0):
            raise SagaConfigError(f"--start-timeout must be > 0, got {start_timeout}")
        opts = TaskOptions(workload, trace, fmt, tasks, rate, token_scale, output_scale,
                           max_context, max_calls, tool_scale, max_tool_s)
        served, vocab = _model(model, kv_blocks, max_context)
        from saga.coordinator.gateway.live import LiveConfig, run_live_sync
        from saga.coordinator.gateway.live_report import heading, write_live

        seed_tasks = {s: build_tasks(opts, s) for s in seed_list}
        if out.exists() and not out.is_dir():
            raise SagaConfigError(f"--out {out} is a file; give a directory")
        # Last, once every option has been checked: a bad one leaves no store behind.
        store = _store_dir() if kv_moves else None
        try:
            config = LiveConfig(tuple(_systems(names, model, kv_blocks, dram_blocks,
                                               max_num_seqs, store)),
                                seed_tasks, engines=engines, served_model=served,
                                vocab_size=vocab, start_timeout_s=start_timeout,
                                log_dir=out / "logs", gateway_options={"kv_moves": kv_moves})
            total = sum(len(t.calls) for ts in config.tasks.values() for t in ts) * len(names)
            console.print(f"live: {len(names)} systems x seeds {seed_list}, {engines} "
                          f"engines each (model {model}, {kv_blocks} KV blocks); "
                          f"{total // len(names)} calls per system", highlight=False)
            started = time.monotonic()
            with progress() as bar:
                task = bar.add_task("starting", total=total)
                runs = run_live_sync(
                    config, on_call=lambda s, k: bar.advance(task),
                    on_run=lambda s, k, what: bar.update(task,
                                                         description=f"{s} seed {k}: {what}"))
        finally:
            if store is not None:
                shutil.rmtree(store, ignore_errors=True)
        command = shlex.join(["saga", "bench", "live", *sys.argv[3:]]) \
            if sys.argv[1:3] == ["bench", "live"] else "saga bench live"
        data = _document(config, opts, command, model, kv_blocks, dram_blocks, runs)
        data["config"]["kv_moves"] = kv_moves
        print_table(summary_table(data["summary"], heading(engines, model)[3:]))
        for f, v in data["ratios"].items():
            console.print(f"  SAGA / {v['baseline']}: {f} {v['ratio']:.2f}x", highlight=False)
        failed = sum(int(r.figures["tasks_failed"]) for r in runs)
        if failed:
            console.print(f"[yellow]warning:[/] {failed} tasks failed; see live.json and "
                          f"{escape(str(out / 'logs'))}")
        paths = write_live(data, runs, out)
        console.print(f"{len(runs)} runs in {time.monotonic() - started:.0f} s; wrote "
                      + ", ".join(str(p) for p in paths.values()), highlight=False)


def validate_live_file(path: Path, out: Path | None) -> None:
    """`saga bench validate --live FILE`: the simulator against a live run, per system; with
    ``out``, ``live_validation.json`` and the section in ``out/report.md``."""
    from saga.bench.validate import validate_live
    from saga.coordinator.gateway.live_report import with_section

    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        raise SagaConfigError(f"--live {path}: not JSON ({exc}); give the live.json that "
                              "`saga bench live --out DIR` wrote") from None
    result = validate_live(data)
    table = Table(title="Simulator vs live multi-engine run (simulated / live)",
                  title_justify="left")
    for c in ("system", "figure", "live", "simulated", "sim / live"):
        table.add_column(c, justify="left" if c in ("system", "figure") else "right")
    for r in result["rows"]:
        for f in (k[len("sim/live "):] for k in r if k.startswith("sim/live ")):
            table.add_row(r["system"], f, str(r[f"live {f}"]), str(r[f"sim {f}"]),
                          str(r[f"sim/live {f}"]))
    print_table(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "live_validation.json").write_text(json.dumps(result, indent=1, default=str))
        report = out / "report.md"
        old = report.read_text() if report.is_file() else ""
        report.write_text(with_section(old, LIVE_VALIDATION_HEADING, result["markdown"]))
        console.print(f"wrote {out / 'live_validation.json'} and {report}", highlight=False)


LIVE_VALIDATION_HEADING = "## Simulator validation against the live multi-engine run"
