"""Write a bench run to disk: JSON + CSV + PNG per table and a report.md that gathers them."""

from __future__ import annotations

import csv
import json
import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from saga.bench.costmodel import check_published_rates
from saga.bench.runner import BenchRun
from saga.bench.tables import TableResult

PACKAGES = ("saga", "saga-aeg", "saga-policy", "saga-bench", "numpy", "scipy", "matplotlib")


def versions() -> dict[str, str]:
    """Python and package versions for the report."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_table(t: TableResult, out: Path) -> dict[str, Path]:
    """``table<id>.json``, ``.csv`` and ``.png`` under ``out`` (the map: a heatmap PNG per
    workload, ``table<id>-<workload>.png``, keys ``png:<workload>``)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"table{t.id}"
    paths = {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"),
             "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(_clean({
        "id": t.id, "title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes,
        "raw": t.raw, **({"summary": t.summary} if t.summary else {})}), indent=2,
        sort_keys=True) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=t.columns)
        w.writeheader()
        w.writerows(t.rows)
    if t.plot.get("kind") == "heatmap":
        from saga.bench.mapplot import plot_heatmaps

        del paths["png"]
        paths.update(plot_heatmaps(t.plot, stem, f"Table {t.id}"))
    else:
        plot_table(t, paths["png"])
    return paths


def plot_table(t: TableResult, path: Path) -> None:
    """A grouped bar chart (mean ± std) of the table's main metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups: Mapping[str, Mapping[str, tuple[float, float]]] = t.plot.get("groups", {})
    labels = list(dict.fromkeys(k for g in groups.values() for k in g))
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(max(6, 4 * len(groups)), 4),
                             squeeze=False)
    for ax, (name, g) in zip(axes[0], groups.items(), strict=False):
        xs = np.arange(len(labels))
        means = [g.get(k, (math.nan, 0.0))[0] for k in labels]
        stds = [g.get(k, (0.0, 0.0))[1] or 0.0 for k in labels]
        ax.bar(xs, means, yerr=stds, capsize=3, color="#4C72B0")
        ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(t.plot.get("ylabel", ""))
    fig.suptitle(f"Table {t.id}: {t.title} (simulated)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(t: TableResult) -> str:
    """The table as GitHub markdown."""
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in t.columns) + " |" for r in t.rows]
    return "\n".join(lines)


OWNED_HEADINGS = ("## Table ", "## Cost model check",
                  "## Simulator validation against the real engine",
                  "## Trace-driven workload", "## Versions")
"""Headings (prefixes) of the sections :func:`write_report` writes; any other ``## `` section
of an existing ``report.md`` (``saga bench live``'s, its validation) is someone else's and is
kept."""


def kept_sections(report: str, owned: Sequence[str]) -> list[str]:
    """The lines of ``report``'s ``## `` sections whose heading starts with none of ``owned``,
    in their order (what a rewrite of the report must not drop)."""
    keep: list[str] = []
    mine = True
    for line in report.splitlines():
        if line.startswith("## "):
            mine = line.startswith(tuple(owned))
        elif line.startswith("# "):
            mine = True
        if not mine:
            keep.append(line)
    if keep and keep[-1].strip():
        keep.append("")
    return keep


def write_report(run: BenchRun, out: Path, command: str,
                 validation: Mapping[str, Any] | None = None,
                 extra: Sequence[str] = ()) -> Path:
    """Every table's files and ``report.md`` under ``out``; returns the report's path. The
    sections of an existing ``report.md`` that the bench does not write (``saga bench live``'s)
    are kept, before the versions."""
    out.mkdir(parents=True, exist_ok=True)
    files = {t.id: write_table(t, out) for t in run.tables}
    rates = check_published_rates()
    md = [f"# SAGA benchmark report ({run.scale.name})", "",
          "Every number below was computed by running saga-bench's discrete-event simulator "
          "(saga-policy's policy objects inside a simulated cluster) or saga-policy's cache "
          "replay. They are **simulated** results. Columns headed *paper* hold the SAGA paper's "
          "published values for comparison only; nothing reads them to produce a result.", "",
          f"Command: `{command}`", "",
          f"Seeds: {run.seeds}; {run.jobs} runs"
          + (f" ({run.reused} loaded from `runs/` by `--resume`, the rest run)"
             if run.reused else "")
          + f" in {run.wall_s:.1f} s wall; simulator speed "
          f"{run.calls_per_s:,.0f} simulated LLM calls per CPU second "
          f"({run.sim_calls:,} calls in {run.sim_wall_s:.1f} CPU s over all processes).", "",
          "## Cost model check", "",
          "| rate | model | published range | in range |", "|---|---|---|---|"]
    md += [f"| {r.name} | {r.value:,.1f} | {r.low:,.0f}–{r.high:,.0f} | "
           f"{'yes' if r.ok else '**no**'} |" for r in rates]
    md += ["", "Sources of the ranges: " + "; ".join(f"{r.name}: {r.source}" for r in rates), ""]
    for t in run.tables:
        md += [f"## Table {t.id}: {t.title}", "", markdown_table(t), ""]
        md += [f"- {n}" for n in t.notes]
        md += ["", *t.summary]
        md += [f"![{f'table {t.id} {k[4:]}'.strip()}]({p.name})"
               for k, p in files[t.id].items() if k.startswith("png")]
        md += ["", "Files: " + ", ".join(f"`{p.name}`" for p in files[t.id].values()) + ".", ""]
    md += ["## Simulator validation against the real engine", ""]
    if validation is None:
        md += ["Not run in this invocation: `saga bench validate --out DIR` runs "
               "`saga vllm compare` on the CPU vLLM engine and the simulator configured as "
               "that engine, and writes `validation.json` beside this report.", ""]
    else:
        md += [*list(validation.get("markdown", [])), ""]
    md += list(extra)
    path = out / "report.md"
    owned = [h for h in (*OWNED_HEADINGS, *extra) if h.startswith("## ")]
    md += kept_sections(path.read_text() if path.is_file() else "", owned)
    md += ["## Versions", "", "| package | version |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in versions().items()]
    path.write_text("\n".join(md) + "\n")
    (out / "bench.json").write_text(json.dumps(_clean({
        "scale": run.scale.name, "seeds": run.seeds, "jobs": run.jobs, "reused": run.reused,
        "wall_s": run.wall_s,
        "sim_calls": run.sim_calls, "sim_calls_per_s": run.calls_per_s, "command": command,
        "versions": versions(), "tables": [t.id for t in run.tables]}), indent=2) + "\n")
    return path


__all__ = ["OWNED_HEADINGS", "kept_sections", "markdown_table", "plot_table", "versions",
           "write_report", "write_table"]
