"""The bounded soak: 10,000 agent sessions through a loopback coordinator and simulated workers
leave every per-session table as it found it, and the process's memory flat."""

from __future__ import annotations

import pytest

from saga.coordinator.soak import SoakConfig, SoakError, run_soak

RSS_BOUND_KIB = 8 * 1024
"""Resident growth allowed after the warm-up: with one coroutine per lane the driver's own
memory is flat, so what remains is allocator noise (measured: well under 1 MiB for 10,000)."""


def test_ten_thousand_sessions_leave_no_trace() -> None:
    r = run_soak(SoakConfig(sessions=10_000, workers=4, concurrency=400, warmup=800,
                            max_seconds=120.0))
    assert (r.sessions, r.sessions_ended, r.sessions_expired) == (10_000, 10_000, 0)
    assert r.calls >= 20_000 and r.moves > 0          # re-homing happened, and was cleaned
    assert r.leaks == [], (r.tables_before, r.tables_after)
    assert r.tables_after["sessions"] == r.tables_after["router_homes"] == 0
    assert r.observations_rejected == 0 and r.observations_dropped == 0
    assert r.rss_growth_kib < RSS_BOUND_KIB, r.rss_growth_kib


def test_the_soak_stops_by_itself() -> None:
    with pytest.raises(SoakError, match="did not finish within"):
        run_soak(SoakConfig(sessions=2000, concurrency=10, warmup=0, tool_s=(0.05, 0.05),
                            max_seconds=0.5))


def test_a_bad_config_says_what_to_fix() -> None:
    with pytest.raises(Exception, match="calls must be"):
        SoakConfig(calls=(3, 2))
