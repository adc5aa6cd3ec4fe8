"""The regime map: SAGA against the best peer over a grid of load, DRAM tier and tool latency.

The grid is fixed here, before any result is seen (:data:`LOADS`, :data:`DRAM_GB_PER_INSTANCE`,
:data:`TOOL_SCALES`, :data:`WORKLOADS`); every cell runs SAGA and each of table 3's other systems
(:data:`PEERS`) on the same seeds. A cell reports SAGA's mean TCT over the best peer's (the peer
with the lowest mean TCT in that cell, named), Welch's p between the two, and a verdict: *win*
(SAGA faster, p < :data:`ALPHA`), *loss* (slower, p < ALPHA) or *tie* (p >= ALPHA, or p undefined
with one seed). Table "map-ablation" then runs table 6's ablations in the cell where SAGA's lead
is largest (lowest ratio) — a cell known only after the map's runs, so its jobs are planned in a
second phase (``TableDef.later_jobs``) — beside table 6 at the default load.

Axes:

- Load: SWE tasks per instance, arriving as Poisson at the scale's fixed rate per instance (0.4/s
  at the quick scale), so more tasks means more sessions open at once. A Llama-3-70B TP4
  instance of the reference cluster has a KV pool of ~487K tokens
  (``ClusterSpec.kv_hbm_bytes_per_instance``), and a SWE-bench-like task's context ends at ~20K
  tokens on average (~23K for the real trajectories). 8 tasks per instance hold at most ~160K
  tokens: HBM has room and no cache policy is exercised. 24 hold about one pool. 48 (the quick
  and full scales' own load, that of tables 3 and 6) hold about twice the pool: contexts outgrow
  HBM. At another scale the levels keep their ratio to the scale's own load (48 at quick).
- DRAM: the KV tier in host DRAM per instance, GiB, replacing the node's DRAM
  (``Scale.dram_gb_per_instance``) for presets that have a tier (``Preset.dram_tier``, read from
  each preset); presets without one run once per cell row, whatever the level.
- Tool latency: every tool duration of the workload multiplied (``WorkloadSpec.tool_scale``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saga.bench.jobs import QUICK, Job, Scale, SimJob, Variant, build_preset
from saga.bench.stats import fmt_mean_std, fmt_p, mean_std, welch_p
from saga.bench.tables import (
    ABLATIONS,
    REF,
    SYSTEMS,
    TABLES,
    Results,
    TableDef,
    TableResult,
    ablation_label,
    ablations,
)

LOADS = (8, 24, 48)
"""SWE tasks per instance at the quick scale (module docstring: why these three)."""
DRAM_GB_PER_INSTANCE = (0, 64, 512)
"""Host-DRAM KV tier per instance, GiB (0: none)."""
DRAMS = DRAM_GB_PER_INSTANCE
TOOL_SCALES = (0.3, 1.0, 3.0)
"""Multipliers of every tool duration."""
WORKLOADS = ("swe", "trace-swe")
"""SWE-bench-like template tasks and the bundled real mini-swe-agent trajectories."""
WORKLOAD_NAMES = {"swe": "SWE-bench-like tasks", "trace-swe": "real SWE trajectories"}
PEERS = tuple(p for p in SYSTEMS if p != REF)
"""Table 3's systems other than SAGA."""
ALPHA = 0.05
"""Welch's p at or above this is a tie."""
VERDICTS = ("win", "tie", "loss")
PLURAL = {"win": "wins", "tie": "ties", "loss": "losses"}


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    workload: str
    load: int
    dram_gb: int
    tool_scale: float

    def label(self, scale: Scale) -> str:
        return (f"{WORKLOAD_NAMES[self.workload]}, {tasks_per_instance(scale, self.load)} "
                f"tasks/instance, DRAM {self.dram_gb} GiB/instance, tools x{self.tool_scale:g}")


CELLS = tuple(Cell(w, n, d, t) for w in WORKLOADS for t in TOOL_SCALES
              for d in DRAM_GB_PER_INSTANCE for n in LOADS)
"""Every cell, in the map's row order."""


def tasks_per_instance(scale: Scale, load: int) -> int:
    """``load`` (a quick-scale level) at ``scale``: the same share of the scale's own load."""
    own = scale.swe_tasks / scale.instances
    return max(1, round(load * own / (QUICK.swe_tasks / QUICK.instances)))


