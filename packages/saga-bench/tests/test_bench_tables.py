"""Every table function produces well-formed output on a tiny scale; reports are written."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from saga.bench import paper
from saga.bench.jobs import (
    FULL,
    QUICK,
    Job,
    ReplayJob,
    Scale,
    SimJob,
    Variant,
    build_preset,
    with_nodes,
)
from saga.bench.report import write_report
from saga.bench.runner import parse_tables, plan_jobs, run_bench
from saga.bench.stats import geomean, mean_std, speedup, welch_p
from saga.bench.tables import TABLES
from saga.policy.errors import SagaConfigError


def test_all_tables_build_and_report(tiny_scale: Scale, tmp_path: Path) -> None:
    run = run_bench(list(TABLES), tiny_scale, [0], workers=1)
    assert [t.id for t in run.tables] == list(TABLES)
    for t in run.tables:
        assert t.rows and all(set(r) == set(t.columns) for r in t.rows)
        assert any(c.startswith("paper") for c in t.columns), t.id
    path = write_report(run, tmp_path, "saga bench --tables all")
    text = path.read_text()
    assert "simulated" in text and "Table 3" in text and "Table 10" in text
    for t in run.tables:
        data = json.loads((tmp_path / f"table{t.id}.json").read_text())
        assert data["rows"] == json.loads(json.dumps(t.rows))
        with (tmp_path / f"table{t.id}.csv").open() as f:
            assert len(list(csv.DictReader(f))) == len(t.rows)
        assert (tmp_path / f"table{t.id}.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seeds_same_tables_with_any_worker_count(tiny_scale: Scale) -> None:
    a = run_bench(["3"], tiny_scale, [0, 1], workers=1)
    b = run_bench(["3"], tiny_scale, [0, 1], workers=2)
    assert a.tables[0].rows == b.tables[0].rows
    def dump(results: dict[Job, dict[str, Any]]) -> list[str]:
        # JSON text, so NaN (no pins: TTL accuracy undefined) compares equal to itself.
        timing = ("wall_s", "cpu_s")
        return sorted(json.dumps([repr(j), {k: v for k, v in r.items() if k not in timing}],
                                 sort_keys=True) for j, r in results.items())

    assert dump(a.results) == dump(b.results)


def test_jobs_are_shared_across_tables(tiny_scale: Scale) -> None:
    jobs = plan_jobs(["3", "6", "7", "10"], tiny_scale, [0])
    assert len(jobs) == len(set(jobs))
    saga = SimJob(Variant("saga"), tiny_scale.workload("swe", 0), tiny_scale)
    assert saga in jobs
    assert ReplayJob("mooncake", 0, tiny_scale) not in jobs


def test_parse_tables_and_variants() -> None:
    assert parse_tables("3, 6") == ["3", "6"]
    assert parse_tables(None) == list(TABLES)
    with pytest.raises(SagaConfigError, match="unknown table"):
        parse_tables("3,11")
    p = build_preset(Variant("saga", (("alpha", 0.4), ("queue", "dfs"))))
    assert p.eviction.kwargs["alpha"] == 0.4
    assert p.queue.factory.__name__ == "DFSQueue"
    with pytest.raises(SagaConfigError, match="unknown parameter"):
        build_preset(Variant("saga", (("omega", 1.0),)))
    assert with_nodes(QUICK, 8).instances == 16


def test_stats() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.4142135))
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert speedup([4.0, 9.0], [2.0, 3.0]) == pytest.approx((2 * 3) ** 0.5)
    assert welch_p([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) < 0.001
    assert welch_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_paper_values_are_reference_only() -> None:
    assert paper.TABLE3_TCT_S["saga"] == (203.4, 82.1)
    assert "paper_reference.md" in paper.SOURCE


def test_seed_caps_cut_a_tables_default_seeds_and_say_so(tiny_scale: Scale) -> None:
    """A scale's cap runs a table on its first seeds and notes it; seeds asked for run whole."""
    capped = dataclasses.replace(tiny_scale, seeds=2, seed_caps=(("7", 1),))
    assert capped.seeds_for("7", [0, 1]) == [0] and capped.seeds_for("6", [0, 1]) == [0, 1]
    jobs = plan_jobs(["7"], capped, [0, 1])
    assert {j.workload.seed for j in jobs if isinstance(j, SimJob)} == {0}
    run = run_bench(["7"], capped, workers=1)
    assert any("1 of the 2 seeds" in n for n in run.tables[0].notes)
    run = run_bench(["7"], capped, [0, 1], workers=1)
    assert not any("of the 2 seeds" in n for n in run.tables[0].notes)
    assert {j.workload.seed for j in run.results if isinstance(j, SimJob)} == {0, 1}


def test_full_caps_its_sweeps_not_its_headline() -> None:
    """``--full`` keeps table 3 (and 4, 10) at 10 seeds; the sweeps and 3c are cut to fit 15 min."""
    assert FULL.seeds == 10
    for t in ("3", "4", "10"):
        assert len(FULL.seeds_for(t, range(10))) == 10
    assert len(FULL.seeds_for("3c", range(10))) == 1
    assert all(len(FULL.seeds_for(t, range(10))) == 5 for t in ("5", "6", "7", "8", "9"))
