"""`saga bench`: the paper's tables 3-10 computed by saga-bench's simulator.

``saga bench`` runs a reduced grid (tables 3, 4 and 6 on one simulated node of 2 TP4 instances,
2 seeds, about a minute on 2 cores); ``--full`` runs every table with 10 seeds, seeds in parallel
processes; ``--nodes 8`` simulates the whole 16-instance reference cluster. ``saga bench
validate`` runs the real CPU vLLM engine (``saga vllm compare``) and the simulator configured as
that engine, and reports the simulator's error.
"""

from __future__ import annotations

import json
import shlex
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
                  f"{run.calls_per_s:,.0f} simulated LLM calls per CPU second.")
    return run


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Every table, 10 seeds (one simulated "
                                       "node; --nodes for more).")] = False,
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
            args = ["saga", "bench", *(["--full"] if full else [])]
            for flag, value in (("--tables", tables), ("--seeds", seeds), ("--nodes", nodes),
                                ("--workers", workers), ("--out", out)):
                if value is not None:
                    args += [flag, str(value)]
            path = write_report(run, out, shlex.join(args), validation)
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


# ---------------------------------------------------------------------------- validation
# Glue between saga-vllm (the real engine) and saga-bench (the simulator): it lives here, in
# the meta-package, because neither package may import the other.


def _error(sim: float, measured: float) -> float:
    return (sim - measured) / measured if measured else (0.0 if sim == 0 else float("inf"))


def fit_engine_cost(calls: list[tuple[int, int, float]], max_batched_tokens: int,
                    max_num_seqs: int) -> Any:
    """A ``LinearCost`` from measured calls ``(prefilled tokens, output tokens, latency s)``.

    Least squares of ``latency = c + a·prefilled + b·output``: ``a`` is the prefill cost per
    token, ``b`` the time of one decode iteration at the run's typical batch (every decoding
    call advances one token per iteration); the intercept (queueing) is left to the simulator.
    """
    import numpy as np

    from saga.bench.costmodel import LinearCost

    x = np.array([[1.0, p, o] for p, o, _ in calls])
    y = np.array([lat for _, _, lat in calls])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    # A few calls can give a slightly negative slope; a cost is never below a nanosecond.
    a, b = max(float(coef[1]), 1e-9), max(float(coef[2]), 1e-6)
    return LinearCost(fixed_s=b, per_prefill_token_s=a, per_decode_seq_s=0.0,
                      max_batched_tokens=max_batched_tokens, max_num_seqs=max_num_seqs)