@functools.cache
def _has_tier(v: Variant) -> bool:
    return build_preset(v).dram_tier


def cell_job(scale: Scale, cell: Cell, v: Variant, seed: int) -> SimJob:
    """The run of ``v`` in ``cell``. A preset without a DRAM tier gets no DRAM override, so its
    runs at the three DRAM levels are one job (and at 48 tasks, x1 tools, table 3's own)."""
    sc = dataclasses.replace(scale, swe_tasks=tasks_per_instance(scale, cell.load)
                             * scale.instances,
                             dram_gb_per_instance=cell.dram_gb if _has_tier(v) else None)
    spec = dataclasses.replace(sc.workload(cell.workload, seed), tool_scale=cell.tool_scale)
    return SimJob(v, spec, sc)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("s" if count != 1 else "")


def _tct(res: Results, scale: Scale, cell: Cell, p: str, seeds: Sequence[int]) -> list[float]:
    return [float(res[cell_job(scale, cell, Variant(p), s)]["tct_mean_s"]) for s in seeds]


def _systems(scale: Scale) -> tuple[str, ...]:
    """The map's systems with ``scale.saga`` as SAGA (``saga bench --saga``)."""
    return tuple(scale.saga if p == REF else p for p in SYSTEMS)


def _ablations(scale: Scale) -> tuple[str, ...]:
    """The ablation rows of ``scale.saga``."""
    return ABLATIONS if scale.saga == REF else ablations(scale)


def _map_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return [cell_job(scale, c, Variant(p), s) for c in CELLS for p in _systems(scale)
            for s in seeds]


def compare_cell(scale: Scale, seeds: Sequence[int], res: Results, cell: Cell) -> dict[str, Any]:
    """SAGA against the best peer in ``cell``: TCTs per seed, ratio, Welch's p, verdict."""
    peers = {p: _tct(res, scale, cell, p, seeds) for p in PEERS}
    best = min(PEERS, key=lambda p: mean_std(peers[p])[0])
    ours = _tct(res, scale, cell, scale.saga, seeds)
    ratio = mean_std(ours)[0] / mean_std(peers[best])[0]
    p = welch_p(ours, peers[best])
    verdict = "tie" if math.isnan(p) or p >= ALPHA else "win" if ratio < 1 else "loss"
    return {**dataclasses.asdict(cell), "tasks": tasks_per_instance(scale, cell.load)
            * scale.instances, "saga_tct_s": ours, "best_peer": best,
            "best_tct_s": peers[best], "ratio": ratio, "p": p, "verdict": verdict,
            "peers_tct_s": peers}


def lead_cell(scale: Scale, seeds: Sequence[int], res: Results) -> Cell:
    """The cell where SAGA's TCT over the best peer's is lowest (first in grid order on a tie)."""
    ratios = [compare_cell(scale, seeds, res, c)["ratio"] for c in CELLS]
    return min(zip(CELLS, ratios, strict=True),
               key=lambda cr: math.inf if math.isnan(cr[1]) else cr[1])[0]


