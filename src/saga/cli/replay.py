"""`saga replay`: replay a request trace through the KV cache under several eviction policies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from saga.cli.errors import user_errors
from saga.cli.render import console, print_table, progress, replay_table, write_csv, write_json
from saga.policy.errors import SagaConfigError
from saga.policy.registry import replay_eviction_names
from saga.policy.replay import ReplayResult, make_policy, replay_policies
from saga.policy.traces import TRACE_FORMATS, Trace, bundled_trace_path, read_trace

DEFAULT_POLICIES = "lru,prefix_lru,walru,belady"


MAX_REPLAY_BLOCKS = 2**20
"""Largest cache (HBM or DRAM tier) a replay simulates: its block table is allocated up front
(~100 MB per 2^20 blocks); 2^20 blocks of 512 tokens hold far more than any trace replayed."""


def parse_int_list(text: str, what: str, maximum: int | None = None) -> list[int]:
    """``"1000,4000"`` → ``[1000, 4000]`` (each in ``[1, maximum]``); anything else is a clear
    error naming ``what``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SagaConfigError(
            f"{what} must be integers separated by commas, got {text[:60]!r}") from None
    top = maximum if maximum is not None else float("inf")
    if not values or any(not 1 <= v <= top for v in values):
        bound = f" and <= {maximum:,}" if maximum is not None else ""
        raise SagaConfigError(f"{what} must be integers >= 1{bound}, got {text[:60]!r}")
    return values


ALL_POLICIES = "all"
"""``--policies all``: every registered eviction policy, then Bélády."""


def parse_policies(text: str) -> list[str]:
    """Comma-separated policy names (``all`` expands in place), each checked."""
    names: list[str] = []
    for x in (x.strip() for x in text.split(",")):
        if x == ALL_POLICIES:
            names.extend(n for n in replay_eviction_names() if n not in names)
        elif x and x not in names:
            names.append(x)
    if not names:
        raise SagaConfigError("--policies must name at least one policy")
    for name in names:
        make_policy(name)
    return names


def load_trace(path: Path, fmt: str, *, skip_bad_lines: bool, limit: int | None) -> Trace:
    """The trace through saga-policy's reader of ``fmt`` (the readers `saga bench --trace`
    uses): bad input names the line (or file) and field."""
    return read_trace(path, fmt, skip_bad_lines=skip_bad_lines, limit=limit)


def run_replays(trace: Trace, policies: list[str], capacities: list[int],
                dram_blocks: int) -> list[list[ReplayResult]]:
    """One replay per policy and capacity, with a progress bar over all requests."""
    out: list[list[ReplayResult]] = []
    with progress() as bar:
        task = bar.add_task(f"replaying {escape(trace.name)}",
                            total=len(trace.requests) * len(policies) * len(capacities))
        for cap in capacities:
            out.append(replay_policies(trace, policies, cap, dram_blocks=dram_blocks,
                                       on_progress=lambda n: bar.advance(task, n)))
    return out


def replay(
    trace_path: Annotated[Path | None, typer.Argument(
        metavar="TRACE", help="Trace file, or a directory of trajectory JSON files (atif, "
                              "mini-swe-agent; default: the bundled Mooncake slice).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Trace format: " + ", ".join(
        TRACE_FORMATS) + ".")] = "mooncake",
    capacity_blocks: Annotated[str, typer.Option(
        help="HBM capacity in trace blocks; several as 1000,4000.")] = "2000",
    policies: Annotated[str, typer.Option(
        help="Comma-separated: " + ", ".join(replay_eviction_names()) + "; or all.")
    ] = DEFAULT_POLICIES,
    dram_blocks: Annotated[int, typer.Option(
        min=0, max=MAX_REPLAY_BLOCKS,
        help="DRAM-tier capacity in blocks (0: evicted blocks are dropped).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write results as CSV.")] = None,
    skip_bad_lines: Annotated[bool, typer.Option(
        help="Count and skip malformed lines instead of stopping.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay the first N requests.")] = None,
) -> None:
    """Replay TRACE through SAGA's cache manager and compare eviction policies."""
    with user_errors():
        capacities = parse_int_list(capacity_blocks, "--capacity-blocks", MAX_REPLAY_BLOCKS)
        names = parse_policies(policies)
        path = trace_path if trace_path is not None else bundled_trace_path()
        trace = load_trace(path, fmt, skip_bad_lines=skip_bad_lines, limit=limit)
        if not trace.requests:
            raise SagaConfigError(f"trace {str(path)!r} holds no valid request")
        for _lineno, reason in trace.skipped[:5]:
            console.print(f"[yellow]skipped[/] {escape(reason)}", highlight=False)
        if trace.skipped:
            console.print(f"[yellow]{len(trace.skipped)} malformed line(s) skipped[/]")
        for note in trace.notes:
            console.print(f"{escape(trace.name)}: {escape(note)}", highlight=False)
        results = run_replays(trace, names, capacities, dram_blocks)
        console.print(f"{escape(trace.name)}: {len(trace.requests):,} requests, "
                      f"{trace.block_refs:,} block references of {trace.block_tokens} tokens")
        for cap, rows in zip(capacities, results, strict=True):
            print_table(replay_table(f"capacity {cap:,} blocks", rows))
        flat = [r.to_dict() for rows in results for r in rows]
        if json_out is not None:
            write_json(json_out, {
                "trace": str(path), "format": fmt, "requests": len(trace.requests),
                "block_tokens": trace.block_tokens, "skipped_lines": len(trace.skipped),
                "notes": list(trace.notes),
                "results": flat})
            console.print(f"wrote {escape(str(json_out))}")
        if csv_out is not None:
            write_csv(csv_out, flat)
            console.print(f"wrote {escape(str(csv_out))}")
