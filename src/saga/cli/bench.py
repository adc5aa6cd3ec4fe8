"""`saga bench`: the paper's tables 3-10 computed by saga-bench's simulator.

``saga bench`` runs a reduced grid (tables 3, 4 and 6 on one simulated node of 2 TP4 instances,
2 seeds, about a minute on 2 cores); ``--full`` runs every table with 10 seeds, seeds in parallel
processes, and table 3c (table 3 on the whole 16-instance reference cluster, 4 seeds);
``--nodes 8`` simulates every requested table on the reference cluster. ``saga bench
validate`` runs the real CPU vLLM engine (``saga vllm compare``) and the simulator configured as
that engine, and reports the simulator's error. ``--out DIR`` writes each run to ``DIR/runs/`` as
it finishes and ``--resume`` reuses them after an interruption (``saga.bench.store``);
``--smoke`` runs the pipeline on a handful of tasks in seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from collections.abc import Sequence
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
from saga.bench.tables import TableResult
from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, progress
from saga.policy.errors import SagaConfigError

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
                 resume: bool = False) -> BenchRun:
    """Run the bench with a progress bar and print each table.

    With ``out``, each finished run is written to ``out/runs/`` at once; with ``resume`` too,
    runs already there (same configuration hash) are loaded instead of run again."""
    scale = _scale(full, smoke, nodes)
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
    full: Annotated[bool, typer.Option("--full", help="Every table, 10 seeds (one simulated "
                                       "node; table 3c on the 16-instance cluster).")] = False,
    tables: Annotated[str | None, typer.Option(help="Comma-separated table ids, e.g. 3,6 "
                                               "(default: 3,4,6 quick; all with --full).")
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
) -> None:
    """Compute the paper's tables by simulation (quick grid by default)."""
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        run = run_and_show(tables, full, seeds, workers, nodes, smoke=smoke, out=out,
                           resume=resume)
        if out is not None:
            validation = _load_validation(out)
            args = ["saga", "bench", *(["--full"] if full else []),
                    *(["--smoke"] if smoke else []), *(["--resume"] if resume else [])]
            for flag, value in (("--tables", tables), ("--seeds", seeds), ("--nodes", nodes),
                                ("--workers", workers), ("--out", out)):
                if value is not None:
                    args += [flag, str(value)]
            path = write_report(run, out, shlex.join(args), validation)
            console.print(f"report: {path}")


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
# Glue between saga-vllm (the real engine) and saga-bench (the simulator): it lives here, in
# the meta-package, because neither package may import the other.


def _error(sim: float, measured: float) -> float:
    return (sim - measured) / measured if measured else (0.0 if sim == 0 else float("inf"))


def step_samples(steps: Sequence[Any]) -> list[Any]:
    """``StepSample`` per measured engine step (``saga.vllm.steps.StepRecord``) that the next
    step followed while requests remained: its time is the engine's period, from its
    ``schedule`` to the next one's (model, scheduler and front-end work between them), the
    quantity the simulator's step time stands for. Steps before an idle gap are left out."""
    from saga.bench.costmodel import StepSample

    out = []
    for cur, nxt in itertools.pairwise(steps):
        if cur.busy_after:
            out.append(StepSample(cur.prefill_tokens, cur.prefill_context, cur.decode_seqs,
                                  cur.decode_context, nxt.start_s - cur.start_s))
    return out


