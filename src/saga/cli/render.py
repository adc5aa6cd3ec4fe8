"""Rich rendering shared by the commands: replay tables, progress bars, JSON files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from saga.policy.replay import ReplayResult

console = Console()


def progress() -> Progress:
    """The progress bar every long command shows (transient: the table replaces it)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _ratio(x: float | None) -> str:
    if x is None:
        return "—"
    return "inf" if math.isinf(x) else f"{x:.2f}×"


def replay_table(title: str, results: Sequence[ReplayResult]) -> Table:
    """Policies side by side: misses, hit and recomputed tokens, and the ratio to Bélády."""
    table = Table(title=title, title_justify="left")
    for col in ("policy", "miss blocks", "hit tokens", "hit ratio", "recomputed tokens",
                "evictions", "misses ÷ Bélády"):
        if col == "policy":
            table.add_column(col, no_wrap=True, min_width=10)
        else:
            table.add_column(col, justify="right")
    for r in results:
        table.add_row(r.policy, f"{r.miss_blocks:,}", _tokens(r.hit_tokens), f"{r.hit_ratio:.1%}",
                      _tokens(r.recomputed_tokens), f"{r.evictions:,}",
                      _ratio(r.ratio_to_belady))
    return table


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1_000_000 else f"{n:,}"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (infinities as strings, so the file stays valid JSON)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(payload), indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write one CSV row per result (columns from the first row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        if not rows:
            return
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
