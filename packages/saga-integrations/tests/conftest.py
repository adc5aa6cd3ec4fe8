"""Shared fixtures: a hand-set clock, and CrewAI kept offline and quiet (no telemetry, no
tracing prompt, its kickoff database in a temporary folder) before anything imports it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

for _name, _value in {"CREWAI_TESTING": "true", "CREWAI_DISABLE_TELEMETRY": "true",
                      "CREWAI_TRACING_ENABLED": "false", "OTEL_SDK_DISABLED": "true"}.items():
    os.environ.setdefault(_name, _value)
if "CREWAI_STORAGE_DIR" not in os.environ:
    os.environ["CREWAI_STORAGE_DIR"] = tempfile.mkdtemp(prefix="saga-crewai-")
    atexit.register(shutil.rmtree, os.environ["CREWAI_STORAGE_DIR"], ignore_errors=True)


class ManualClock:
    """A clock the scripted tools advance by hand, so durations are exact."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