def validate_against_engine(sessions: int = 8, seed: int = 0, max_steps: int = 10,
                            on_call: Any = None) -> dict[str, Any]:
    """Run ``saga vllm compare`` and the simulator configured as that engine; compare them.

    The simulator gets the engine's KV pool (blocks of 32 tokens), batch limits, the same
    sessions (arrival, calls, tools, the output lengths the engine produced) and a step-time
    model fitted to each engine run's call latencies.
    """
    import dataclasses

    from saga.bench.sim import SimConfig, simulate
    from saga.bench.workload import Call, Task, Workload, WorkloadSpec
    from saga.policy.presets import PRESETS
    from saga.policy.spec import ClusterSpec
    from saga.vllm.compare import CompareConfig, run_compare
    from saga.vllm.workload import WorkloadConfig

    cfg = CompareConfig(workload=WorkloadConfig(sessions=sessions, seed=seed,
                                                max_steps=max_steps))
    measured = run_compare(cfg, on_call=on_call)
    stock, saga = measured.run("stock"), measured.run("saga")
    assert stock is not None and saga is not None
    fit_max = (cfg.kv_blocks - 1) * cfg.block_size
    max_tokens = min(fit_max, cfg.workload.max_context + 64)
    # Each engine's own measured speed: on a shared machine the two runs see different load.
    costs = {run.name: fit_engine_cost(
        [(c.prompt_tokens - c.cached_tokens, c.output_tokens, c.latency_s)
         for s in run.sessions for c in s.calls], max_tokens, max(8, cfg.workload.sessions))
        for run in (stock, saga)}
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
    workload = Workload(WorkloadSpec("mixed", len(tasks), 1.0, seed), tasks)
    one = ClusterSpec(nodes=1, gpus_per_node=1, gpu_name="cpu", gpu_hbm_bytes=2**34, tp=1,
                      instances=1, nvlink_bytes_per_s=1e9, ib_bytes_per_s=1e9,
                      dram_bytes_per_node=2**34, cpus_per_node=2)
    sim_cfg = SimConfig(cluster=one, block_tokens=cfg.block_size, hbm_blocks=cfg.kv_blocks - 1,
                        dram_blocks=0)
    # SAGA inside vLLM: WA-LRU, TTL pins and the hybrid queue (no DRAM tier, AFS opt-in).
    saga_vllm = dataclasses.replace(PRESETS["saga"], name="saga-in-vllm", dram_tier=False,
                                    prefetch=False, fairness=None, stealing=None)
    sims = {"stock": simulate(PRESETS["vllm_apc"], workload, sim_cfg, costs["stock"]),
            "saga": simulate(saga_vllm, workload, sim_cfg, costs["saga"])}
    rows = []
    for name, run in (("stock", stock), ("saga", saga)):
        sim = sims[name]
        rows.append({
            "engine": name,
            "fitted prefill ms/token": round(costs[name].per_prefill_token_s * 1e3, 3),
            "fitted decode ms/iteration": round(costs[name].fixed_s * 1e3, 2),
            "measured TCT (s)": round(run.tct_mean_s, 3),
            "simulated TCT (s)": round(sim.tct_mean_s, 3),
            "TCT error": f"{100 * _error(sim.tct_mean_s, run.tct_mean_s):+.1f} %",
            "measured recomputed tokens": run.recomputed_tokens,
            "simulated recomputed tokens": sim.recomputed_tokens,
            "recomputed error":
                f"{100 * _error(sim.recomputed_tokens, run.recomputed_tokens):+.1f} %",
        })
    cols = list(rows[0])
    md = ["Simulated vs measured on the CPU vLLM engine of `saga vllm compare` "
          f"({sessions} sessions, seed {seed}, {cfg.kv_blocks} KV blocks of {cfg.block_size} "
          "tokens). The simulator's step time is fitted to each engine run's own call latencies "
          "(least squares: prefill seconds per token, seconds per decode iteration), so the "
          "comparison tests the simulated batching, queueing and caching given the measured "
          "speed; the cache behaviour (recomputed tokens) is not fitted at all. vidur reports "
          "< 9 % error for its GPU profiles; larger errors are shown as they are.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return {"rows": rows, "markdown": md,
            "cost_fit": {k: dataclasses.asdict(v) for k, v in costs.items()},
            "measured": measured.to_dict(), "simulated": {k: v.to_dict()
                                                          for k, v in sims.items()}}


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
) -> None:
    """Simulated vs measured TCT and recomputed tokens on the real (CPU) vLLM engine."""
    with user_errors():
        try:
            import saga.vllm  # noqa: F401
        except ModuleNotFoundError:
            raise typer.BadParameter(
                "needs saga-vllm: pip install 'saga[vllm]' (or uv sync --all-packages)"
            ) from None
        import os

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        with progress() as bar:
            task = bar.add_task("real engine: stock then SAGA", total=None)
            result = validate_against_engine(sessions, seed, max_steps,
                                             on_call=lambda name, n: bar.advance(task))
        table = Table(title="Simulator validation against the real engine",
                      title_justify="left")
        for c in result["rows"][0]:
            table.add_column(c)
        for r in result["rows"]:
            table.add_row(*(str(v) for v in r.values()))
        console.print(table)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "validation.json").write_text(json.dumps(result, indent=2, default=str))
            console.print(f"validation: {out / 'validation.json'}")
            report = out / "report.md"
            if report.is_file():
                report.write_text(with_validation(report.read_text(), result["markdown"]))
                console.print(f"report updated: {report}")
