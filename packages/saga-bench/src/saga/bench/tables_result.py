"""What a table is: the jobs it needs and how it is built (:class:`TableDef`), and what it
yields (:class:`TableResult`); :mod:`saga.bench.tables` re-exports both."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.bench.jobs import Job, Scale

Results = Mapping[Job, dict[str, Any]]
"""Each job's finished result, as the runner hands them to a table's builder."""


@dataclass
class TableResult:
    """A finished table: rows of formatted cells, the raw numbers, and what to plot."""

    id: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)
    """``{"ylabel": str, "groups": {series: {label: (mean, std)}}}`` for a bar chart."""
    summary: list[str] = field(default_factory=list)
    """Markdown lines that say in words what the table found (report.md, terminal)."""


@dataclass(frozen=True)
class TableDef:
    """One table: its id, the jobs it needs at a scale, and how it is built from results."""

    id: str
    title: str
    jobs: Callable[[Scale, Sequence[int]], list[Job]]
    build: Callable[[Scale, Sequence[int], Results], TableResult]
    later_jobs: Callable[[Scale, Sequence[int], Results], list[Job]] | None = None
    """Jobs chosen from the first jobs' results (run in a second phase), e.g. where to ablate."""
    companions: tuple[str, ...] = ()
    """Tables that come with this one when it is asked for."""


__all__ = ["Results", "TableDef", "TableResult"]
