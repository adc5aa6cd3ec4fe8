"""Every table the CLI prints fits 80 terminal columns with no cell cut short (no ``…``).

Cheap commands run through typer's runner with ``COLUMNS=80``; the expensive ones (a real vLLM
engine, the simulator validation, the demo's workflow model) have their table-building
functions rendered on a ``Console(width=80)`` from a small real result.
"""

from __future__ import annotations

import io

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from saga.cli import render
from saga.cli.main import app
from saga.cli.render import fit_table, print_table

WIDTH = 80
runner = CliRunner(env={"COLUMNS": str(WIDTH)})


def assert_fits(text: str) -> None:
    wide = [line for line in text.splitlines() if cell_len(line) > WIDTH]
    assert not wide, f"{len(wide)} line(s) wider than {WIDTH}:\n" + "\n".join(wide)
    cut = [line for line in text.splitlines() if "…" in line]
    assert not cut, "cells cut short:\n" + "\n".join(cut)


def rendered(table: Table, keep: int = 1) -> str:
    buf = io.StringIO()
    print_table(table, keep=keep, out=Console(width=WIDTH, file=buf, color_system=None))
    text = buf.getvalue()
    assert_fits(text)
    return text


def invoke(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    assert_fits(res.output)
    return res.output


def test_the_shared_console_follows_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise the checks below would measure some other width."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    assert render.console.width == WIDTH


@pytest.mark.parametrize("args", [
    ("show", "presets", "--verbose"),
    ("show", "spec"),
    ("show", "native"),
    ("bench", "rates"),
    ("integrations", "check", "--no-probe"),
    ("cluster", "plan"),
    ("replay", "--limit", "300", "--capacity-blocks", "200,1000",
     "--policies", "lru,prefix_lru,radix_lru,walru,kvflow,belady"),
    ("kernels", "bench", "--sizes", "1000,100000", "--python-max-n", "1000"),
    ("coordinator", "bench", "--calls", "200", "--concurrency", "1,4", "--stream-routes",
     "2000", "--max-seconds", "2"),
    ("coordinator", "soak", "--sessions", "200", "--concurrency", "20", "--workers", "2",
     "--max-seconds", "20"),
], ids=lambda a: "-".join(a[:2]))
def test_cheap_command_fits(args: tuple[str, ...]) -> None:
    invoke(*args)


def test_show_presets_keeps_every_policy_parameter() -> None:
    from saga.policy import PRESETS

    text = " ".join(invoke("show", "presets").split())
    for name, preset in PRESETS.items():
        assert name in text
        # Parameters may wrap at a space, never lose a character.
        if preset.eviction.kwargs:
            assert preset.eviction.describe().replace(" ", "") in text.replace(" ", "")


def test_bench_tables_fit() -> None:
    """Every table of the paper but 3c (table 3's builder on 16 instances), on the smoke grid."""
    out = invoke("bench", "--smoke", "--seeds", "1", "--workers", "1",
                 "--tables", "3,4,5,6,7,8,9,10")
    for t in ("3", "4", "5", "6", "7", "8", "9", "10"):
        assert f"Table {t}:" in out
    assert "(1/2)" in out           # a wide table was split, not cut


def test_a_table_too_wide_is_split_with_its_key_and_nothing_lost() -> None:
    table = Table(title="wide")
    for c in ("key", *(f"column {i}" for i in range(8))):
        table.add_column(c)
    table.add_row("row-a", *(f"{i * 1_000_003:,}" for i in range(8)))
    parts = fit_table(table, WIDTH)
    assert len(parts) > 1 and all(p.columns[0].header == "key" for p in parts)
    text = rendered(table)
    assert text.count("row-a") == len(parts)
    for i in range(8):
        assert f"{i * 1_000_003:,}" in text


def test_long_free_text_wraps_instead_of_being_cut() -> None:
    table = Table()
    table.add_column("name")
    table.add_column("detail", overflow="fold")
    table.add_row("k", "x" * 150 + " and then" + " words" * 20)
    text = rendered(table)
    assert text.count("x") == 150 and text.count("words") == 20     # folded, all there


def test_demo_workflow_table_fits() -> None:
    """The demo's own table (its others are `show spec`'s, `replay`'s, `vllm compare`'s and
    `bench`'s, checked here too)."""
    from saga.cli.demo import workflow_table
    from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path, parse_agent

    with bundled_trace_path(BUNDLED_AGENT).open(encoding="utf-8") as fh:
        agents = parse_agent(fh, name="SWE-bench agent sessions (bundled)")
    table, _ = workflow_table(agents)
    rendered(table)


def test_vllm_compare_and_validation_tables_fit() -> None:
    """One real compare run (the cheapest: 2 sessions, 2 calls each) feeds the compare table,
    the over-seeds table and the simulator-validation table."""
    pytest.importorskip("vllm")
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from saga.cli.bench import validate_against_engine, validation_table
    from saga.cli.vllm import compare_table, seeds_table
    from saga.vllm.compare import CompareConfig, run_compare
    from saga.vllm.workload import WorkloadConfig

    cfg = CompareConfig(workload=WorkloadConfig(sessions=2, seed=0, max_steps=2,
                                                tool_scale=0.02, max_context=600),
                        kv_blocks=24, record_steps=1_000_000)
    result = run_compare(cfg)
    assert "recomputed prompt tokens" in rendered(compare_table(result))
    assert "geomean" in rendered(seeds_table([result, result]))
    validation = validate_against_engine(measured=result)
    assert "TCT error" in rendered(validation_table(validation))
