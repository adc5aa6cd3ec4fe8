"""Rich rendering shared by the commands: tables that fit the terminal, replay tables, progress
bars, JSON files."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from saga.policy.replay import ReplayResult

console = Console()

MIN_TEXT_WIDTH = 16
"""Narrowest a free-text column (``overflow="fold"``) may become before a table is split."""


def print_table(table: Table, *, keep: int = 1, out: Console | None = None) -> None:
    """Print ``table`` so that it fits the console's width (see :func:`fit_table`)."""
    out = out or console
    for part in fit_table(table, out.width, keep=keep, console=out):
        out.print(part)


def fit_table(table: Table, width: int, *, keep: int = 1,
              console: Console | None = None) -> list[Table]:
    """``table`` as one or more tables that each fit ``width`` columns with no cell cut short.

    Rich shrinks a table that is too wide by cutting words (``recompu…``). Instead: headers
    wrap onto lines no wider than their column's values; columns whose ``overflow`` is
    ``"fold"`` hold free text and wrap; every other column keeps its values whole, and if they
    still do not fit the columns are split over several tables, each repeating the first
    ``keep`` columns (the row's key). A column too wide even alone wraps rather than be cut.
    """
    c = console or Console(width=width)
    if _natural(c, table) <= width:
        return [table]
    table = _with_columns(table, range(len(table.columns)), c)
    key = list(range(min(keep, len(table.columns))))
    panels: list[list[int]] = []
    current: list[int] = []
    for i in range(len(key), len(table.columns)):
        if current and _rigid(c, _with_columns(table, key + current + [i], c)) > width:
            panels.append(current)
            current = []
        current.append(i)
    panels.append(current)
    out = []
    for n, cols in enumerate(panels):
        part = _with_columns(table, key + cols, c, part=(n + 1, len(panels)))
        if _rigid(c, part) > width:
            for col in part.columns:
                col.no_wrap, col.overflow = False, "fold"
        out.append(part)
    return out


def _natural(c: Console, table: Table) -> int:
    """The table's width when nothing in it wraps."""
    return Measurement.get(c, c.options.update_width(100_000), table).maximum


def _rigid(c: Console, table: Table) -> int:
    """The table's width when its free-text columns wrap down to ``MIN_TEXT_WIDTH``."""
    cols = [dataclasses.replace(col, max_width=MIN_TEXT_WIDTH) if col.overflow == "fold"
            else col for col in table.columns]
    probe = Table(*cols, box=table.box, padding=table.padding, pad_edge=table.pad_edge,
                  show_edge=table.show_edge, show_header=table.show_header)
    return _natural(c, probe)


def _with_columns(table: Table, cols: Sequence[int] | range, c: Console,
                  part: tuple[int, int] = (1, 1)) -> Table:
    """A copy of ``table`` with only columns ``cols``: values kept whole unless free text,
    headers wrapped to their values' width; ``part`` numbers the title when split."""
    n, total = part
    new = Table(title=_part_title(table.title, n, total), title_justify=table.title_justify,
                box=table.box, padding=table.padding, pad_edge=table.pad_edge,
                show_edge=table.show_edge, show_header=table.show_header,
                show_lines=table.show_lines, header_style=table.header_style,
                title_style=table.title_style, highlight=table.highlight,
                caption=table.caption if n == total else None, row_styles=table.row_styles,
                caption_style=table.caption_style, caption_justify=table.caption_justify,
                style=table.style, border_style=table.border_style, leading=table.leading,
                collapse_padding=table.collapse_padding, safe_box=table.safe_box,
                show_footer=table.show_footer, footer_style=table.footer_style)
    new.rows = [dataclasses.replace(r) for r in table.rows]
    for j, i in enumerate(cols):
        col = table.columns[i]
        text = col.overflow == "fold"
        new.columns.append(dataclasses.replace(
            col, _index=j, header=_wrap_header(c, col), no_wrap=col.no_wrap or not text))
    return new


def _part_title(title: Any, n: int, total: int) -> Any:
    if total == 1 or not isinstance(title, str):
        return title
    return f"{title} ({n}/{total})"


def _wrap_header(c: Console, col: Column) -> Any:
    """The header on lines no wider than the column's widest value (or its longest word)."""
    header = col.header
    if not isinstance(header, str) or "\n" in header:
        return header
    opts = c.options.update_width(100_000)
    widest = max((Measurement.get(c, opts, cell).maximum for cell in col.cells), default=1)
    if cell_len(header) <= widest:
        return header
    longest = max(cell_len(w) for w in header.split())
    return textwrap.fill(header, width=max(widest, longest), break_long_words=False,
                         break_on_hyphens=False)


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
    # Headers on two lines: seven columns of numbers fit 80 terminal columns whole.
    for col in ("policy", "miss\nblocks", "hit\ntokens", "hit\nratio", "recomputed\ntokens",
                "evictions", "misses\n÷ Bélády"):
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
