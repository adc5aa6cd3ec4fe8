"""Write a live comparison to disk: ``live.json``, ``live.csv``, ``live.png`` and its section of
``report.md`` (beside the simulated tables ``saga bench --out`` writes there)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saga.coordinator.gateway.live_results import FIGURES, RunResult

__all__ = ["best_baseline_ratios", "heading", "live_markdown", "with_section", "write_live"]

PLOTTED = (("tct_mean_s", "mean TCT (s)"), ("tct_p95_s", "p95 TCT (s)"),
           ("reprefilled_context_tokens", "re-prefilled context tokens"),
           ("hit_rate", "prefix hit rate"))


def heading(engines: int, model: str, device: str = "CPU") -> str:
    """The report section's heading."""
    return f"## Live, {engines} engines, model {model}, {device}"


def clean(x: Any) -> Any:
    """JSON-safe: NaN becomes null, infinities strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, Mapping):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v) for v in x]
    return x


def best_baseline_ratios(summary: Mapping[str, Mapping[str, Any]], saga: str = "saga"
                         ) -> dict[str, Any]:
    """SAGA's mean over the best other system's (the lowest; for hit rate and calls/s the
    highest), per figure, with that system's name."""
    if saga not in summary or len(summary) < 2:
        return {}
    out: dict[str, Any] = {}
    for f in ("tct_mean_s", "tct_p95_s", "reprefilled_context_tokens", "hit_rate",
              "calls_per_s"):
        higher = f in ("hit_rate", "calls_per_s")
        others = {s: r[f]["mean"] for s, r in summary.items()
                  if s != saga and math.isfinite(r[f]["mean"])}
        if not others:
            continue
        best = (max if higher else min)(others, key=lambda s: others[s])
        mine = summary[saga][f]["mean"]
        out[f] = {"baseline": best, "ratio": mine / others[best] if others[best] else
                  (1.0 if mine == 0 else math.inf)}
    return out


_NONE = {"mean": math.nan, "std": 0.0}
"""A figure an older ``live.json`` does not have."""


def _pm(fig: Mapping[str, Any], fmt: str) -> str:
    mean, std = fig["mean"], fig["std"]
    if not math.isfinite(mean):
        return "–"
    return format(mean, fmt) + (f" ± {format(std, fmt)}" if std else "")


def live_markdown(data: Mapping[str, Any]) -> list[str]:
    """The report section (without its heading): setup, one row per system, ratios."""
    cfg, summary = data["config"], data["summary"]
    store = ("share a node KV store (a moved session loads its KV)" if cfg.get("kv_moves")
             else "have no KV store (a moved session recomputes)")
    md = [f"Measured, not simulated: `{data['command']}`. {cfg['engines']} vLLM engines (CPU "
          f"build, model `{cfg['model']}`, {cfg['kv_blocks'] or 'default'} KV blocks of 32 "
          f"tokens each, DRAM tier {cfg['dram_blocks']} blocks where the preset has one) per "
          f"system, started fresh for every run, behind the SAGA gateway; SAGA's engines "
          f"{store}; {cfg['tasks']} tasks "
          f"per seed from `{cfg['workload']}` ({cfg['calls']} calls, contexts up to "
          f"{cfg['max_context']} tokens), tool calls as real sleeps × {cfg['tool_scale']}; "
          f"seeds {cfg['seeds']}, the systems taking turns going first. Re-prefilled context = "
          "tokens the engines computed (their prefix-cache queries minus device and "
          "connector hits) beyond the calls' new tokens; hit rate = hits / queries; both from "
          "the engines' own counters. Mean ± std over seeds. Machine: "
          f"{data['machine']['cpus']} CPUs shared, load average "
          f"{data['machine']['load_min']:.1f}–{data['machine']['load_max']:.1f}.", "",
          "| system | mean TCT (s) | p95 TCT (s) | re-prefilled context | hit rate | calls/s "
          "| preemptions | re-homes | steals | KV moves | KV blocks loaded |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, r in summary.items():
        md.append(f"| {s} | {_pm(r['tct_mean_s'], '.2f')} | {_pm(r['tct_p95_s'], '.2f')} | "
                  f"{_pm(r['reprefilled_context_tokens'], ',.0f')} | {_pm(r['hit_rate'], '.3f')}"
                  f" | {_pm(r['calls_per_s'], '.2f')} | {_pm(r['preemptions'], '.0f')} | "
                  f"{_pm(r['rehomes'], '.0f')} | {_pm(r.get('steals', _NONE), '.0f')} | "
                  f"{_pm(r['kv_moves'], '.0f')} | "
                  f"{_pm(r['kv_loaded_blocks'], '.0f')} |")
    ratios = data.get("ratios") or {}
    if ratios:
        md += ["", "SAGA ÷ best other system: " + "; ".join(
            f"{f} {v['ratio']:.2f}× ({v['baseline']})" for f, v in ratios.items()) + "."]
    return md


def with_section(report: str, head: str, lines: Sequence[str]) -> str:
    """``report`` with the section under ``head`` replaced by ``lines`` (appended if absent)."""
    block = "\n".join([head, "", *lines, "", ""])
    start = report.find(head + "\n")
    if start < 0:
        return report.rstrip("\n") + ("\n\n" if report.strip() else "") + block
    end = report.find("\n## ", start + len(head))
    end = len(report) if end < 0 else end + 1
    return report[:start] + block + report[end:]


def _csv(runs: Sequence[RunResult], path: Path) -> None:
    cols = ["system", "seed", "position", "wall_s", *FIGURES, "calls", "calls_planned",
            "tasks_failed", "engine_queries", "engine_hits", "engine_external_hits",
            "engine_prefilled_tokens", "new_tokens"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in runs:
            w.writerow({"system": r.system, "seed": r.seed, "position": r.position,
                        "wall_s": round(r.wall_s, 3),
                        **{c: r.figures.get(c) for c in cols[4:]}})


def _png(summary: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(summary)
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], PLOTTED, strict=True):
        means = [summary[s][key]["mean"] for s in systems]
        stds = [summary[s][key]["std"] for s in systems]
        ax.bar(range(len(systems)), means, yerr=stds, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_live(data: dict[str, Any], runs: Sequence[RunResult], out: Path) -> dict[str, Path]:
    """``live.json`` (everything, tasks included), ``live.csv`` (a row per run), ``live.png``
    and the section in ``report.md`` under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"live.{k}" for k in ("json", "csv", "png")}
    paths["report"] = out / "report.md"
    data = {**data, "runs": [r.to_json() for r in runs]}
    paths["json"].write_text(json.dumps(clean(data), indent=1) + "\n")
    _csv(runs, paths["csv"])
    cfg = data["config"]
    head = heading(cfg["engines"], cfg["model"])
    _png(data["summary"], head[3:], paths["png"])
    lines = [*live_markdown(data), "", "![live](live.png)", "",
             "Files: `live.json`, `live.csv`, `live.png`."]
    old = paths["report"].read_text() if paths["report"].is_file() else ""
    paths["report"].write_text(with_section(old, head, lines))
    return paths
