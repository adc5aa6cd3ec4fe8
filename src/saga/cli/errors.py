"""Turn SAGA's typed errors into a clear one-line message and exit code 2, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from saga.aeg.errors import SagaError

err_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a `SagaError` or a missing/unreadable file as ``error: ...`` and exit 2.

    `SagaError` is the root every SAGA package's errors derive from (`AEGError`,
    `IntegrationError`, `MetadataError`, `SagaConfigError`, the coordinator's and the engine's),
    so one clause covers them all. Only typed errors are caught: anything else is a bug and
    keeps its traceback. The message is escaped, since it quotes user input (a policy name
    ``[/x]`` is not rich markup).
    """
    try:
        yield
    except (SagaError, OSError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(code=2) from None

