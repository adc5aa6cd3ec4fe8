"""One root for SAGA's typed errors: every package's exceptions derive from `SagaError`, and the
CLI turns any of them into one ``error: ...`` line and exit code 2.

saga-kernels is left out on purpose: it depends on no other SAGA package (its errors are the
builtin ``ValueError``/``TypeError``/``RuntimeError`` of a numeric library).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from saga.aeg.errors import AEGError, SagaError
from saga.cli.errors import user_errors

PACKAGES = ("saga.aeg", "saga.policy", "saga.bench", "saga.vllm", "saga.integrations",
            "saga.coordinator", "saga.cli")
SKIP = ("._proto", ".__main__")  # generated gRPC stubs; a module that runs a CLI on import


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    out = [root]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not any(part in info.name for part in SKIP):
            out.append(importlib.import_module(info.name))
    return out


def _saga_exceptions(package: str) -> set[type[BaseException]]:
    """Public exception classes defined in ``package``'s modules (not merely imported there)."""
    found: set[type[BaseException]] = set()
    for module in _modules(package):
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and not name.startswith("_")
                    and obj.__module__ == module.__name__):
                found.add(obj)
    return found


def test_saga_policy_reexports_the_one_root() -> None:
    from saga.policy import errors as policy_errors

    assert policy_errors.SagaError is SagaError  # the same class, not a second definition
    assert SagaError.__module__ == "saga.aeg.errors"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_exception_derives_from_saga_error(package: str) -> None:
    if package == "saga.vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    found = _saga_exceptions(package)
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in found
                    if not issubclass(c, SagaError))
    assert not strays, f"exceptions not derived from saga.aeg.errors.SagaError: {strays}"


def test_the_walk_sees_each_packages_errors() -> None:
    """The walk above would pass vacuously if it found nothing; it finds the known errors."""
    from saga.integrations.errors import FrameworkNotInstalledError, IntegrationError
    from saga.policy.errors import SagaConfigError

    assert {AEGError} <= _saga_exceptions("saga.aeg")
    assert {SagaConfigError} <= _saga_exceptions("saga.policy")
    assert {IntegrationError, FrameworkNotInstalledError} <= _saga_exceptions(
        "saga.integrations")
    # Builtin bases are kept, so code catching ValueError/ImportError still works.
    assert issubclass(AEGError, ValueError) and issubclass(IntegrationError, ValueError)
    assert issubclass(FrameworkNotInstalledError, ImportError)


def _app() -> typer.Typer:
    """Commands that call real SAGA code raising each package's error, inside `user_errors`."""
    from saga.aeg.metadata import RequestMetadata
    from saga.aeg.templates import template
    from saga.integrations.frameworks import framework_status

    app = typer.Typer()

    @app.command()
    def run(what: str) -> None:
        with user_errors():
            if what == "aeg":
                template("no-such-template")
            elif what == "integration":
                framework_status("no-such-framework")
            elif what == "metadata":
                RequestMetadata.from_dict({"session_id": "s", "prefetch": True})
            else:
                raise KeyError(what)  # a bug, not a user error: keeps its traceback

    return app


@pytest.mark.parametrize(("what", "needle"), [
    ("aeg", "error: unknown AEG template 'no-such-template'"),
    ("integration", "error: unknown framework 'no-such-framework'"),
    ("metadata", "error: saga.prefetch needs saga.pending_tool"),
])
def test_a_saga_error_in_a_command_is_one_line_and_exit_2(what: str, needle: str) -> None:
    res = CliRunner().invoke(_app(), [what])
    assert res.exit_code == 2, res.output
    out = res.output
    assert "Traceback" not in out and out.lstrip().startswith("error:")
    assert "".join(needle.split()) in "".join(out.split())
    assert len(out.strip().splitlines()) == 1, out  # soft-wrapped: the terminal folds it


def test_a_bug_is_not_swallowed() -> None:
    res = CliRunner().invoke(_app(), ["other"])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)
