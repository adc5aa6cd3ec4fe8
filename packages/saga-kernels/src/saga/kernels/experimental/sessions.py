"""A sharded concurrent session table: session → (worker, pinned-until).

Sessions are int64 keys (a caller maps its session ids through a stable hash). Missing sessions
read as worker ``-1``, pinned until ``-inf``. ``expire(now)`` forgets every session whose pin
has lapsed (``pinned_until <= now``). The native table has one lock per shard and releases the
GIL in its batch calls, so threads serving different sessions do not serialise on one lock.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from saga.kernels import _native
from saga.kernels._arrays import FloatArray, IntArray, f64, i64

DEFAULT_SHARDS = 64


class SessionTableLike(Protocol):
    """What both the native table and its twin offer."""

    def set(self, session: int, worker: int, pinned_until: float) -> None: ...
    def get(self, session: int) -> tuple[int, float] | None: ...
    def remove(self, session: int) -> bool: ...
    def __len__(self) -> int: ...
    def set_many(self, sessions: IntArray, workers: IntArray, pinned_until: FloatArray) -> None: ...
    def get_many(self, sessions: IntArray) -> tuple[IntArray, FloatArray]: ...
    def expire(self, now: float) -> int: ...


def _check_entry(worker: int, pinned_until: float, at: int) -> None:
    if worker < 0:
        raise ValueError(f"SessionTable: worker must be >= 0 (entry {at})")
    if math.isnan(pinned_until):
        raise ValueError(f"SessionTable: pinned_until is NaN (entry {at}); use -inf for not "
                         "pinned")


class PySessionTable:
    """The twin: one dict (the meaning; no sharding, since the GIL serialises it anyway)."""

    def __init__(self, shards: int = DEFAULT_SHARDS) -> None:
        if not 1 <= shards <= 1 << 20:
            raise ValueError("SessionTable: shards must be in [1, 2**20]")
        self.shards = shards
        self._map: dict[int, tuple[int, float]] = {}

    def set(self, session: int, worker: int, pinned_until: float) -> None:
        _check_entry(worker, pinned_until, 0)
        self._map[int(session)] = (int(worker), float(pinned_until))

    def get(self, session: int) -> tuple[int, float] | None:
        return self._map.get(int(session))

    def remove(self, session: int) -> bool:
        return self._map.pop(int(session), None) is not None

    def __len__(self) -> int:
        return len(self._map)

    def set_many(self, sessions: IntArray, workers: IntArray, pinned_until: FloatArray) -> None:
        s, w, p = i64(sessions, "sessions"), i64(workers, "workers"), f64(pinned_until, "pinned")
        if not s.size == w.size == p.size:
            raise ValueError("SessionTable.set_many: sessions, workers and pinned_until must "
                             "have one length")
        for i, (wi, pi) in enumerate(zip(w.tolist(), p.tolist(), strict=True)):
            _check_entry(wi, pi, i)
        for si, wi, pi in zip(s.tolist(), w.tolist(), p.tolist(), strict=True):
            self._map[si] = (wi, pi)

    def get_many(self, sessions: IntArray) -> tuple[IntArray, FloatArray]:
        s = i64(sessions, "sessions").tolist()
        got = [self._map.get(x, (-1, -math.inf)) for x in s]
        return (np.fromiter((g[0] for g in got), np.int64, len(got)),
                np.fromiter((g[1] for g in got), np.float64, len(got)))

    def expire(self, now: float) -> int:
        if math.isnan(now):
            raise ValueError("SessionTable.expire: now is NaN")
        gone = [s for s, (_, p) in self._map.items() if p <= now]
        for s in gone:
            del self._map[s]
        return len(gone)


def session_table(shards: int = DEFAULT_SHARDS, *, native: bool | None = None) -> SessionTableLike:
    """A session table: the native sharded one when built (or ``native=True``), else the twin."""
    use = _native.HAVE_EXT if native is None else native
    if use and not _native.HAVE_EXT:
        raise RuntimeError(f"native kernels unavailable: {_native.EXT_REASON}")
    if use:
        table: SessionTableLike = _native._ext.SessionTable(shards)
        return table
    return PySessionTable(shards)


def get_many_sorted(keys: IntArray, workers: IntArray, pinned: FloatArray,
                    sessions: Any) -> tuple[IntArray, FloatArray]:
    """The NumPy form of a batch lookup: a snapshot sorted by key, searched with searchsorted
    (what a vectorised caller does without a hash table; rebuilt on every change)."""
    s = i64(sessions, "sessions")
    pos = np.searchsorted(keys, s)
    pos_c = np.minimum(pos, max(keys.size - 1, 0))
    hit = (pos < keys.size) & (keys[pos_c] == s) if keys.size else np.zeros(s.size, bool)
    return (np.where(hit, workers[pos_c] if keys.size else -1, -1).astype(np.int64),
            np.where(hit, pinned[pos_c] if keys.size else -np.inf, -np.inf))
