"""The paper's tables 3-10, each a pair of functions: the jobs it needs, and the table it builds.

Every number in a table comes from the runs (simulated, on the scale named in the table's
notes); the paper's values sit only in columns headed "paper". Statistics: mean ± std over
seeds, speedups as geometric means over paired seeds, Welch's t-test for SAGA against each
other system. When SAGA is not the best, the numbers say so: nothing is clipped or reordered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from saga.bench import paper
from saga.bench.jobs import Job, Scale, SimJob, Variant, build_preset, with_nodes
from saga.bench.stats import fmt_mean_std, fmt_p, geomean, mean_std, speedup, welch_p
from saga.bench.tables_replay import TABLE4_POLICIES, TABLE4_TRACES, _t4_build, _t4_jobs
from saga.bench.tables_result import Results, TableDef, TableResult
from saga.policy.errors import SagaConfigError
from saga.policy.presets import SAGA as SAGA_PRESET
from saga.policy.presets import get_preset
from saga.policy.spec import REFERENCE_CLUSTER

REF = SAGA_PRESET.name
"""The system every table compares against (speedups, "vs full") by default; ``Scale.saga``
(``saga bench --saga``) names another SAGA preset to take its place."""


SYSTEMS = ("vllm", "vllm_apc", "sglang", "llumnix", "trt_llm_scaffolding", "vllm_kvflow",
           "continuum", "autellix", "saga")
"""Table 3's systems: the spec's seven plus the Continuum and Autellix peers."""
ABLATIONS = ("saga", "saga_no_affinity", "saga_no_walru", "saga_no_ttl", "saga_no_stealing",
             "saga_no_prefetch", "saga_no_afs", "saga_kvmove")
"""Table 6's rows: full SAGA, SAGA minus one part, and one labelled what-if (``saga_kvmove``:
SAGA plus KV that follows a moved session, which the real SAGA does not do yet)."""


ABLATION_SETS: Mapping[str, tuple[str, ...]] = {
    REF: ABLATIONS,
    "saga_eta": ("saga_eta", "saga_eta_no_affinity", "saga_eta_no_eta", "saga_eta_no_ttl",
                 "saga_eta_no_value_ttl", "saga_eta_no_stealing", "saga_eta_no_prefetch",
                 "saga_eta_no_afs"),
}
"""The SAGA presets that can play SAGA in the tables (``saga bench --saga``), each with table
6's rows for it: itself first, then itself minus one part (and labelled what-ifs)."""


def check_saga(name: str) -> str:
    """``name`` if it is a preset that can play SAGA in the tables; else the valid ones."""
    if name not in ABLATION_SETS:
        raise SagaConfigError(f"--saga: {name!r} cannot play SAGA in the tables; choose from "
                              f"{', '.join(ABLATION_SETS)}")
    get_preset(name)
    return name


def systems(scale: Scale) -> tuple[str, ...]:
    """Table 3's systems with ``scale.saga`` as SAGA."""
    return tuple(scale.saga if p == REF else p for p in SYSTEMS)


def ablations(scale: Scale) -> tuple[str, ...]:
    """Table 6's rows for ``scale.saga``."""
    return ABLATIONS if scale.saga == REF else ABLATION_SETS[check_saga(scale.saga)]


def paper_name(p: str, scale: Scale) -> str:
    """The name the paper's columns give ``p`` (``scale.saga`` and its ablations as SAGA's)."""
    return REF + p.removeprefix(scale.saga) if p.startswith(scale.saga) else p


def ablation_label(p: str, ref: str = REF) -> str:
    """``full SAGA``, ``w/o <part>`` for an ablation, ``+<part> (what-if)`` for an addition."""
    if p == ref:
        return "full SAGA"
    if p.startswith(ref + "_no_"):
        return p.replace(ref + "_no_", "w/o ")
    return "+" + p.removeprefix(ref + "_") + " (what-if)"
TENANT_SYSTEMS = ("vllm", "sglang", "llumnix", "continuum", "autellix", "saga")
CVS = (0.5, 1.0, 1.5, 2.0, 3.0)
SENSITIVITY: dict[str, tuple[float, float, float]] = {
    "alpha": (0.3, 0.2, 0.4), "beta": (0.5, 0.4, 0.6), "gamma": (0.2, 0.1, 0.3),
    "theta": (0.8, 0.6, 0.95), "t_idle": (0.1, 0.05, 0.2), "r_max": (2.0, 1.5, 3.0),
    "ttl_max": (300.0, 120.0, 600.0), "theta_conf": (0.7, 0.5, 0.9),
}
"""The spec's parameter ranges: (default, low, high)."""


