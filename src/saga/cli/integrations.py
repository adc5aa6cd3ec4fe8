"""`saga integrations check`: which agent frameworks are installed and can take SAGA's adapters.

Each framework's modules are imported only when the command runs (CrewAI alone takes seconds),
so ``saga --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from saga.cli.render import console, print_table, write_json
from saga.integrations.frameworks import FRAMEWORKS, FrameworkStatus, framework_status

app = typer.Typer(help="Agent-framework adapters (LangChain, AutoGen, CrewAI).",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Agent-framework adapters (LangChain, AutoGen, CrewAI)."""


def status_table(statuses: list[FrameworkStatus]) -> Table:
    """One row per distribution an adapter needs: installed and supported versions, and
    whether the framework's adapter attaches."""
    table = Table(title="SAGA framework adapters", title_justify="left")
    for col in ("framework", "package", "installed", "supported", "attachable"):
        table.add_column(col, no_wrap=True)
    for s in statuses:
        for i, (dist, version) in enumerate(s.versions.items()):
            first = i == 0
            table.add_row(
                s.name if first else "", dist, version or "[red]—[/]", s.supported[dist],
                ("[green]yes[/]" if s.attachable else "[red]no[/]") if first else "")
    return table


@app.command("check")
def check(
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON to this file.")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 when a framework cannot be attached.")] = False,
    probe: Annotated[bool, typer.Option(
        "--probe/--no-probe", help="Import each framework (catches broken installs).")] = True,
) -> None:
    """Report which frameworks are installed (versions) and whether their adapter attaches."""
    statuses = [framework_status(name, probe=probe) for name in FRAMEWORKS]
    print_table(status_table(statuses))
    extras = ", ".join(f"[{s.extra}]" for s in statuses)
    console.print(escape(f"install with pip install 'saga-integrations[EXTRA]', EXTRA one of "
                         f"{extras} or [all]"))
    for s in statuses:
        if not s.attachable:
            console.print(f"[red]{s.name}[/]: {escape(s.reason)}")
    if json_path is not None:
        write_json(json_path, {"frameworks": [s.to_dict() for s in statuses]})
    if strict and not all(s.attachable for s in statuses):
        raise typer.Exit(code=1)