def validate_against_engine(sessions: int = 8, seed: int = 0, max_steps: int = 10,
                            on_call: Any = None, kv_blocks: int | None = None,
                            measured: Any = None) -> dict[str, Any]:
    """Run ``saga vllm compare`` and the simulator configured as that engine; compare them.

    The simulator gets the engine's KV pool (blocks of 32 tokens), batch limits, the same
    sessions (arrival, calls, tools, the output lengths the engine produced) and a step-time
    model fitted to each engine run's own measured steps (``saga.vllm.steps``). ``kv_blocks``
    overrides compare's default pool (smaller: more cache pressure). ``measured``: a
    ``CompareResult`` already run with its step log on (``record_steps``) to validate against
    instead of running one (the other arguments are then unused).
    """
    import dataclasses

    from saga.bench.costmodel import fit_linear_cost
    from saga.bench.sim import simulate
    from saga.vllm.compare import DEFAULT_KV_BLOCKS, CompareConfig, run_compare
    from saga.vllm.workload import WorkloadConfig

    if measured is None:
        cfg = CompareConfig(workload=WorkloadConfig(sessions=sessions, seed=seed,
                                                    max_steps=max_steps),
                            kv_blocks=kv_blocks or DEFAULT_KV_BLOCKS, record_steps=1_000_000)
        load_before = os.getloadavg()[0]
        measured = run_compare(cfg, on_call=on_call)
        load_after = os.getloadavg()[0]
    else:
        cfg = measured.config
        load_before = load_after = os.getloadavg()[0]
    stock, saga = measured.run("stock"), measured.run("saga")
    assert stock is not None and saga is not None
    fit_max = (cfg.kv_blocks - 1) * cfg.block_size
    max_tokens = min(fit_max, cfg.workload.max_context + 64)
    # Each engine's own measured speed: on a shared machine the two runs see different load.
    fits = {run.name: fit_linear_cost(step_samples(run.steps), max_batched_tokens=max_tokens,
                                      max_num_seqs=max(8, cfg.workload.sessions))
            for run in (stock, saga)}
    workload, sim_cfg, presets = sim_setup(measured)
    sims = {name: simulate(presets[name], workload, sim_cfg, fits[name].cost)
            for name in ("stock", "saga")}
    # Tool sleeps are inputs to both sides; TCT minus them is the engine's share of a task.
    plans = measured.workload.sessions
    tool_s = sum(p.tool_s for p in plans) / len(plans)
    rows = []
    for name, run in (("stock", stock), ("saga", saga)):
        sim, fit = sims[name], fits[name]
        llm_measured, llm_sim = run.tct_mean_s - tool_s, sim.tct_mean_s - tool_s
        # What the engine itself took: the task's calls from submission to last token.
        calls_s = sum(c.latency_s for t in run.sessions for c in t.calls) / len(run.sessions)
        rows.append({
            "engine": name,
            "steps": len(run.steps),
            "step fit R²": round(fit.r2, 3),
            "step fit median error": f"{100 * fit.median_rel_error:.0f} %",
            "measured TCT (s)": round(run.tct_mean_s, 3),
            "simulated TCT (s)": round(sim.tct_mean_s, 3),
            "TCT error": f"{100 * _error(sim.tct_mean_s, run.tct_mean_s):+.1f} %",
            "measured TCT − tools (s)": round(llm_measured, 3),
            "simulated TCT − tools (s)": round(llm_sim, 3),
            "TCT − tools error": f"{100 * _error(llm_sim, llm_measured):+.1f} %",
            "measured call time (s)": round(calls_s, 3),
            "call time error": f"{100 * _error(llm_sim, calls_s):+.1f} %",
            "measured recomputed tokens": run.recomputed_tokens,
            "simulated recomputed tokens": sim.recomputed_tokens,
            "recomputed error":
                f"{100 * _error(sim.recomputed_tokens, run.recomputed_tokens):+.1f} %",
        })
    cols = list(rows[0])
    models = "; ".join(
        f"{k}: {1e3 * f.cost.fixed_s:.2f} ms + {1e6 * f.cost.per_prefill_token_s:.1f} µs/prefill "
        f"token + {1e3 * f.cost.per_decode_seq_s:.2f} ms/decode seq + "
        f"{1e9 * f.cost.per_context_token_s:.0f} ns/context token" for k, f in fits.items())
    md = ["Simulated vs measured on the CPU vLLM engine of `saga vllm compare` "
          f"({cfg.workload.sessions} sessions, seed {cfg.workload.seed}, {cfg.kv_blocks} KV "
          f"blocks of {cfg.block_size} "
          f"tokens; machine load {load_before:.1f} before, {load_after:.1f} after). Each engine "
          "logs every scheduler step (prefill tokens, decode sequences, context, wall time); "
          "the simulator's step time is a non-negative least-squares fit to that engine run's "
          "own steps (step = one `schedule()` to the next while requests remain), "
          f"{models}. `step fit R²` and `median error` say how well that model explains the "
          "measured steps. The simulator then replays the same sessions (arrivals, calls, tool "
          "sleeps, output lengths) under the engine's policy; the cache behaviour (recomputed "
          f"tokens) is not fitted at all. Tool sleeps ({tool_s:.2f} s per task on average) are "
          "the same on both sides and make up most of a task's time here, so `TCT − tools`, "
          "the time a task spends in the engine (queueing, prefill, decode), is the sharper "
          "test of the simulated engine. `measured call time` is the part of it inside the "
          "engine's calls (submission to last token, summed over a task's calls); the rest is "
          "the client's own time (a tool's sleep ending behind an engine step, building the "
          "next request), which the simulator does not model; `call time error` compares the "
          "simulated TCT − tools with it. vidur reports < 9 % error for its GPU profiles; "
          "larger errors are shown as they are.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return {"rows": rows, "markdown": md, "tool_s_per_task": tool_s,
            "load_average": {"before": load_before, "after": load_after},
            "cost_fit": {k: {**dataclasses.asdict(v.cost), "steps": v.steps, "r2": v.r2,
                             "median_rel_error": v.median_rel_error} for k, v in fits.items()},
            "measured": measured.to_dict(sessions=True), "simulated": {k: v.to_dict()
                                                          for k, v in sims.items()}}


