"""Turn SAGA's typed errors into a clear one-line message and exit code 2, never a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from saga.policy.errors import SagaError

T = TypeVar("T")
err_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a `SagaError` or a missing/unreadable file as ``error: ...`` and exit 2.

    Only typed errors are caught: anything else is a bug and keeps its traceback. The message
    is escaped, since it quotes user input (a policy name ``[/x]`` is not rich markup).
    """
    try:
        yield
    except (SagaError, OSError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(code=2) from None


def guarded(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()
