"""The run store: configuration hashes, atomic run files, and resuming from them."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from saga.bench import store as store_mod
from saga.bench.jobs import FULL, QUICK, ReplayJob, Scale, SimJob, Variant, with_nodes
from saga.bench.jobs import SMOKE as TINY
from saga.bench.runner import plan_jobs, run_bench
from saga.bench.sim import SimConfig
from saga.bench.store import RunStore, atomic_write_text, job_hash
from saga.bench.tables import ABLATIONS, TABLES

SIM = SimJob(Variant("saga"), TINY.workload("swe", 0), TINY)
REPLAY = ReplayJob("swe", 0, TINY)

HASH_SCRIPT = """
import json
from saga.bench.jobs import SMOKE as TINY, ReplayJob, SimJob, Variant
from saga.bench.store import job_hash
jobs = [SimJob(Variant("saga", (("alpha", 0.2),)), TINY.workload("web", 3, tool_cv=1.5), TINY),
        ReplayJob("mooncake", 1, TINY)]
print(json.dumps([job_hash(j) for j in jobs]))
"""


def test_hash_is_the_same_in_another_process() -> None:
    here = [job_hash(SimJob(Variant("saga", (("alpha", 0.2),)),
                            TINY.workload("web", 3, tool_cv=1.5), TINY)),
            job_hash(ReplayJob("mooncake", 1, TINY))]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", HASH_SCRIPT], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == here


def test_every_planned_job_has_its_own_hash() -> None:
    jobs = plan_jobs(list(TABLES), FULL, range(3))
    hashes = {job_hash(j) for j in jobs}
    assert len(hashes) == len(jobs)


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if value is None:
        return 0.5
    if isinstance(value, str):
        return {"swe": "web", "poisson": "mooncake"}.get(value, value + "x")
    raise AssertionError(value)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(SIM.workload)])
def test_hash_changes_with_every_workload_field(name: str) -> None:
    w = dataclasses.replace(SIM.workload, **{name: _changed(getattr(SIM.workload, name))})
    assert job_hash(dataclasses.replace(SIM, workload=w)) != job_hash(SIM)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(SimConfig)])
def test_hash_changes_with_every_sim_config_field(name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    before = job_hash(SIM)
    base = TINY.sim_config(SIM.variant)
    value = getattr(base, name)
    if name == "cluster":
        new: Any = dataclasses.replace(value, nodes=2, instances=4)
    elif name == "model":
        new = dataclasses.replace(value, layers=value.layers + 1)
    elif name in ("hbm_blocks", "dram_blocks"):
        new = 1000
    else:
        new = _changed(value)
    cfg = dataclasses.replace(base, **{name: new})
    monkeypatch.setattr(Scale, "sim_config", lambda self, v=None: cfg)
    assert job_hash(SIM) != before


def test_hash_changes_with_preset_parameters_nodes_and_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = job_hash(SIM)
    assert job_hash(dataclasses.replace(SIM, variant=Variant("vllm"))) != h
    assert job_hash(dataclasses.replace(SIM, variant=Variant("saga", (("alpha", 0.4),)))) != h
    assert job_hash(dataclasses.replace(SIM, variant=Variant("saga",
                                                             (("theta_conf", 0.5),)))) != h
    two = with_nodes(TINY, 2)
    assert job_hash(dataclasses.replace(SIM, scale=dataclasses.replace(TINY, nodes=2))) != h
    assert job_hash(SimJob(Variant("saga"), two.workload("swe", 0), two)) != h
    monkeypatch.setattr(store_mod, "RESULT_FORMAT", store_mod.RESULT_FORMAT + 1)
    assert job_hash(SIM) != h


def test_hash_ignores_the_scale_name_and_seed_count() -> None:
    """The quick and full grids share the runs they have in common."""
    same = dataclasses.replace(TINY, name="other", seeds=7, seed_caps=(("3c", 3),))
    assert job_hash(SimJob(SIM.variant, SIM.workload, same)) == job_hash(SIM)
    assert job_hash(SimJob(Variant("saga"), QUICK.workload("swe", 1), QUICK)) == job_hash(
        SimJob(Variant("saga"), FULL.workload("swe", 1), FULL))


def test_replay_hash_covers_trace_seed_and_size() -> None:
    h = job_hash(REPLAY)
    assert job_hash(dataclasses.replace(REPLAY, trace="web")) != h
    assert job_hash(dataclasses.replace(REPLAY, seed=1)) != h
    assert job_hash(dataclasses.replace(REPLAY, scale=dataclasses.replace(
        TINY, replay_tasks=TINY.replay_tasks - 1))) != h
    moon = ReplayJob("mooncake", 0, TINY)
    assert job_hash(dataclasses.replace(moon, scale=dataclasses.replace(
        TINY, mooncake_requests=300))) != job_hash(moon)


def test_atomic_write_never_shows_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten sees only whole versions."""
    path = tmp_path / "run.json"
    versions = [json.dumps({"v": i, "pad": "x" * 400_000}) for i in range(40)]
    atomic_write_text(path, versions[0])
    seen: list[int] = []
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            try:
                seen.append(json.loads(text)["v"])
            except ValueError:
                bad.append(len(text))

    t = threading.Thread(target=reader)
    t.start()
    for text in versions[1:]:
        atomic_write_text(path, text)
    stop.set()
    t.join()
    assert not bad and seen == sorted(seen) and len(seen) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    atomic_write_text(path, "old")

    with pytest.raises(UnicodeEncodeError):     # fails half-way through writing
        atomic_write_text(path, "new" * 100_000 + "\ud800")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_store_round_trips_a_real_result_exactly(tmp_path: Path) -> None:
    from saga.bench.jobs import run_job

    store = RunStore(tmp_path)
    for job in (SIM, ReplayJob("mooncake", 0, TINY)):
        result = run_job(job)
        store.save(job, result)
        assert store.load(job) == result