def _map_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    cells = [compare_cell(scale, seeds, res, c) for c in CELLS]
    rows = [{"workload": c["workload"], "tasks/inst": tasks_per_instance(scale, c["load"]),
             "DRAM (GiB)": c["dram_gb"], "tools": f"x{c['tool_scale']:g}",
             "SAGA TCT (s)": fmt_mean_std(c["saga_tct_s"]), "best peer": c["best_peer"],
             "peer TCT (s)": fmt_mean_std(c["best_tct_s"]), "SAGA / peer": f"{c['ratio']:.2f}",
             "p": fmt_p(c["p"]), "verdict": c["verdict"]} for c in cells]
    tiered = [p for p in _systems(scale) if _has_tier(Variant(p))]
    sizes = sorted({c["tasks"] for c in cells})
    notes = [
        f"Simulated: {scale.instances} Llama-3-70B TP4 instances ({_n(scale.nodes, 'node')} "
        f"of 8x A100-80GB), {_n(len(seeds), 'seed')} ({scale.name} scale); {len(CELLS)} cells x "
        f"{len(SYSTEMS)} systems{_as_saga(scale)}. A cell simulates "
        f"{', '.join(map(str, sizes))} tasks "
        f"({', '.join(str(s // scale.instances) for s in sizes)} per instance for the loads "
        f"{', '.join(map(str, LOADS))}), Poisson arrivals at "
        f"{scale.swe_rate_per_instance:g} tasks/s per instance.",
        "SAGA / peer = SAGA's mean TCT over the best peer's (the peer with the lowest mean TCT "
        "in that cell; < 1: SAGA faster). verdict: win / loss when Welch's p < "
        f"{ALPHA:g} (SAGA faster / slower), tie otherwise (p n/a: fewer than 2 seeds).",
        f"DRAM = KV tier in host DRAM per instance, applied to the presets with a tier "
        f"({', '.join(tiered) or 'none'}); the others run without one at every level. "
        "tools = factor on every tool duration.",
    ]
    plot = {"kind": "heatmap", "load_levels": list(LOADS),
            "loads": [tasks_per_instance(scale, n) for n in LOADS],
            "drams": list(DRAM_GB_PER_INSTANCE), "tool_scales": list(TOOL_SCALES),
            "workloads": {w: WORKLOAD_NAMES[w] for w in WORKLOADS}, "cells": cells}
    return TableResult("map", "Regime map: SAGA's TCT over the best peer's", list(rows[0]),
                       rows, notes, {"cells": cells, "peers": list(PEERS), "alpha": ALPHA},
                       plot, summary=map_summary(cells, scale))


def _as_saga(scale: Scale) -> str:
    return "" if scale.saga == REF else f" (SAGA = the `{scale.saga}` preset)"


def _share(cells: Sequence[dict[str, Any]], verdict: str, key: str, levels: Sequence[Any],
           names: Sequence[Any]) -> str:
    """``"<level>: <cells with verdict>/<cells>"`` for each level of one axis."""
    parts = []
    for lv, name in zip(levels, names, strict=True):
        at = [c for c in cells if c[key] == lv]
        parts.append(f"{name}: {sum(c['verdict'] == verdict for c in at)}/{len(at)}")
    return ", ".join(parts)


def _where(c: dict[str, Any], scale: Scale) -> str:
    return (f"{tasks_per_instance(scale, c['load'])} tasks/instance, DRAM {c['dram_gb']} GiB, "
            f"tools x{c['tool_scale']:g}: {c['ratio']:.2f}x {c['best_peer']} "
            f"(p {fmt_p(c['p'])})")


def map_summary(cells: Sequence[dict[str, Any]], scale: Scale) -> list[str]:
    """Where SAGA wins, ties and loses, in words, computed from the cells."""
    out = ["### Where SAGA wins, ties and loses (simulated)", ""]
    if all(math.isnan(c["p"]) for c in cells):
        out += ["Welch's test needs two seeds or more: with these runs every cell is a tie.", ""]
    loads = [tasks_per_instance(scale, n) for n in LOADS]
    drams = [f"{d} GiB" for d in DRAMS]
    tools = [f"x{t:g}" for t in TOOL_SCALES]
    for w in WORKLOADS:
        cw = [c for c in cells if c["workload"] == w]
        n = {v: sum(c["verdict"] == v for c in cw) for v in VERDICTS}
        out.append(f"- **{WORKLOAD_NAMES[w]}**: SAGA wins in {n['win']} of {len(cw)} cells, "
                   f"ties in {n['tie']}, loses in {n['loss']}.")
        for v in VERDICTS:
            if n[v]:
                out.append(f"  - {PLURAL[v]} by load (tasks/instance) "
                           f"{_share(cw, v, 'load', LOADS, loads)}; by DRAM tier "
                           f"{_share(cw, v, 'dram_gb', DRAMS, drams)}; by tool latency "
                           f"{_share(cw, v, 'tool_scale', TOOL_SCALES, tools)}.")
        ranked = sorted(cw, key=lambda c: c["ratio"])
        out.append(f"  - largest lead: {_where(ranked[0], scale)}; weakest: "
                   f"{_where(ranked[-1], scale)}.")
        losses = [c for c in cw if c["verdict"] == "loss"]
        if losses:
            out.append("  - losses: " + "; ".join(_where(c, scale) for c in losses) + ".")
        best = {p: sum(c["best_peer"] == p for c in cw) for p in PEERS}
        out.append("  - best peer: " + ", ".join(
            f"{p} in {k} cells" for p, k in sorted(best.items(), key=lambda x: -x[1]) if k)
            + ".")
    return [*out, ""]


