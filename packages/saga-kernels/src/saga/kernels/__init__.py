"""SAGA's native kernels, each with the NumPy/Python twin that defines its meaning.

Host (C++17, OpenMP when built with it): `walru_select`, `next_use`, `prefix_overlap`,
`session_table`. CUDA (when built with nvcc and a GPU is present): `saga.kernels.cuda`. Every
function runs its NumPy twin when the compiled module is absent; `native_status()` says which.
"""

from __future__ import annotations

from saga.kernels.next_use import next_use, next_use_lists, next_use_numpy, next_use_python
from saga.kernels.prefix import prefix_overlap, prefix_overlap_numpy, prefix_overlap_python
from saga.kernels.sessions import PySessionTable, SessionTableLike, session_table
from saga.kernels.status import KernelStatus, have_native, native_status
from saga.kernels.walru import Selection, walru_select, walru_select_numpy, walru_select_python

__all__ = [
    "KernelStatus",
    "PySessionTable",
    "Selection",
    "SessionTableLike",
    "have_native",
    "native_status",
    "next_use",
    "next_use_lists",
    "next_use_numpy",
    "next_use_python",
    "prefix_overlap",
    "prefix_overlap_numpy",
    "prefix_overlap_python",
    "session_table",
    "walru_select",
    "walru_select_numpy",
    "walru_select_python",
]
