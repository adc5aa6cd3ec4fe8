"""The sharded session table behaves like its dict twin, also under concurrent batch writers."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.kernels import _native
from saga.kernels.experimental import PySessionTable, get_many_sorted, session_table

needs_native = pytest.mark.skipif(not _native.HAVE_EXT, reason=_native.EXT_REASON)
ops = st.lists(st.tuples(st.sampled_from(["set", "remove", "expire", "get"]),
                         st.integers(-3, 8), st.integers(0, 3), st.sampled_from(
                             [-math.inf, 0.0, 1.0, 2.5, math.inf])), max_size=40)


@settings(max_examples=100, deadline=None)
@given(script=ops, shards=st.sampled_from([1, 3, 64]))
def test_native_matches_twin(script: list[tuple[str, int, int, float]], shards: int) -> None:
    tables = [PySessionTable(shards)]
    if _native.HAVE_EXT:
        tables.append(session_table(shards, native=True))  # type: ignore[arg-type]
    for op, s, w, p in script:
        answers = []
        for t in tables:
            if op == "set":
                t.set(s, w, p)
                answers.append(None)
            elif op == "remove":
                answers.append(t.remove(s))
            elif op == "expire":
                answers.append(t.expire(p))
            else:
                answers.append(t.get(s))
        assert all(a == answers[0] for a in answers)
    keys = np.arange(-3, 9, dtype=np.int64)
    got = [t.get_many(keys) for t in tables]
    assert all(np.array_equal(g[0], got[0][0]) and np.array_equal(g[1], got[0][1]) for g in got)
    assert all(len(t) == len(tables[0]) for t in tables)


@pytest.mark.parametrize("native", [False, True])
def test_batch_and_errors(native: bool) -> None:
    if native and not _native.HAVE_EXT:
        pytest.skip("native kernels not loaded")
    t = session_table(4, native=native)
    t.set_many(np.array([5, 6, 5], np.int64), np.array([1, 2, 3], np.int64),
               np.array([10.0, -np.inf, 20.0]))
    assert t.get(5) == (3, 20.0) and len(t) == 2  # last write wins, like dict.update
    workers, pinned = t.get_many(np.array([6, 7], np.int64))
    assert workers.tolist() == [2, -1] and pinned.tolist() == [-np.inf, -np.inf]
    with pytest.raises(ValueError, match="NaN"):
        t.set(1, 0, float("nan"))
    with pytest.raises(ValueError, match="worker must be >= 0"):
        t.set_many(np.array([1], np.int64), np.array([-2], np.int64), np.array([0.0]))
    with pytest.raises(ValueError, match="NaN"):
        t.expire(float("nan"))
    assert t.expire(15.0) == 1 and t.get(5) == (3, 20.0)
    with pytest.raises(ValueError, match="shards"):
        session_table(0, native=native)


@needs_native
def test_concurrent_writers_lose_nothing() -> None:
    t = session_table(64, native=True)
    n, writers = 20_000, 4

    def write(part: int) -> None:
        keys = np.arange(part, n * writers, writers, dtype=np.int64)
        for _ in range(3):
            t.set_many(keys, keys % 97, keys.astype(np.float64))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    keys = np.arange(n * writers, dtype=np.int64)
    workers, pinned = t.get_many(keys)
    assert len(t) == n * writers
    assert np.array_equal(workers, keys % 97) and np.array_equal(pinned, keys.astype(np.float64))


def test_sorted_snapshot_lookup() -> None:
    keys = np.array([1, 4, 9], np.int64)
    w, p = get_many_sorted(keys, np.array([7, 8, 9], np.int64), np.array([1.0, 2.0, 3.0]),
                           np.array([4, 0, 10, 9], np.int64))
    assert w.tolist() == [8, -1, -1, 9] and p.tolist() == [2.0, -np.inf, -np.inf, 3.0]
    w, _ = get_many_sorted(keys[:0], keys[:0], np.empty(0), np.array([1], np.int64))
    assert w.tolist() == [-1]
