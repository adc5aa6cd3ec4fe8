"""What must hold of a coordinator's state after every request, whatever the preset.

The fuzz tests call :meth:`CoordinatorCore.check_invariants` after every message, so a bad input
that corrupts the table shows up where it happened.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.coordinator.core import CoordinatorCore

__all__ = ["problems"]

_COUNTERS = ("routes", "steals", "epochs", "observations", "moves", "sessions_ended",
             "sessions_expired")


def problems(core: CoordinatorCore) -> list[str]:
    """Everything wrong with ``core`` (empty when nothing is).

    Every number finite and every count non-negative; no pin without a TTL policy; AFS tracking
    exactly the sessions marked ``in_afs`` (none without AFS). A router's own session map, if it
    keeps one, is the router's business: the table is the coordinator's record.
    """
    bad = [f"counter {name} is negative" for name in _COUNTERS if getattr(core, name) < 0]
    for w in core.workers.values():
        numbers = (w.load, w.last_seen, w.step_time_s,
                   0.0 if w.idle_since is None else w.idle_since,
                   *(x.kv_bytes for x in w.waiting))
        if not all(math.isfinite(x) for x in numbers) or w.load < 0 or w.slots < 1:
            bad.append(f"worker {w.worker_id!r}: load/time not finite or negative ({w})")
    for sid, e in core.sessions.items():
        if not all(math.isfinite(x) for x in (e.pinned_until, e.last_seen)):
            bad.append(f"session {sid!r}: pinned_until/last_seen not finite")
        if e.calls < 0 or e.moves < 0:
            bad.append(f"session {sid!r}: negative calls/moves")
        if core.ttl is None and e.pinned_until != 0.0:
            bad.append(f"session {sid!r}: pinned although the preset has no TTL policy")
    return bad + _afs_problems(core)


def _afs_problems(core: CoordinatorCore) -> list[str]:
    in_afs = {sid for sid, e in core.sessions.items() if e.in_afs}
    if core.afs is None:
        return [f"sessions in AFS without AFS: {sorted(in_afs)[:5]}"] if in_afs else []
    bad: list[str] = []
    tracked = set(core.afs.tasks())
    if tracked != in_afs:
        bad.append(f"AFS tasks != sessions in AFS: {sorted(tracked ^ in_afs)[:5]}")
    for t in core.afs.tasks().values():
        if not all(math.isfinite(x) for x in (t.work, t.service, t.deadline_s)):
            bad.append(f"AFS task {t.task_id!r}: work/service/deadline not finite")
    if not all(math.isfinite(x) for x in core.shares().values()):
        bad.append("an AFS share is not finite")
    return bad
