"""Which kernels run native, which on CUDA, which fall back to their twin, and why."""

from __future__ import annotations

from dataclasses import dataclass

from saga.kernels import _native

HOST_KERNELS = ("walru_select", "next_use", "prefix_overlap", "session_table")
CUDA_KERNELS = ("walru_best", "prefix_overlap_cuda", "kv_migrate", "compact", "prefetch")


@dataclass(frozen=True)
class KernelStatus:
    """One kernel: where it runs (``native``, ``cuda`` or ``twin``) and the reason."""

    name: str
    kind: str
    backend: str
    detail: str


def native_status() -> list[KernelStatus]:
    """One row per kernel, host first."""
    rows = []
    for name in HOST_KERNELS:
        if _native.HAVE_EXT:
            threads = _native._ext.max_threads()
            rows.append(KernelStatus(name, "host", "native",
                                     f"{_native.EXT_REASON}; {threads} thread(s)"))
        else:
            rows.append(KernelStatus(name, "host", "twin", _native.EXT_REASON))
    devices = _native.cuda_devices()
    for name in CUDA_KERNELS:
        if not _native.HAVE_CUDA_MODULE:
            rows.append(KernelStatus(name, "cuda", "twin", f"not built: {_native.CUDA_REASON}"))
        elif devices == 0:
            rows.append(KernelStatus(name, "cuda", "twin",
                                     f"built ({_native.CUDA_REASON}); no GPU visible"))
        else:
            rows.append(KernelStatus(name, "cuda", "cuda",
                                     f"{_native.CUDA_REASON}; {devices} GPU(s)"))
    return rows


def have_native() -> bool:
    """True when the compiled host kernels are loaded (and not disabled)."""
    return _native.HAVE_EXT
