"""``report.md`` is written by two commands: ``saga bench --out`` (the simulated tables) and
``saga bench live --out`` (the live section). Each rewrites only its own sections, in either
order, however often."""

from __future__ import annotations

from pathlib import Path

from saga.bench.jobs import QUICK
from saga.bench.report import kept_sections, write_report
from saga.bench.runner import BenchRun
from saga.coordinator.gateway.live_report import heading, write_live
from saga.coordinator.gateway.live_results import (
    CallRecord,
    RunResult,
    TaskRecord,
    over_seeds,
    summarize,
)

LIVE = heading(2, "tiny")
VALIDATION = "## Simulator validation against the live multi-engine run"


def _live(out: Path, tct: float) -> None:
    """What `saga bench live` writes: one run of one system, mean TCT ``tct``."""
    calls = (CallRecord("a", 0, 0.0, tct, 200, 40, 40, 0, 0, 4),)
    run = RunResult("saga", 0, 0, [TaskRecord("a", 0.0, tct, calls, 1)],
                    [{"queries": 40.0, "hits": 0.0}], {}, tct, 0.0, 0.0)
    run.figures = summarize(run)
    data = {"command": "saga bench live", "summary": over_seeds([run], ["saga"]), "ratios": {},
            "machine": {"cpus": 2, "load_min": 0.0, "load_max": 1.0},
            "config": {"engines": 2, "model": "tiny", "kv_blocks": 24, "dram_blocks": 8,
                       "tasks": 1, "calls": 1, "workload": "mixed", "max_context": 700,
                       "tool_scale": 0.1, "seeds": [0], "kv_moves": True}}
    write_live(data, [run], out)


def _bench(out: Path) -> str:
    """What `saga bench --out` writes (no tables: the report's frame only)."""
    run = BenchRun(QUICK, [0], [], 0, 0.0, 0, 0.0)
    return write_report(run, out, "saga bench").read_text()


def test_bench_keeps_the_live_section_and_live_keeps_the_bench(tmp_path: Path) -> None:
    _live(tmp_path, 1.25)
    report = tmp_path / "report.md"
    report.write_text(report.read_text() + f"\n{VALIDATION}\n\nsim vs live\n")
    text = _bench(tmp_path)
    assert text.startswith("# SAGA benchmark report")
    assert text.count(LIVE) == 1 and text.count(VALIDATION) == 1 and "| 1.25 |" in text
    assert text.index("## Cost model check") < text.index(LIVE) < text.index(VALIDATION) \
        < text.index("## Versions")
    assert _bench(tmp_path) == text                      # again: nothing repeats or grows
    _live(tmp_path, 2.5)                                 # a new live run replaces its section
    text = report.read_text()
    assert text.count(LIVE) == 1 and "| 2.50 |" in text and "| 1.25 |" not in text
    assert text.startswith("# SAGA benchmark report") and "## Versions" in text


def test_only_sections_the_bench_does_not_write_are_kept() -> None:
    old = ("# SAGA benchmark report (quick)\n\nintro\n\n## Table 9: gone\n\nrow\n\n"
           f"{LIVE}\n\nlive row\n\n## Versions\n\n| x | 1 |\n{VALIDATION}\n\nv\n")
    kept = kept_sections(old, ["## Table ", "## Versions"])
    assert kept == [LIVE, "", "live row", "", VALIDATION, "", "v", ""]
    assert kept_sections("# title only\n", ["## Table "]) == []
