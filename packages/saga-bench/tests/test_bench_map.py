"""The regime map: its grid, its cells' verdicts, the second phase (ablation where SAGA leads
most), tool-latency scaling, files and determinism — on a tiny scale and a reduced grid."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from saga.bench import tables_map
from saga.bench.jobs import QUICK, SMOKE, Job, Scale, SimJob, Variant, build_preset, run_job
from saga.bench.report import write_report
from saga.bench.runner import TABLE_DEFS, parse_tables, plan_jobs, run_bench
from saga.bench.store import RunStore
from saga.bench.tables import ABLATIONS, SYSTEMS, TABLES
from saga.bench.tables_map import (
    CELLS,
    DRAM_GB_PER_INSTANCE,
    LOADS,
    PEERS,
    TOOL_SCALES,
    WORKLOADS,
    Cell,
    cell_job,
    compare_cell,
    map_summary,
)
from saga.bench.workload import WorkloadSpec, build_workload
from saga.policy.errors import SagaConfigError
from saga.policy.presets import SAGA
from saga.policy.spec import GiB


def test_grid_is_the_issue_grid() -> None:
    assert len(LOADS) == 3 and list(LOADS) == sorted(set(LOADS))
    assert LOADS[-1] == QUICK.swe_tasks // QUICK.instances  # the highest: tables 3/6's load
    assert DRAM_GB_PER_INSTANCE == (0, 64, 512)
    assert TOOL_SCALES == (0.3, 1.0, 3.0)
    assert WORKLOADS == ("swe", "trace-swe")
    assert tuple(p for p in SYSTEMS if p != SAGA.name) == PEERS and len(PEERS) == len(SYSTEMS) - 1
    assert set(CELLS) == {Cell(*c) for c in itertools.product(
        WORKLOADS, LOADS, DRAM_GB_PER_INSTANCE, TOOL_SCALES)} and len(CELLS) == 54


def test_map_is_asked_for_by_id_only() -> None:
    assert parse_tables("map") == ["map", "map-ablation"]
    assert parse_tables(None) == list(TABLES) and "map" not in parse_tables(None)
    assert parse_tables("3,4,6") == ["3", "4", "6"]
    with pytest.raises(SagaConfigError, match="map"):
        parse_tables("mapp")


def test_every_cell_and_system_is_planned_and_tierless_presets_share_runs() -> None:
    jobs = plan_jobs(["map"], SMOKE, [0])
    tiered = [p for p in SYSTEMS if build_preset(Variant(p)).dram_tier]
    untiered = len(SYSTEMS) - len(tiered)
    per_row = untiered + len(tiered) * len(DRAM_GB_PER_INSTANCE)
    assert len(jobs) == per_row * len(CELLS) // len(DRAM_GB_PER_INSTANCE)
    cell = Cell("swe", LOADS[0], 64, 3.0)
    ours = cell_job(SMOKE, cell, Variant(SAGA.name), 0)
    block = ours.scale.sim_config().block_tokens * ours.scale.sim_config().model.kv_bytes_per_token
    assert ours.scale.sim_config().dram_blocks == 64 * GiB // block
    assert ours.workload.tool_scale == 3.0 and ours.workload.kind == "swe"
    for p in (p for p in SYSTEMS if p not in tiered):
        runs = {cell_job(SMOKE, dataclasses.replace(cell, dram_gb=d), Variant(p), 0)
                for d in DRAM_GB_PER_INSTANCE}
        assert len(runs) == 1 and next(iter(runs)).scale.sim_config().dram_blocks is None
    # At the scale's own load, x1 tools, a tierless peer's cell run is table 3's run.
    top = Cell("swe", LOADS[-1], 0, 1.0)
    assert cell_job(QUICK, top, Variant("vllm"), 0) in plan_jobs(["3"], QUICK, [0])


@pytest.mark.parametrize("kind", ["swe", "trace-swe"])
def test_tool_scale_multiplies_tool_time_only(kind: str) -> None:
    base = build_workload(WorkloadSpec(kind, 6, 1.0, 3))
    slow = build_workload(WorkloadSpec(kind, 6, 1.0, 3, tool_scale=3.0))
    tool = [sum(c.tool_s for c in t.calls) for t in base.tasks]
    assert sum(tool) > 0
    assert [sum(c.tool_s for c in t.calls) for t in slow.tasks] == pytest.approx(
        [3 * x for x in tool])
    assert ([(c.new_tokens, c.output_tokens, c.tool) for t in base.tasks for c in t.calls]
            == [(c.new_tokens, c.output_tokens, c.tool) for t in slow.tasks for c in t.calls])
    with pytest.raises(SagaConfigError, match="tool_scale"):
        WorkloadSpec(kind, tool_scale=0.0)


def _fake(cell: Cell, tct: dict[str, list[float]], scale: Scale) -> dict[Job, dict[str, Any]]:
    return {cell_job(scale, cell, Variant(p), s): {"tct_mean_s": v}
            for p, vals in tct.items() for s, v in enumerate(vals)}


@pytest.mark.parametrize(("ours", "verdict"), [([50.0, 52.0, 51.0], "win"),
                                               ([99.0, 101.0, 103.0], "tie"),
                                               ([150.0, 152.0, 151.0], "loss")])
def test_cell_names_the_best_peer_and_a_verdict(ours: list[float], verdict: str) -> None:
    cell = CELLS[0]
    tct = {p: [200.0 + i, 201.0 + i, 199.0 + i] for i, p in enumerate(PEERS)}
    tct[PEERS[3]] = [100.0, 102.0, 98.0]
    c = compare_cell(SMOKE, [0, 1, 2], _fake(cell, {**tct, SAGA.name: ours}, SMOKE), cell)
    assert c["best_peer"] == PEERS[3] and c["verdict"] == verdict
    assert c["ratio"] == pytest.approx(sum(ours) / 300.0)
    one = compare_cell(SMOKE, [0], _fake(cell, {**tct, SAGA.name: ours}, SMOKE), cell)
    assert one["verdict"] == "tie" and math.isnan(one["p"])  # one seed: no test, no verdict


def test_summary_counts_what_the_cells_say() -> None:
    cells = [{**dataclasses.asdict(c), "verdict": v, "ratio": r, "best_peer": "vllm", "p": 0.01}
             for c, v, r in zip(CELLS, itertools.cycle(["win", "win", "loss"]),
                                itertools.cycle([0.5, 0.8, 1.2]), strict=False)]
    text = "\n".join(map_summary(cells, QUICK))
    assert "SAGA wins in 18 of 27 cells, ties in 0, loses in 9" in text
    assert "0.50x vllm" in text and "1.20x vllm" in text and "vllm in 27 cells" in text


MINI = Scale("mini", nodes=1, seeds=2, swe_tasks=4, web_tasks=4, swe_rate_per_instance=0.5)
"""Two SWE tasks per instance: loads 8, 24, 48 become 1, 1, 2 tasks per instance."""


@pytest.fixture
def small_grid(monkeypatch: pytest.MonkeyPatch) -> tuple[Cell, ...]:
    """Two cells (one per workload), three systems (one peer with a DRAM tier), two ablations."""
    cells = (Cell("swe", LOADS[-1], 512, 0.3), Cell("trace-swe", LOADS[0], 64, 3.0))
    monkeypatch.setattr(tables_map, "CELLS", cells)
    monkeypatch.setattr(tables_map, "SYSTEMS", ("vllm_apc", "continuum", SAGA.name))
    monkeypatch.setattr(tables_map, "PEERS", ("vllm_apc", "continuum"))
    monkeypatch.setattr(tables_map, "ABLATIONS", (SAGA.name, "saga_no_ttl"))
    return cells


def test_map_runs_writes_its_files_and_repeats(small_grid: tuple[Cell, ...],
                                               tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run = run_bench(parse_tables("map"), MINI, [0, 1], workers=1, store=store)
    m, ab = run.tables
    assert (m.id, ab.id) == ("map", "map-ablation") and len(m.rows) == len(small_grid)
    for row in m.rows:
        assert row["best peer"] in ("vllm_apc", "continuum")
        assert row["verdict"] in ("win", "tie", "loss")
    lead = min(m.raw["cells"], key=lambda c: c["ratio"])
    assert ab.raw["lead_cell"]["ratio"] == lead["ratio"]
    assert [r["configuration"] for r in ab.rows] == ["full SAGA", "w/o ttl"]
    assert set(ab.raw["default_tct_s"]) == set(ABLATIONS)  # table 6 at the default load
    path = write_report(run, tmp_path, "saga bench --tables map")
    text = path.read_text()
    assert "### Where SAGA wins, ties and loses (simulated)" in text
    assert "tablemap-swe.png" in text and "Table map-ablation" in text
    for w in WORKLOADS:
        assert (tmp_path / f"tablemap-{w}.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "tablemap.json").read_text())
    assert len(data["rows"]) == len(small_grid) and data["summary"] == m.summary
    assert len((tmp_path / "tablemap.csv").read_text().splitlines()) == len(small_grid) + 1
    resumed = run_bench(parse_tables("map"), MINI, [0, 1], workers=1, store=store,
                        resume=True)
    assert resumed.reused == resumed.jobs == run.jobs  # both phases came from the store
    assert [t.rows for t in resumed.tables] == [t.rows for t in run.tables]
    # Same seed, same numbers: the lead cell's runs again, from scratch.
    timing = ("wall_s", "cpu_s")
    for job in [j for j in run.results if isinstance(j, SimJob)
                and j.variant == Variant("saga_no_ttl")]:
        fresh = {k: v for k, v in run_job(job).items() if k not in timing}
        assert json.dumps(fresh, sort_keys=True) == json.dumps(
            {k: v for k, v in run.results[job].items() if k not in timing}, sort_keys=True)


def test_registry_holds_the_map_beside_tables_3_to_10() -> None:
    assert list(TABLE_DEFS) == [*TABLES, "map", "map-ablation"]
    assert TABLE_DEFS["map-ablation"].later_jobs is not None
    assert ABLATIONS[0] == SAGA.name