def _tables(run: Any) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    return [(t.rows, json.loads(json.dumps(t.raw, default=str))) for t in run.tables]


def test_resume_reuses_stored_runs_and_reruns_a_corrupt_one(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    fresh = run_bench(["6"], TINY, [0], workers=1, store=store)
    files = sorted(store.dir.glob("*.json"))
    assert len(files) == fresh.jobs == len(ABLATIONS) and fresh.reused == 0
    files[0].write_text(files[0].read_text()[:50])      # a run file cut short
    (store.dir / ".x.json.123.tmp").write_text("{")     # a writer killed mid-write
    files[1].unlink()
    warnings: list[str] = []
    done: list[SimJob | ReplayJob] = []
    resumed = run_bench(["6"], TINY, [0], workers=1, store=store, resume=True,
                        warn=warnings.append, on_job=lambda j, r: done.append(j))
    assert resumed.reused == len(ABLATIONS) - 2 and len(done) == 2
    assert len(warnings) == 1 and files[0].name in warnings[0] and "corrupt" in warnings[0]
    assert _tables(resumed) == _tables(fresh)
    assert json.loads(files[0].read_text())["hash"] == files[0].stem     # rewritten whole
    assert sorted(p.name for p in store.dir.iterdir()) == sorted(p.name for p in files)


def test_without_resume_every_run_is_run_and_its_file_replaced(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_bench(["6"], TINY, [0], workers=1, store=store)
    first = {p.name: p.stat().st_mtime_ns for p in store.dir.glob("*.json")}
    again = run_bench(["6"], TINY, [0], workers=1, store=store)
    assert again.reused == 0
    after = {p.name: p.stat().st_mtime_ns for p in store.dir.glob("*.json")}
    assert after.keys() == first.keys() and all(after[k] > first[k] for k in first)


def test_resume_without_a_store_is_a_clear_error() -> None:
    from saga.policy.errors import SagaConfigError

    with pytest.raises(SagaConfigError, match="--out"):
        run_bench(["6"], TINY, [0], workers=1, resume=True)
