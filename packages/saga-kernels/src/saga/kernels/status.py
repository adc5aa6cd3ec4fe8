"""Which kernels run native, which on CUDA, which fall back to their twin, and why."""

from __future__ import annotations

from dataclasses import dataclass

from saga.kernels import _native

HOST_KERNELS = ("walru_select", "next_use", "cache_core", "prefix_overlap", "session_table")
CUDA_KERNELS = ("walru_best", "prefix_overlap_cuda", "kv_migrate", "compact", "prefetch")
EXPERIMENTAL = frozenset({"prefix_overlap", "session_table", *CUDA_KERNELS})
"""Kernels with no caller in SAGA yet (``saga.kernels.experimental``)."""


@dataclass(frozen=True)
class KernelStatus:
    """One kernel: where it runs (``native``, ``cuda`` or ``twin``) and the reason;
    ``experimental``: nothing in SAGA calls it yet."""

    name: str
    kind: str
    backend: str
    detail: str
    experimental: bool = False


def _host() -> tuple[str, str]:
    if not _native.HAVE_EXT:
        return "twin", _native.EXT_REASON
    return "native", f"{_native.EXT_REASON}; {_native._ext.max_threads()} thread(s)"


def _cuda() -> tuple[str, str]:
    if not _native.HAVE_CUDA_MODULE:
        return "twin", f"not built: {_native.CUDA_REASON}"
    devices = _native.cuda_devices()
    if devices == 0:
        return "twin", f"built ({_native.CUDA_REASON}); no GPU visible"
    return "cuda", f"{_native.CUDA_REASON}; {devices} GPU(s)"


def native_status() -> list[KernelStatus]:
    """One row per kernel, host first."""
    host, cuda = _host(), _cuda()
    return ([KernelStatus(n, "host", *host, n in EXPERIMENTAL) for n in HOST_KERNELS]
            + [KernelStatus(n, "cuda", *cuda, n in EXPERIMENTAL) for n in CUDA_KERNELS])


def have_native() -> bool:
    """True when the compiled host kernels are loaded (and not disabled)."""
    return _native.HAVE_EXT
