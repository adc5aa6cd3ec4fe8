"""Kernels with no caller in SAGA yet, kept built and tested for the layers they were made for.

- ``prefix_overlap``: a request's common-prefix length with many sessions at once, the batched
  input a reuse prediction or a prefix-affinity router would take; today's routers and
  ``predict_reuse`` look up one session at a time and do not need it.
- ``session_table``: a sharded, GIL-releasing session → (worker, pinned-until) map for a
  router serving many threads; the coordinator's session map keys sessions by string, keeps
  them ordered by last activity (its idle expiry reads only the oldest) and holds more than a
  worker and a pin per session, which this table does not.
- ``saga.kernels.experimental.cuda``: WA-LRU scoring, prefix overlap, KV migration, pool
  compaction and prefetch on the GPU, for an engine that keeps its pools on the device; the vLLM
  integration uses vLLM's own block tables and copies.

They are compiled into the same extension modules as the kernels in use (``saga.kernels._ext``
and ``saga.kernels._cuda``); only their Python wrappers live here, so moving them cost no build
change. Each has its NumPy twin, and the tests hold native and twin equal.
"""

from __future__ import annotations

from saga.kernels.experimental.prefix import (
    prefix_overlap,
    prefix_overlap_numpy,
    prefix_overlap_python,
)
from saga.kernels.experimental.sessions import (
    PySessionTable,
    SessionTableLike,
    get_many_sorted,
    session_table,
)

__all__ = [
    "PySessionTable",
    "SessionTableLike",
    "get_many_sorted",
    "prefix_overlap",
    "prefix_overlap_numpy",
    "prefix_overlap_python",
    "session_table",
]