def _sim(scale: Scale, seeds: Sequence[int], variant: Variant, kind: str,
         tool_cv: float | None = None) -> list[Job]:
    return [SimJob(variant, scale.workload(kind, s, tool_cv=tool_cv), scale) for s in seeds]


def _metric(results: Results, jobs: Sequence[Job], key: str) -> list[float]:
    return [float(results[j][key]) for j in jobs]


def _note_scale(scale: Scale, seeds: Sequence[int]) -> str:
    nodes = f"{scale.nodes} node" + ("s" if scale.nodes > 1 else "")
    saga = "" if scale.saga == REF else f" SAGA here is the `{scale.saga}` preset."
    return (f"Simulated: {scale.instances} Llama-3-70B TP4 instances on {nodes} of "
            f"8x A100-80GB, {len(seeds)} seeds ({scale.name} scale); mean ± std over "
            f"seeds.{saga}")


def _paper(v: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


# ---------------------------------------------------------------------------- table 3

def _t3_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [j for p in systems(scale) for k in ("swe", "web")
            for j in _sim(scale, seeds, Variant(p), k)]


def _t3_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    ours = scale.saga
    tct = {(p, k): _metric(res, _sim(scale, seeds, Variant(p), k), "tct_mean_s")
           for p in systems(scale) for k in ("swe", "web")}
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {"SWE-bench": {}, "WebArena": {}}
    raw: dict[str, Any] = {}
    for p in systems(scale):
        sw, wa = tct[(p, "swe")], tct[(p, "web")]
        ref = paper.TABLE3_TCT_S.get(paper_name(p, scale))
        if p == ours:
            sp = p_sw = p_wa = math.nan
        else:
            sp = geomean([speedup(sw, tct[(ours, "swe")]), speedup(wa, tct[(ours, "web")])])
            p_sw, p_wa = welch_p(sw, tct[(ours, "swe")]), welch_p(wa, tct[(ours, "web")])
        rows.append({
            "system": p, "SWE-bench TCT (s)": fmt_mean_std(sw), "WebArena TCT (s)":
            fmt_mean_std(wa), "SAGA speedup": "—" if p == ours else f"{sp:.2f}x",
            "p (SWE / Web)": "—" if p == ours else f"{fmt_p(p_sw)} / {fmt_p(p_wa)}",
            "paper SWE / Web (s)": "—" if ref is None else f"{ref[0]:.1f} / {ref[1]:.1f}",
            "paper speedup": _paper(paper.TABLE3_SPEEDUP.get(paper_name(p, scale)), "{:.2f}x"),
        })
        groups["SWE-bench"][p] = mean_std(sw)
        groups["WebArena"][p] = mean_std(wa)
        raw[p] = {"swe_tct_s": sw, "web_tct_s": wa, "speedup": sp, "p_swe": p_sw, "p_web": p_wa}
    apc = geomean([speedup(tct[("vllm_apc", k)], tct[(ours, k)]) for k in ("swe", "web")])
    notes = [_note_scale(scale, seeds),
             f"Geomean SAGA speedup vs vllm_apc over both workloads: {apc:.2f}x "
             f"(paper: {paper.TABLE3_GEOMEAN_VS_APC:.2f}x). Speedup = geomean over seeds and "
             "workloads of TCT(system) / "
             "TCT(saga); p = Welch's t-test of SAGA vs the system.",
             "sglang runs sgl-router's published defaults (balance only beyond 64 requests of "
             "imbalance): below that threshold sessions sharing a system prompt all follow the "
             "best prefix match to one worker."]
    raw["speedup_vs_vllm_apc"] = apc
    return TableResult("3", "Task-completion time (TCT) on the agent workloads",
                       list(rows[0]), rows, notes, raw,
                       {"ylabel": "mean TCT (s)", "groups": groups})


# ---------------------------------------------------------------------------- table 3c

def _cluster(scale: Scale) -> Scale:
    """``scale`` on the whole reference cluster, tasks scaled to keep the load per instance."""
    if scale.nodes == REFERENCE_CLUSTER.nodes:
        return scale
    return with_nodes(scale, REFERENCE_CLUSTER.nodes)


def _t3c_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return _t3_jobs(_cluster(scale), seeds)


def _t3c_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    """Table 3 again on the 16-instance reference cluster (fewer seeds: it costs 8x a node)."""
    t = _t3_build(_cluster(scale), seeds, res)
    note = ("The whole reference cluster (a run costs 8x a one-node run); same load per "
            "instance as table 3.")
    return dataclasses.replace(t, id="3c", title=t.title + " — whole reference cluster",
                               notes=[*t.notes, note])


# ---------------------------------------------------------------------------- table 4

# Built from cache replays in saga.bench.tables_replay.


# ---------------------------------------------------------------------------- table 5

TENANTS = ("heavy", "medium", "light", "overall")


def _tenant_systems(scale: Scale) -> tuple[str, ...]:
    return tuple(scale.saga if p == REF else p for p in TENANT_SYSTEMS)


def _t5_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [j for p in _tenant_systems(scale) for j in _sim(scale, seeds, Variant(p), "tenants")]


def _t5_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {t: {} for t in TENANTS}
    raw: dict[str, Any] = {}
    for p in _tenant_systems(scale):
        jobs = _sim(scale, seeds, Variant(p), "tenants")
        att = {t: [100.0 * res[j]["slo_attainment"].get(t, math.nan) for j in jobs]
               for t in TENANTS}
        ref = paper.TABLE5_SLO.get(paper_name(p, scale), {})
        row: dict[str, Any] = {"system": p}
        for t in TENANTS:
            row[f"{t} (%)"] = fmt_mean_std(att[t])
            groups[t][p] = mean_std(att[t])
        row["paper h/m/l/overall"] = ("—" if not ref else
                                      " / ".join(f"{ref[t]:.1f}" for t in TENANTS))
        rows.append(row)
        raw[p] = att
    notes = [_note_scale(scale, seeds),
             "Tenants: heavy = SWE-bench agents, medium = WebArena agents, light = short "
             "WebArena lookups (<= 5 calls); a task meets its SLO when its TCT is within 3x "
             "its ideal TCT (alone on an idle instance with its prefixes cached)."]
    return TableResult("5", "Multi-tenant SLO attainment", list(rows[0]), rows, notes, raw,
                       {"ylabel": "SLO attainment (%)", "groups": groups})


# ---------------------------------------------------------------------------- table 6

def _t6_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [j for p in ablations(scale) for j in _sim(scale, seeds, Variant(p), "swe")]


def _t6_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    ours = scale.saga
    rows_of = ablations(scale)
    tct = {p: _metric(res, _sim(scale, seeds, Variant(p), "swe"), "tct_mean_s")
           for p in rows_of}
    full = mean_std(tct[ours])[0]
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {"SWE-bench TCT": {}}
    for p in rows_of:
        m = mean_std(tct[p])[0]
        ref = paper.TABLE6_TCT_S.get(paper_name(p, scale))
        ev = _metric(res, _sim(scale, seeds, Variant(p), "swe"), "eviction_rate")
        rows.append({
            "configuration": ablation_label(p, ours),
            "TCT (s)": fmt_mean_std(tct[p]),
            "eviction rate (%)": fmt_mean_std(ev, 1, 100.0),
            "vs full": "—" if p == ours else f"{100 * (m / full - 1):+.1f} %",
            "p vs full": "—" if p == ours else fmt_p(welch_p(tct[p], tct[ours])),
            "paper TCT (s)": _paper(ref),
            "paper vs full": "—" if p == ours or ref is None else
            f"{100 * (ref / paper.TABLE6_TCT_S['saga'] - 1):+.0f} %",
        })
        groups["SWE-bench TCT"][p] = mean_std(tct[p])
    notes = [_note_scale(scale, seeds),
             "eviction rate = share of follow-up calls whose earlier context was no longer "
             "(fully) in HBM; where it is 0 the parts that act on evictions (WA-LRU, TTL, "
             "prefetch) have nothing to act on at this load."]
    if any(ablation_label(p, ours) == "+kvmove (what-if)" for p in rows_of):
        notes.append("+kvmove (what-if): SAGA with a moved session's KV copied to its new "
                     "instance; simulated only — the real SAGA re-prefills on the new engine.")
    return TableResult("6", "Ablation: SAGA minus one part (SWE-bench TCT)", list(rows[0]), rows,
                       notes, {"tct_s": tct},
                       {"ylabel": "mean TCT (s)", "groups": groups})


# ---------------------------------------------------------------------------- table 7

QUEUE_ORDERS = ("bfs", "dfs", "hybrid")


def _queue_variant(q: str, ref: str = REF) -> Variant:
    """SAGA with queue order ``q`` (SAGA as it is when ``q`` is its own order)."""
    return Variant(ref) if q == get_preset(ref).queue.name else Variant(ref, (("queue", q),))


def _t7_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [j for q in QUEUE_ORDERS
            for j in _sim(scale, seeds, _queue_variant(q, scale.saga), "swe")]


def _t7_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {"TCT": {}}
    raw: dict[str, Any] = {}
    for q in QUEUE_ORDERS:
        jobs = _sim(scale, seeds, _queue_variant(q, scale.saga), "swe")
        tct = _metric(res, jobs, "tct_mean_s")
        thr = _metric(res, jobs, "throughput_tasks_per_min")
        ev = _metric(res, jobs, "eviction_rate")
        ref = paper.TABLE7[q]
        rows.append({"strategy": {"bfs": "pure BFS", "dfs": "pure DFS",
                                  "hybrid": "hybrid (SAGA)"}[q],
                     "TCT (s)": fmt_mean_std(tct), "throughput (tasks/min)": fmt_mean_std(thr, 2),
                     "eviction rate (%)": fmt_mean_std(ev, 1, 100.0),
                     "paper TCT / thr / evict": f"{ref[0]:.1f} / {ref[1]:.1f} / "
                                                f"{100 * ref[2]:.0f} %"})
        groups["TCT"][q] = mean_std(tct)
        raw[q] = {"tct_s": tct, "throughput": thr, "eviction_rate": ev}
    notes = [_note_scale(scale, seeds),
             "SAGA with its queue order replaced; eviction rate = share of follow-up calls whose "
             "earlier context was no longer (fully) in HBM when they were admitted."]
    return TableResult("7", "Queue strategy: BFS / DFS / hybrid", list(rows[0]), rows, notes, raw,
                       {"ylabel": "mean TCT (s)", "groups": groups})


# ---------------------------------------------------------------------------- table 8

def _t8_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [j for cv in CVS for j in _sim(scale, seeds, Variant(scale.saga), "swe", cv)]


def _t8_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {"TCT": {}}
    raw: dict[str, Any] = {}
    for cv in CVS:
        jobs = _sim(scale, seeds, Variant(scale.saga), "swe", cv)
        tct = _metric(res, jobs, "tct_mean_s")
        acc = _metric(res, jobs, "ttl_accuracy")
        ev = _metric(res, jobs, "eviction_rate")
        ref = paper.TABLE8[cv]
        rows.append({"CV": f"{cv:.1f}", "TCT (s)": fmt_mean_std(tct),
                     "TTL accuracy (%)": fmt_mean_std(acc, 1, 100.0),
                     "eviction rate (%)": fmt_mean_std(ev, 1, 100.0),
                     "paper TCT / acc / evict": f"{ref[0]:.1f} / {100 * ref[1]:.0f} % / "
                                                f"{100 * ref[2]:.0f} %"})
        groups["TCT"][f"CV {cv}"] = mean_std(tct)
        raw[str(cv)] = {"tct_s": tct, "ttl_accuracy": acc, "eviction_rate": ev}
    notes = [_note_scale(scale, seeds),
             "Each tool's log-normal latency keeps its mean and gets coefficient of variation "
             "CV; TTL accuracy = share of pinned tool calls that returned within their TTL."]
    return TableResult("8", "Tool-latency variance (SAGA, SWE-bench)", list(rows[0]), rows, notes,
                       raw, {"ylabel": "mean TCT (s)", "groups": groups})


# ---------------------------------------------------------------------------- table 9

def _sens_variant(param: str, value: float, ref: str = REF) -> Variant:
    return Variant(ref, ((param, value),))


def _policy_names(v: Variant) -> dict[str, Any]:
    """Each layer's registry name (or switch) of a variant's preset."""
    return {k: x["name"] if isinstance(x, dict) else x
            for k, x in build_preset(v).layers().items()}


def sensitivity_params(ref: str) -> list[str]:
    """The spec's parameters that ``ref`` has: setting one keeps every layer's policy (WA-LRU's
    weights are not parameters of a preset that does not evict by WA-LRU)."""
    base = _policy_names(Variant(ref))
    return [p for p, (d, _, _) in SENSITIVITY.items()
            if _policy_names(_sens_variant(p, d, ref)) == base]


def _t9_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    jobs = _sim(scale, seeds, Variant(scale.saga), "swe")
    for param in sensitivity_params(scale.saga):
        _, lo, hi = SENSITIVITY[param]
        for v in (lo, hi):
            jobs += _sim(scale, seeds, _sens_variant(param, v, scale.saga), "swe")
    return jobs


def _t9_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    ours = scale.saga
    base = mean_std(_metric(res, _sim(scale, seeds, Variant(ours), "swe"), "tct_mean_s"))[0]
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {"max ΔTCT (%)": {}}
    raw: dict[str, Any] = {}
    for param in sensitivity_params(ours):
        default, lo, hi = SENSITIVITY[param]
        d = {}
        for v in (lo, hi):
            t = mean_std(_metric(res, _sim(scale, seeds, _sens_variant(param, v, ours), "swe"),
                                 "tct_mean_s"))[0]
            d[v] = 100 * (t / base - 1)
        worst = max(abs(x) for x in d.values())
        rows.append({"parameter": param, "default": f"{default:g}", "range": f"[{lo:g}, {hi:g}]",
                     "ΔTCT at low / high": f"{d[lo]:+.1f} % / {d[hi]:+.1f} %",
                     "max |ΔTCT|": f"{worst:.1f} %",
                     "paper": paper.TABLE9_MAX_DTCT[param]})
        groups["max ΔTCT (%)"][param] = (worst, 0.0)
        raw[param] = {str(k): v for k, v in d.items()}
    notes = [_note_scale(scale, seeds),
             "ΔTCT = mean TCT at the range's end over mean TCT at the defaults (same seeds). "
             "theta_conf is pattern inference's confidence threshold; the others are SAGA's "
             "policy parameters."]
    return TableResult("9", "Parameter sensitivity (SAGA, SWE-bench)", list(rows[0]), rows,
                       notes, raw, {"ylabel": "max |ΔTCT| (%)", "groups": groups})


# ---------------------------------------------------------------------------- table 10

EFFICIENCY_SYSTEMS = ("vllm", "vllm_apc", "saga")


def _efficiency_systems(scale: Scale) -> tuple[str, ...]:
    return tuple(scale.saga if p == REF else p for p in EFFICIENCY_SYSTEMS)


def _t10_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [j for p in _efficiency_systems(scale) for j in _sim(scale, seeds, Variant(p), "swe")]


def _t10_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    metrics = (("latency vs ideal", "latency_vs_ideal", 1.0, "{:.1f}x"),
               ("HBM utilisation (%)", "hbm_utilisation", 100.0, "{:.0f} %"),
               ("GPU time re-prefilling (%)", "reprefill_gpu_share", 100.0, "{:.0f} %"))
    rows = []
    groups: dict[str, dict[str, tuple[float, float]]] = {}
    raw: dict[str, Any] = {}
    for label, key, scale_by, pfmt in metrics:
        row: dict[str, Any] = {"metric": label}
        groups[label] = {}
        for p in _efficiency_systems(scale):
            vals = _metric(res, _sim(scale, seeds, Variant(p), "swe"), key)
            row[p] = fmt_mean_std(vals, 2, scale_by)
            groups[label][p] = mean_std([v * scale_by for v in vals])
            raw.setdefault(p, {})[key] = vals
        idx = [m[1] for m in metrics].index(key)
        row["paper vllm / apc / saga"] = " / ".join(
            pfmt.format(paper.TABLE10[p][idx] * scale_by) for p in EFFICIENCY_SYSTEMS)
        rows.append(row)
    notes = [_note_scale(scale, seeds),
             "latency vs ideal = mean over tasks of TCT / ideal TCT (alone, prefixes cached); "
             "HBM utilisation = time-averaged share of the KV pool held by running calls; "
             "re-prefill share = re-prefilled context tokens x prefill seconds per token / "
             "busy GPU time."]
    return TableResult("10", "Efficiency (SWE-bench)", list(rows[0]), rows, notes, raw,
                       {"ylabel": "value", "groups": groups})


TABLES: dict[str, TableDef] = {
    "3": TableDef("3", "TCT", _t3_jobs, _t3_build),
    "3c": TableDef("3c", "TCT on the reference cluster", _t3c_jobs, _t3c_build),
    "4": TableDef("4", "Eviction vs Bélády", _t4_jobs, _t4_build),
    "5": TableDef("5", "Multi-tenant SLO", _t5_jobs, _t5_build),
    "6": TableDef("6", "Ablation", _t6_jobs, _t6_build),
    "7": TableDef("7", "Queue strategy", _t7_jobs, _t7_build),
    "8": TableDef("8", "Tool-latency variance", _t8_jobs, _t8_build),
    "9": TableDef("9", "Sensitivity", _t9_jobs, _t9_build),
    "10": TableDef("10", "Efficiency", _t10_jobs, _t10_build),
}
"""Every table by id (the regime map, asked for by id only, is in saga.bench.tables_map)."""


__all__ = ["ABLATION_SETS", "SYSTEMS", "TABLE4_POLICIES", "TABLE4_TRACES", "TABLES", "Results",
           "TableDef", "TableResult", "ablations", "check_saga", "sensitivity_params", "systems"]
