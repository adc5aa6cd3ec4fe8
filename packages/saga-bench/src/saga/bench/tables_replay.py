"""Table 4: online eviction policies against Bélády's offline optimum, on replayed traces.

The one table built from cache replays (``ReplayJob``) rather than simulations;
:mod:`saga.bench.tables` registers it in ``TABLES`` and re-exports its names.
"""

from __future__ import annotations

from collections.abc import Sequence

from saga.bench import paper
from saga.bench.jobs import Job, ReplayJob, Scale
from saga.bench.stats import fmt_mean_std, mean_std
from saga.bench.tables_result import Results, TableResult

TABLE4_TRACES = ("swe", "web", "trace-swe", "mooncake")
TABLE4_POLICIES = ("lru", "prefix_lru", "arc", "s3fifo", "walru", "kvflow", "eta")


def _t4_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [ReplayJob(t, s, scale) for t in TABLE4_TRACES for s in seeds]


def _t4_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    runs = [res[ReplayJob(t, s, scale)] for t in TABLE4_TRACES for s in seeds]
    ran = [p for p in TABLE4_POLICIES if all(p in r["ratio"] for r in runs)]
    ratios = {t: {p: [float(res[ReplayJob(t, s, scale)]["ratio"][p]) for s in seeds]
                  for p in ran} for t in TABLE4_TRACES}
    names = {"lru": "standard LRU", "prefix_lru": "LRU + prefix (vLLM)", "walru": "WA-LRU (SAGA)",
             "kvflow": "KVFlow", "arc": "ARC (vLLM offloading)", "s3fifo": "S3-FIFO",
             "eta": "eta (next use)"}
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {t: {} for t in TABLE4_TRACES}
    for p in ran:
        ref = paper.TABLE4_RATIO.get(p)
        means = [mean_std(ratios[t][p])[0] for t in ("swe", "web")]
        rows.append({
            "policy": names[p],
            "SWE-bench": fmt_mean_std(ratios["swe"][p], 3) + "x",
            "WebArena": fmt_mean_std(ratios["web"][p], 3) + "x",
            "mean (SWE, Web)": f"{sum(means) / 2:.3f}x",
            "SWE, real trajectories": fmt_mean_std(ratios["trace-swe"][p], 3) + "x",
            "Mooncake": fmt_mean_std(ratios["mooncake"][p], 3) + "x",
            "paper SWE / Web": "—" if ref is None else f"{ref[0]:.2f}x / {ref[1]:.2f}x",
        })
        for t in TABLE4_TRACES:
            groups[t][p] = mean_std(ratios[t][p])
    caps = {t: res[ReplayJob(t, seeds[0], scale)]["capacity_blocks"] for t in TABLE4_TRACES}
    notes = [
        "Competitive ratio = missed KV blocks of the policy / missed blocks of Bélády's offline "
        "optimum, replaying each trace through saga-policy's CacheManager (HBM only) at a "
        "capacity of 1/8 of the trace's distinct blocks "
        f"(seed {seeds[0]}: {caps}).",
        "SWE-bench / WebArena: the simulator's workloads as request traces; SWE, real "
        "trajectories: the bundled mini-swe-agent runs (their real token counts per call) "
        "drawn per task, tool latencies from the SWE template; Mooncake: windows "
        "of the real conversation trace (no sessions, so no workflow hints: WA-LRU ranks by "
        f"recency and size only). {len(seeds)} seeds.",
    ]
    if len(ran) < len(TABLE4_POLICIES):
        notes.append("Not in these replay results: "
                     f"{', '.join(p for p in TABLE4_POLICIES if p not in ran)}.")
    return TableResult("4", "Online eviction vs Bélády (competitive ratio, lower is better)",
                       list(rows[0]), rows, notes, {"ratios": ratios, "capacity": caps},
                       {"ylabel": "misses / Bélády misses", "groups": groups})


__all__ = ["TABLE4_POLICIES", "TABLE4_TRACES"]
