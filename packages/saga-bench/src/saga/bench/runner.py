"""Run the jobs of the requested tables (deduplicated, seeds in parallel processes), build them.

Results depend only on the jobs, never on which process ran them or in which order, so the same
seeds give the same numbers with any number of workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from saga.bench.jobs import Job, Scale, run_job
from saga.bench.store import RunStore
from saga.bench.tables import TABLES, TableResult
from saga.policy.errors import SagaConfigError

OnJob = Callable[[Job, dict[str, Any]], None]


def parse_tables(text: str | None) -> list[str]:
    """``"3,6"`` → ``["3", "6"]``; None or empty → every table. Unknown ids are named."""
    if not text:
        return list(TABLES)
    ids = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in ids if t not in TABLES]
    if bad or not ids:
        raise SagaConfigError(f"--tables: unknown table(s) {bad}; choose from "
                              f"{', '.join(TABLES)} (comma-separated, e.g. 3,6)")
    return list(dict.fromkeys(ids))


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
        for j in TABLES[t].jobs(scale, seeds):
            seen.setdefault(j, None)
    jobs = list(seen)
    # Replays are the longest jobs: start them first so they overlap the rest.
    return [j for j in jobs if j.kind == "replay"] + [j for j in jobs if j.kind != "replay"]


def run_bench(table_ids: Sequence[str], scale: Scale, seeds: Sequence[int] | None = None, *,
              workers: int | None = None, on_job: OnJob | None = None,
              on_plan: Callable[[int], None] | None = None, store: RunStore | None = None,
              resume: bool = False, warn: Callable[[str], None] | None = None) -> BenchRun:
    """Run the tables' jobs (``workers`` processes; 1 = in this process) and build the tables.

    With a ``store`` each run is written to it as soon as it finishes; with ``resume`` too, the
    runs already there are loaded instead of run (``on_plan`` gets the number left to run,
    ``warn`` hears of run files that could not be read and are run again)."""
    seed_list = list(range(scale.seeds)) if seeds is None else list(seeds)
    if not seed_list:
        raise SagaConfigError("--seeds must be >= 1")
    if resume and store is None:
        raise SagaConfigError("--resume needs --out DIR: the folder whose runs/ to reuse")
    jobs = plan_jobs(table_ids, scale, seed_list)
    results: dict[Job, dict[str, Any]] = {}
    if store is not None:
        store.remove_temporaries()
        if resume:
            results.update(store.load_many(jobs, warn))
    reused = len(results)
    todo = [j for j in jobs if j not in results]
    if on_plan is not None:
        on_plan(len(todo))
    t0 = time.perf_counter()
    for j, r in _execute(todo, workers):
        results[j] = r
        if store is not None:
            store.save(j, r)
        if on_job is not None:
            on_job(j, r)
    wall = time.perf_counter() - t0
    tables = [TABLES[t].build(scale, seed_list, results) for t in table_ids]
    sims = [r for j, r in results.items() if j.kind == "sim"]
    return BenchRun(scale, seed_list, tables, len(jobs), wall,
                    sum(int(r["calls"]) for r in sims), sum(float(r["cpu_s"]) for r in sims),
                    results, reused)


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


__all__ = ["BenchRun", "parse_tables", "plan_jobs", "run_bench"]
