"""The tables with another SAGA preset as SAGA (``Scale.saga``, ``saga bench --saga``): the same
grid, seeds and peers; SAGA's rows and table 6's ablations from that preset, stored apart."""

from __future__ import annotations

import dataclasses

import pytest

from saga.bench.jobs import Scale, SimJob, Variant
from saga.bench.runner import plan_jobs, run_bench
from saga.bench.store import job_hash
from saga.bench.tables import (
    ABLATION_SETS,
    ABLATIONS,
    SENSITIVITY,
    TABLES,
    check_saga,
    sensitivity_params,
)
from saga.bench.tables_map import MAP_TABLES
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS


def _variants(jobs: list[object]) -> set[str]:
    return {j.variant.preset for j in jobs if isinstance(j, SimJob)}


def test_every_table_keeps_its_grid_and_swaps_only_saga(tiny_scale: Scale) -> None:
    eta = dataclasses.replace(tiny_scale, saga="saga_eta")
    for tid, t in {**TABLES, **MAP_TABLES}.items():
        if tid == "9":
            continue  # its rows are the parameters the preset has (below)
        base, other = t.jobs(tiny_scale, [0, 1]), t.jobs(eta, [0, 1])
        assert len(base) == len(other), tid
        swapped = {p.replace("saga_eta", "saga") for p in _variants(other)}
        assert swapped - {"saga_no_eta", "saga_no_value_ttl"} <= _variants(base), tid
        assert not any(p.startswith("saga") and not p.startswith("saga_eta")
                       for p in _variants(other)), tid
    # Peers' runs are the same runs (shared in a store), SAGA's are named by their preset.
    base = {job_hash(j) for j in TABLES["3"].jobs(tiny_scale, [0])}
    other = {job_hash(j) for j in TABLES["3"].jobs(eta, [0])}
    assert len(base & other) == len(base) - 2  # SWE and Web of SAGA


def test_table_6_ablates_saga_eta(tiny_scale: Scale) -> None:
    eta = dataclasses.replace(tiny_scale, saga="saga_eta")
    run = run_bench(["6"], eta, [0, 1], workers=1)
    (t6,) = run.tables
    labels = [r["configuration"] for r in t6.rows]
    assert labels == ["full SAGA", "w/o affinity", "w/o eta", "w/o ttl", "w/o value_ttl",
                      "w/o stealing", "w/o prefetch", "w/o afs"]
    assert set(t6.raw["tct_s"]) == set(ABLATION_SETS["saga_eta"])
    assert any("`saga_eta`" in n for n in t6.notes)
    assert len(plan_jobs(["6"], tiny_scale, [0])) == len(ABLATIONS)


def test_sensitivity_keeps_only_the_parameters_a_preset_has() -> None:
    assert sensitivity_params("saga") == list(SENSITIVITY)
    eta = sensitivity_params("saga_eta")
    assert {"alpha", "beta", "gamma"}.isdisjoint(eta) and "ttl_max" in eta and "theta" in eta


def test_every_saga_that_can_play_saga_is_a_saga_preset() -> None:
    for name, rows in ABLATION_SETS.items():
        assert rows[0] == name and all(PRESETS[p].is_saga for p in rows)
    with pytest.raises(SagaConfigError, match="saga_eta"):
        check_saga("vllm_apc")
    assert Variant("saga_eta") != Variant("saga")
