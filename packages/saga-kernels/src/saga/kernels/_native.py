"""Loads the compiled kernels when they are present and records why when they are not.

``SAGA_NATIVE=0`` in the environment makes every kernel run its twin (the tests use it to check
that callers get the same answers either way).
"""

from __future__ import annotations

import os
from importlib import resources

__all__ = ["CUDA_REASON", "DISABLE_ENV", "EXT_REASON", "HAVE_CUDA_MODULE", "HAVE_EXT", "_cuda",
           "_ext", "cuda_devices"]

DISABLE_ENV = "SAGA_NATIVE"
_OFF = {"0", "off", "false", "no"}
_NO_BUILD = ("no compiled module in this install: the native build failed or was skipped "
             "(no compiler or CMake when it was installed), so the pure-Python wheel was used")


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in _OFF


def _cuda_reason_file() -> str | None:
    """Why CMake built no CUDA module, as it wrote next to the host module (None if it did)."""
    try:
        text = resources.files("saga.kernels").joinpath("cuda_reason.txt").read_text()
    except (FileNotFoundError, OSError):
        return None
    return text.strip() or None


try:
    import saga.kernels._ext as _ext

    HAVE_EXT = not _disabled()
    EXT_REASON = f"disabled by {DISABLE_ENV}=0" if _disabled() else _ext.BUILD_INFO
except ImportError as exc:  # pure-Python wheel, or a module that fails to load
    _ext = None  # type: ignore[assignment]
    HAVE_EXT = False
    EXT_REASON = _NO_BUILD if exc.name == "saga.kernels._ext" else f"failed to load: {exc}"

try:
    import saga.kernels._cuda as _cuda

    HAVE_CUDA_MODULE = not _disabled()
    CUDA_REASON = f"disabled by {DISABLE_ENV}=0" if _disabled() else _cuda.BUILD_INFO
except ImportError as exc:
    _cuda = None  # type: ignore[assignment]
    HAVE_CUDA_MODULE = False
    if exc.name != "saga.kernels._cuda":
        CUDA_REASON = f"failed to load: {exc}"
    else:
        CUDA_REASON = _cuda_reason_file() or (
            _NO_BUILD if not HAVE_EXT and _ext is None else "not built")


def cuda_devices() -> int:
    """CUDA devices the CUDA module sees (0 when it is absent or there is no GPU)."""
    if not HAVE_CUDA_MODULE:
        return 0
    return int(_cuda.device_count())
