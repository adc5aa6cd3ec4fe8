"""Shared fixtures of the saga-vllm tests: one tiny random Llama per test session.

Engines run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) unless a test says otherwise, so
that tests can reach the scheduler; each test module starts its engines once (module scope).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random tiny Llama (built once per test session)."""
    from saga.vllm.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama", seed=0)


@pytest.fixture(scope="module", autouse=True)
def _collect_engines_of_earlier_modules() -> None:
    """Let the engines of earlier modules die before this module starts its own.

    An in-process engine that is garbage-collected later, in the middle of another module's
    test, shuts down vLLM's process-wide distributed state under the live engine.
    """
    import gc

    gc.collect()
