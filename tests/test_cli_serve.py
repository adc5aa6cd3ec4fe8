"""`saga serve`'s option errors: named in one line, exit 2, before any engine starts."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from saga.cli.main import app


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", *args])
    return result.exit_code, "".join(result.output.split())


@pytest.mark.parametrize(("args", "needle"), [
    (["--engines", "0"], "nothingtorouteto"),
    (["--preset", "nope"], "nope"),
    (["--engine-url", "localhost:8000"], "muststartwithhttp"),
    (["--api-keys", "/nonexistent/keys"], "cannotreadtheAPIkeyfile"),
    (["--engine-url", "http://127.0.0.1:9", "--coordinator", "127.0.0.1:1"],
     "SAGA_COORDINATOR_TOKEN"),
])
def test_bad_options_are_named_before_anything_starts(args: list[str], needle: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_COORDINATOR_TOKEN", raising=False)
    with socket.socket() as s:  # a port free now (the command only tries to bind it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out = _run(*args, "--port", str(port))
    assert code == 2, out
    assert needle in out


def test_a_port_in_use_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = _run("--engine-url", "http://127.0.0.1:9", "--port", str(port))
    assert code == 2 and "cannotlistenon" in out