# ---------------------------------------------------------------------------- ablation

def _ablation_jobs(scale: Scale, seeds: Sequence[int]) -> list[Job]:
    return _map_jobs(scale, seeds) + TABLES["6"].jobs(scale, seeds)


def _ablation_later(scale: Scale, seeds: Sequence[int], res: Results) -> list[Job]:
    cell = lead_cell(scale, seeds, res)
    return [cell_job(scale, cell, Variant(p), s) for p in _ablations(scale) for s in seeds]


def _vs_full(tct: dict[str, list[float]], p: str, ref: str = REF) -> tuple[str, str]:
    if p == ref:
        return "—", "—"
    full = mean_std(tct[ref])[0]
    return (f"{100 * (mean_std(tct[p])[0] / full - 1):+.1f} %",
            fmt_p(welch_p(tct[p], tct[ref])))


def _ablation_build(scale: Scale, seeds: Sequence[int], res: Results) -> TableResult:
    cell = lead_cell(scale, seeds, res)
    lead = compare_cell(scale, seeds, res, cell)
    default: dict[str, list[float]] = TABLES["6"].build(scale, seeds, res).raw["tct_s"]
    at = {p: _tct(res, scale, cell, p, seeds) for p in _ablations(scale)}
    rows: list[dict[str, Any]] = []
    groups: dict[str, dict[str, tuple[float, float]]] = {"default load": {}, "lead cell": {}}
    for p in _ablations(scale):
        d_vs, d_p = _vs_full(default, p, scale.saga)
        l_vs, l_p = _vs_full(at, p, scale.saga)
        rows.append({"configuration": ablation_label(p, scale.saga),
                     "default: TCT (s)": fmt_mean_std(default[p]), "default: vs full": d_vs,
                     "default: p": d_p, "lead cell: TCT (s)": fmt_mean_std(at[p]),
                     "lead cell: vs full": l_vs, "lead cell: p": l_p})
        groups["default load"][p] = mean_std(default[p])
        groups["lead cell"][p] = mean_std(at[p])
    notes = [f"Simulated, {_n(len(seeds), 'seed')} ({scale.name} scale){_as_saga(scale)}. "
             "default = table 6 "
             "(SWE-bench-like tasks at the scale's own load, the node's DRAM, tools x1); lead "
             f"cell = the map's cell with SAGA's largest lead: {cell.label(scale)} "
             f"({lead['tasks']} tasks; SAGA {lead['ratio']:.2f}x the best peer, "
             f"{lead['best_peer']}, p {fmt_p(lead['p'])}).",
             "vs full = mean TCT without the part over full SAGA's, same cell; p = Welch's."]
    return TableResult("map-ablation", "Ablation where SAGA leads most, beside the default load",
                       list(rows[0]), rows, notes,
                       {"lead_cell": {**dataclasses.asdict(cell), "ratio": lead["ratio"],
                                      "best_peer": lead["best_peer"], "p": lead["p"]},
                        "default_tct_s": default, "lead_tct_s": at},
                       {"ylabel": "mean TCT (s)", "groups": groups})


MAP_TABLES = {
    "map": TableDef("map", "Regime map", _map_jobs, _map_build,
                    companions=("map-ablation",)),
    "map-ablation": TableDef("map-ablation", "Ablation at the map's largest lead",
                             _ablation_jobs, _ablation_build, later_jobs=_ablation_later),
}
"""The map's tables: asked for by id only (``--tables map``), not among tables 3-10 of
``--full`` (``saga.bench.runner.TABLE_DEFS`` holds both)."""

__all__ = ["ALPHA", "CELLS", "DRAM_GB_PER_INSTANCE", "LOADS", "MAP_TABLES", "PEERS", "TOOL_SCALES",
           "WORKLOADS", "Cell", "cell_job", "compare_cell", "lead_cell", "map_summary",
           "tasks_per_instance"]
