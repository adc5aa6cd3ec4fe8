"""`saga demo`: SAGA's main job on the bundled data, end to end, in about two minutes.

1. The reference deployment, computed (KV per token, blocks per instance).
2. The workflow model: pattern inference learns the SWE-bench agent's AEG from the bundled real
   sessions, and predicts calls per task and reuse at each tool.
3. KV-cache replay of the bundled Mooncake slice and of the agent sessions at capacities sized
   from one reference instance's HBM, online policies side by side with the Bélády oracle.
4. When saga-vllm is installed (the workspace's dev install has it): a short agent workload on
   stock vLLM and on SAGA inside a real vLLM engine (~50 s on 2 cores; ``--no-vllm`` skips it).
5. The quick simulated bench: the paper's tables 3, 4 and 6 computed by saga-bench's simulator
   on one simulated node (``saga bench``; ~1 min on 2 cores; ``--no-bench`` skips it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from saga.aeg import PatternInference
from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, replay_table, write_json
from saga.cli.replay import run_replays
from saga.policy.replay import ReplayResult
from saga.policy.spec import check_reference_invariants
from saga.policy.traces import (
    BUNDLED_AGENT,
    Trace,
    bundled_trace_path,
    parse_agent,
    parse_mooncake,
)
from saga.policy.workflow import SessionHinter

MOONCAKE_POLICIES = ["lru", "prefix_lru", "walru", "belady"]
AGENT_POLICIES = ["lru", "prefix_lru", "walru", "kvflow", "belady"]


def instance_capacity_blocks(block_tokens: int) -> int:
    """Blocks of ``block_tokens`` tokens that one reference instance's KV pool holds."""
    r = check_reference_invariants()
    return int(r.kv_hbm_bytes_per_instance // (block_tokens * r.kv_bytes_per_token))


def workflow_table(trace: Trace) -> tuple[Table, dict[str, Any]]:
    """Learn the agent's AEG from the bundled sessions and show what it predicts."""
    hinter = SessionHinter(PatternInference())
    for sess in trace.sessions:
        for req in (r for r in trace.requests if r.session_id == sess.session_id):
            hinter.observe_call(sess.session_id, req.input_tokens, req.output_tokens,
                                req.pending_tool)
        hinter.finish(sess.session_id, sess.agent_type)
    agent = trace.sessions[0].agent_type
    inf = hinter.inference
    aeg = inf.aeg_for(agent)
    calls = [sum(1 for s in sess.steps if s.kind == "llm") for sess in trace.sessions]
    observed = sum(calls) / len(calls)
    table = Table(title=f"Workflow model of {agent!r}, learned from {len(calls)} real sessions",
                  title_justify="left")
    table.add_column("prediction")
    table.add_column("value", justify="right")
    rows: dict[str, Any] = {
        "AEG source": inf.aeg_source(agent),
        "confidence": round(inf.confidence(agent), 3),
        "nodes / edges": f"{len(aeg.nodes)} / {len(aeg.edges)}",
        "expected LLM calls per task (AEG)": round(aeg.expected_total_llm_calls(), 1),
        "observed LLM calls per task (mean)": round(observed, 1),
        "expected work per task (tokens)": round(aeg.expected_total_work()),
    }
    for tool in ("python", "grep", "submit"):
        h = hinter.hint(agent, tool)
        rows[f"P_reuse while waiting on {tool!r}"] = round(h.reuse_prob, 3)
    for k, v in rows.items():
        table.add_row(k, str(v))
    return table, rows


def vllm_short_compare(payload: dict[str, Any]) -> None:
    """When saga-vllm and vLLM are installed: a short stock-vs-SAGA run in a real engine."""
    try:
        from saga.cli.vllm import compare_table, goal_lines, run_with_progress
        from saga.vllm.compare import CompareConfig
        from saga.vllm.workload import WorkloadConfig
    except ModuleNotFoundError:
        console.print("[dim]vLLM part skipped: saga-vllm is not installed "
                      "(pip install 'saga[vllm]').[/]")
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    config = CompareConfig(workload=WorkloadConfig(sessions=8, max_steps=5, tool_scale=0.5, seed=0),
                           kv_blocks=96)
    console.print("[bold]Real vLLM engine[/] (tiny random Llama, CPU): the same agent workload "
                  "on stock vLLM with prefix caching and on SAGA")
    result = run_with_progress(config)
    print_table(compare_table(result))
    for line in goal_lines(result):
        console.print(line)
    payload["vllm_compare"] = result.to_dict()


def demo(
    out: Annotated[Path | None, typer.Option(help="Also write demo.json into this folder.")] = None,
    vllm: Annotated[bool, typer.Option(
        help="Run a short stock-vs-SAGA comparison in a real vLLM engine when saga-vllm is "
             "installed (~50 s; `saga vllm compare` is the full one).")] = True,
    bench: Annotated[bool, typer.Option(
        "--bench/--no-bench",
        help="Finish with the quick simulated bench (`saga bench`: tables 3, 4, 6 on one "
             "simulated node, ~1 min).")] = True,
) -> None:
    """Run SAGA's main job on the bundled traces: learn the workflow, replay the KV cache."""
    with user_errors():
        from saga.cli.show import spec_table

        print_table(spec_table())
        with bundled_trace_path().open(encoding="utf-8") as fh:
            mooncake = parse_mooncake(fh, name="mooncake (bundled slice)")
        with bundled_trace_path(BUNDLED_AGENT).open(encoding="utf-8") as fh:
            agents = parse_agent(fh, name="SWE-bench agent sessions (bundled)")
        table, model = workflow_table(agents)
        print_table(table)

        cap = instance_capacity_blocks(mooncake.block_tokens)
        payload: dict[str, Any] = {"workflow_model": model, "replays": {}}
        runs: list[tuple[Trace, list[str], list[int]]] = [
            (mooncake, MOONCAKE_POLICIES, [cap, 4 * cap]),
            (agents, AGENT_POLICIES, [cap // 2, cap]),
        ]
        for trace, policies, caps in runs:
            results: list[list[ReplayResult]] = run_replays(trace, policies, caps, 0)
            console.print(f"[bold]{trace.name}[/]: {len(trace.requests):,} requests, "
                          f"{trace.block_refs:,} references to {trace.block_tokens}-token "
                          f"blocks; one reference instance holds {cap:,} such blocks")
            for c, rows in zip(caps, results, strict=True):
                print_table(replay_table(f"capacity {c:,} blocks", rows))
                console.print(verdict(rows))
            payload["replays"][trace.name] = [r.to_dict() for rows in results for r in rows]
        if vllm:
            vllm_short_compare(payload)
        if bench:
            from saga.cli.bench import run_and_show

            console.print("[bold]Simulated cluster[/]: the quick `saga bench` (tables 3, 4, 6)")
            run = run_and_show(None, False, None, None)
            payload["bench"] = {t.id: t.rows for t in run.tables}
        if out is not None:
            write_json(out / "demo.json", payload)
            console.print(f"wrote {out / 'demo.json'}")


def verdict(rows: list[ReplayResult]) -> str:
    """One line saying, from the numbers above, how WA-LRU did against LRU and prefix LRU."""
    by = {r.policy: r for r in rows}
    walru = by.get("walru")
    if walru is None:
        return ""
    parts = []
    for base in ("lru", "prefix_lru"):
        b = by.get(base)
        if b is None or b.miss_blocks == 0:
            continue
        change = (walru.miss_blocks - b.miss_blocks) / b.miss_blocks
        word = "fewer" if change < 0 else "more"
        parts.append(f"{abs(change):.1%} {word} misses than {base}")
    return "WA-LRU: " + ", ".join(parts) if parts else ""
