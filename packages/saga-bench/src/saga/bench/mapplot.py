"""Heatmaps of the regime map (:mod:`saga.bench.tables_map`): one PNG per workload.

A figure has one panel per tool-latency scale; x = load (tasks per instance), y = DRAM tier per
instance; colour = log2 of SAGA's TCT over the best peer's (blue: SAGA faster, red: slower, on one
symmetric scale over the whole map so figures compare), each cell annotated with the ratio, the
best peer's name and the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MARK = {"win": "win", "tie": "tie", "loss": "LOSS"}


def _limit(cells: Sequence[Mapping[str, Any]]) -> float:
    """Half-width of the colour scale: the largest |log2 ratio| (at least a 10 % change)."""
    logs = [abs(math.log2(c["ratio"])) for c in cells
            if math.isfinite(c["ratio"]) and c["ratio"] > 0]
    return max([math.log2(1.1), *logs])


def plot_heatmaps(plot: Mapping[str, Any], stem: Path, title: str) -> dict[str, Path]:
    """``<stem>-<workload>.png`` per workload; returns ``{"png:<workload>": path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells: Sequence[Mapping[str, Any]] = plot["cells"]
    loads, drams, tools = plot["loads"], plot["drams"], plot["tool_scales"]
    lim = _limit(cells)
    paths = {}
    for w, name in plot["workloads"].items():
        fig, axes = plt.subplots(1, len(tools), figsize=(5.2 * len(tools), 4.4), squeeze=False,
                                 sharey=True)
        image = None
        for ax, t in zip(axes[0], tools, strict=True):
            grid = np.full((len(drams), len(loads)), np.nan)
            for c in cells:
                if c["workload"] != w or c["tool_scale"] != t:
                    continue
                i, j = drams.index(c["dram_gb"]), plot["load_levels"].index(c["load"])
                grid[i, j] = math.log2(c["ratio"]) if c["ratio"] > 0 else np.nan
                dark = abs(grid[i, j]) > 0.6 * lim
                ax.text(j, i, f"{c['ratio']:.2f}\n{c['best_peer']}\n{MARK[c['verdict']]}",
                        ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                              aspect="auto")
            ax.set_xticks(range(len(loads)), [str(n) for n in loads])
            ax.set_yticks(range(len(drams)), [f"{d} GiB" for d in drams])
            ax.set_xlabel("load (tasks per instance)")
            ax.set_title(f"tool latency x{t:g}", fontsize=10)
        axes[0][0].set_ylabel("DRAM tier per instance")
        if image is not None:
            bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85)
            bar.set_label("log2(SAGA TCT / best peer TCT)")
        fig.suptitle(f"{title}: {name} (simulated; text: ratio, best peer, verdict)",
                     fontsize=11)
        path = stem.parent / f"{stem.name}-{w}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths[f"png:{w}"] = path
    return paths


__all__ = ["plot_heatmaps"]
