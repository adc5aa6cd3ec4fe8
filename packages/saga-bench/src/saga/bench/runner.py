"""Run the jobs of the requested tables (deduplicated, seeds in parallel processes), build them.

Results depend only on the jobs, never on which process ran them or in which order, so the same
seeds give the same numbers with any number of workers.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from saga.bench.jobs import Job, Scale, run_job
from saga.bench.store import RunStore
from saga.bench.tables import TABLES, TableDef, TableResult
from saga.bench.tables_map import MAP_TABLES
from saga.policy.errors import SagaConfigError

OnJob = Callable[[Job, dict[str, Any]], None]

TABLE_DEFS: dict[str, TableDef] = {**TABLES, **MAP_TABLES}
"""Every table by id: tables 3-10, then the ones asked for by id only (the regime map)."""


def parse_tables(text: str | None) -> list[str]:
    """``"3,6"`` → ``["3", "6"]``; None or empty → tables 3-10 (the map only when asked for).
    A table's companions come with it ("map" brings "map-ablation"). Unknown ids are named."""
    if not text:
        return list(TABLES)
    ids = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in ids if t not in TABLE_DEFS]
    if bad or not ids:
        raise SagaConfigError(f"--tables: unknown table(s) {bad}; choose from "
                              f"{', '.join(TABLE_DEFS)} (comma-separated, e.g. 3,6)")
    return list(dict.fromkeys(c for t in ids for c in (t, *TABLE_DEFS[t].companions)))


@dataclass
class BenchRun:
    """Everything one bench invocation computed."""

    scale: Scale
    seeds: list[int]
    tables: list[TableResult]
    jobs: int
    wall_s: float
    sim_calls: int
    sim_wall_s: float
    results: dict[Job, dict[str, Any]] = field(default_factory=dict)
    reused: int = 0
    """Runs loaded from the run store (``--resume``) instead of simulated again."""

    @property
    def calls_per_s(self) -> float:
        """Simulated LLM calls per CPU second of the simulating processes (contention-free)."""
        return self.sim_calls / self.sim_wall_s if self.sim_wall_s > 0 else 0.0


def plan_jobs(table_ids: Sequence[str], scale: Scale, seeds: Sequence[int]) -> list[Job]:
    """Every job the tables need, each once, in a stable order (slow kinds first)."""
    seen: dict[Job, None] = {}
    for t in table_ids:
        for j in TABLE_DEFS[t].jobs(scale, scale.seeds_for(t, seeds)):
            seen.setdefault(j, None)
    jobs = list(seen)
    # Replays are the longest jobs: start them first so they overlap the rest.
    return [j for j in jobs if j.kind == "replay"] + [j for j in jobs if j.kind != "replay"]


def plan_later_jobs(table_ids: Sequence[str], scale: Scale, seeds: Sequence[int],
                    results: Mapping[Job, dict[str, Any]]) -> list[Job]:
    """The jobs tables choose from the first phase's ``results`` (``TableDef.later_jobs``; e.g.
    the map's ablation where SAGA leads most), each once, those not in ``results``."""
    seen: dict[Job, None] = {}
    for t in table_ids:
        later = TABLE_DEFS[t].later_jobs
        for j in later(scale, scale.seeds_for(t, seeds), results) if later is not None else ():
            if j not in results:
                seen.setdefault(j, None)
    return list(seen)


def run_bench(table_ids: Sequence[str], scale: Scale, seeds: Sequence[int] | None = None, *,
              workers: int | None = None, on_job: OnJob | None = None,
              on_plan: Callable[[int], None] | None = None, store: RunStore | None = None,
              resume: bool = False, warn: Callable[[str], None] | None = None) -> BenchRun:
    """Run the tables' jobs (``workers`` processes; 1 = in this process) and build the tables.

    With a ``store`` each run is written to it as soon as it finishes; with ``resume`` too, the
    runs already there are loaded instead of run (``on_plan`` gets the number left to run,
    ``warn`` hears of run files that could not be read and are run again)."""
    seed_list = list(range(scale.seeds)) if seeds is None else list(seeds)
    if seeds is not None:  # seeds asked for are run on every table
        scale = dataclasses.replace(scale, seed_caps=())
    if not seed_list:
        raise SagaConfigError("--seeds must be >= 1")
    if resume and store is None:
        raise SagaConfigError("--resume needs --out DIR: the folder whose runs/ to reuse")
    jobs = plan_jobs(table_ids, scale, seed_list)
    results: dict[Job, dict[str, Any]] = {}
    if store is not None:
        store.remove_temporaries()
    phase = _Phase(results, workers, store if resume else None, store, on_job, on_plan, warn)
    t0 = time.perf_counter()
    phase.run(jobs)
    later = plan_later_jobs(table_ids, scale, seed_list, results)
    if later:  # the second phase: jobs chosen from the first one's results
        phase.run(later)
    wall = time.perf_counter() - t0
    tables = [_build(t, scale, seed_list, results) for t in table_ids]
    sims = [r for j, r in results.items() if j.kind == "sim"]
    return BenchRun(scale, seed_list, tables, len(results), wall,
                    sum(int(r["calls"]) for r in sims), sum(float(r["cpu_s"]) for r in sims),
                    results, phase.reused)


def _build(table_id: str, scale: Scale, seeds: list[int],
           results: Mapping[Job, dict[str, Any]]) -> TableResult:
    """Build a table on its seeds; a note says so when its cap cut them."""
    used = scale.seeds_for(table_id, seeds)
    t = TABLE_DEFS[table_id].build(scale, used, results)
    if len(used) < len(seeds):
        t.notes.append(f"{len(used)} of the {len(seeds)} seeds: the {scale.name} scale runs this "
                       "table on fewer seeds to keep within its time budget (`--seeds N` runs "
                       "every table on N).")
    return t


@dataclass
class _Phase:
    """Runs a list of jobs into ``results``: loads what ``load`` holds, runs the rest, saves each
    to ``save`` as it finishes; ``on_plan`` hears the number left to run over all phases."""

    results: dict[Job, dict[str, Any]]
    workers: int | None
    load: RunStore | None
    save: RunStore | None
    on_job: OnJob | None
    on_plan: Callable[[int], None] | None
    warn: Callable[[str], None] | None
    reused: int = 0
    planned: int = 0

    def run(self, jobs: Sequence[Job]) -> None:
        if self.load is not None:
            loaded = self.load.load_many(jobs, self.warn)
            self.results.update(loaded)
            self.reused += len(loaded)
        todo = [j for j in jobs if j not in self.results]
        self.planned += len(todo)
        if self.on_plan is not None:
            self.on_plan(self.planned)
        for j, r in _execute(todo, self.workers):
            self.results[j] = r
            if self.save is not None:
                self.save.save(j, r)
            if self.on_job is not None:
                self.on_job(j, r)


def _execute(jobs: Sequence[Job], workers: int | None) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Each job with its result, as each finishes (``workers`` processes; 1 = this one)."""
    n_workers = workers or min(len(jobs), os.cpu_count() or 1)
    if n_workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            yield j, run_job(j)
        return
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        futures = {pool.submit(run_job, j): j for j in jobs}
        for f in as_completed(futures):
            yield futures[f], f.result()


__all__ = ["TABLE_DEFS", "BenchRun", "parse_tables", "plan_jobs", "plan_later_jobs", "run_bench"]
