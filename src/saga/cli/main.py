"""The `saga` command line: one typer app, one module per command group."""

from __future__ import annotations

import typer

from saga.cli import demo, replay, show

app = typer.Typer(
    name="saga",
    help="SAGA: a workflow-aware scheduler for LLM agent workloads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.command("replay")(replay.replay)
app.add_typer(show.app, name="show")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
