"""`native_status` tells the truth: native where built, twins when disabled or absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from saga.kernels import native_status
from saga.kernels._native import HAVE_EXT
from saga.kernels.status import CUDA_KERNELS, EXPERIMENTAL, HOST_KERNELS


def _status_in_subprocess(env: dict[str, str]) -> list[dict[str, str]]:
    code = ("import json, dataclasses; from saga.kernels import native_status; "
            "print(json.dumps([dataclasses.asdict(r) for r in native_status()]))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True).stdout
    rows: list[dict[str, str]] = json.loads(out)
    return rows


def test_one_row_per_kernel() -> None:
    rows = native_status()
    assert [r.name for r in rows] == [*HOST_KERNELS, *CUDA_KERNELS]
    assert all(r.backend in ("native", "cuda", "twin") and r.detail for r in rows)


def test_kernels_without_a_caller_are_the_experimental_ones() -> None:
    """The experimental flag matches where the wrappers live: saga.kernels.experimental."""
    import saga.kernels as kernels
    import saga.kernels.experimental as experimental
    from saga.kernels.experimental import cuda

    flagged = {r.name for r in native_status() if r.experimental}
    assert flagged == set(EXPERIMENTAL) == {"prefix_overlap", "session_table", *CUDA_KERNELS}
    for name in ("prefix_overlap", "session_table"):
        assert name in experimental.__all__ and name not in kernels.__all__
    assert all(callable(getattr(cuda, n)) for n in CUDA_KERNELS)


@pytest.mark.skipif(shutil.which("c++") is None or shutil.which("cmake") is None,
                    reason="no C++ compiler or CMake here: the pure-Python package is expected")
@pytest.mark.skipif(os.environ.get("SAGA_NATIVE", "").strip().lower() in ("0", "off", "false",
                                                                          "no"),
                    reason="SAGA_NATIVE turns the native kernels off for this run")
def test_a_machine_with_a_compiler_gets_the_native_kernels() -> None:
    assert HAVE_EXT, native_status()[0].detail
    assert {r.backend for r in native_status() if r.kind == "host"} == {"native"}


def test_disabling_native_falls_back_to_twins_with_the_reason() -> None:
    rows = _status_in_subprocess({"SAGA_NATIVE": "0"})
    assert {r["backend"] for r in rows} == {"twin"}
    assert all("SAGA_NATIVE=0" in r["detail"] for r in rows)