def sim_setup(measured: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The simulator configured as the compare run's engines: the same sessions (with the
    output lengths the engine produced), its KV pool, and a preset per engine.

    SAGA's preset takes the knobs of the engine's ``SagaSchedulerConfig``: WA-LRU weights,
    the TTL's cap and its prior for a tool not yet observed (``default_tool_p95_s``), the pin
    cap (``pin_cap_fraction``), the hybrid queue's bound; no DRAM tier, prefetch, AFS or
    stealing (the engine runs none of them here).
    """
    import dataclasses

    from saga.bench.sim import SimConfig
    from saga.bench.workload import Call, Task, Workload, WorkloadSpec
    from saga.policy.presets import PRESETS, policy
    from saga.policy.spec import ClusterSpec

    cfg = measured.config
    stock = measured.run("stock")
    outputs = {s.session_id: [c.output_tokens for c in s.calls] for s in stock.sessions}
    tasks = []
    for plan in measured.workload.sessions:
        outs = outputs[plan.session_id]
        tasks.append(Task(
            plan.session_id, plan.agent_type, plan.tenant, plan.arrival_s,
            tuple(Call(len(c.new_tokens), outs[i] if i < len(outs) else c.max_tokens, c.tool,
                       c.tool_s) for i, c in enumerate(plan.calls)),
            system_key=plan.session_id.split("-")[0],
            system_tokens=cfg.workload.system_tokens))
    workload = Workload(WorkloadSpec("mixed", len(tasks), 1.0, cfg.workload.seed), tasks)
    one = ClusterSpec(nodes=1, gpus_per_node=1, gpu_name="cpu", gpu_hbm_bytes=2**34, tp=1,
                      instances=1, nvlink_bytes_per_s=1e9, ib_bytes_per_s=1e9,
                      dram_bytes_per_node=2**34, cpus_per_node=2)
    sc = cfg.saga_config()
    if sc.afs or not (sc.walru and sc.ttl and sc.queue == "hybrid"):
        raise ValueError("the simulated SAGA engine is WA-LRU + TTL pins + hybrid queue; "
                         f"the compare run used {sc.to_dict()}")
    # The engine's usable pool: compare sizes the KV memory for kv_blocks blocks besides the
    # null block vLLM reserves (SAGA's scheduler reports what it got).
    saga_run = measured.run("saga")
    usable = ((saga_run.saga_stats or {}).get("usable_blocks") if saga_run is not None
              else None) or cfg.kv_blocks
    sim_cfg = SimConfig(cluster=one, block_tokens=cfg.block_size, hbm_blocks=int(usable),
                        dram_blocks=0, pin_cap_fraction=sc.pin_cap_fraction)

    saga_vllm = dataclasses.replace(
        PRESETS["saga"], name="saga-in-vllm", dram_tier=False, prefetch=False, fairness=None,
        stealing=None,
        eviction=policy("eviction", "walru", alpha=sc.alpha, beta=sc.beta, gamma=sc.gamma),
        ttl=policy("ttl", "tool_call", ttl_max=sc.ttl_max_s, default_p95_s=sc.default_tool_p95_s),
        queue=policy("queue", "hybrid", max_active=sc.hybrid_max_active))
    return workload, sim_cfg, {"stock": PRESETS["vllm_apc"], "saga": saga_vllm}


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
) -> None:
    """Simulated vs measured TCT and recomputed tokens on the real (CPU) vLLM engine."""
    with user_errors():
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
                                             kv_blocks=kv_blocks)
        print_table(validation_table(result))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "validation.json").write_text(json.dumps(result, indent=2, default=str))
            console.print(f"validation: {out / 'validation.json'}")
            report = out / "report.md"
            if report.is_file():
                report.write_text(with_validation(report.read_text(), result["markdown"]))
                console.print(f"report updated: {report}")
