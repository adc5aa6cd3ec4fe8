"""SAGA's native kernels, each with the NumPy/Python twin that defines its meaning.

Host (C++17, OpenMP when built with it): `walru_select` (saga-policy's WA-LRU victims) and
`next_use` (saga-policy's Bélády); `saga.kernels.cache_core`, saga-policy's `CacheManager` in C++
(its twin is that Python manager). Every function runs its NumPy twin when the compiled module is
absent; `native_status()` says which. Kernels with no caller in SAGA yet (`prefix_overlap`,
`session_table`, the CUDA kernels) live in `saga.kernels.experimental`.
"""

from __future__ import annotations

from saga.kernels.next_use import next_use, next_use_lists, next_use_numpy, next_use_python
from saga.kernels.status import KernelStatus, have_native, native_status
from saga.kernels.walru import Selection, walru_select, walru_select_numpy, walru_select_python

__all__ = [
    "KernelStatus",
    "Selection",
    "have_native",
    "native_status",
    "next_use",
    "next_use_lists",
    "next_use_numpy",
    "next_use_python",
    "walru_select",
    "walru_select_numpy",
    "walru_select_python",
]
