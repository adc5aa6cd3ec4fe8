"""Sessions leave the coordinator: after a final call plus a grace period, after an idle timeout,
or at EndSession — in the core (time as a parameter) and over gRPC with real workers."""

from __future__ import annotations

import asyncio

import pytest

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.core import CoordinatorCore, CoordinatorError
from saga.coordinator.engine import EngineCall, SimulatedEngine
from saga.coordinator.testing import TOKEN, coordinator, run
from saga.coordinator.worker import WorkerHost
from saga.policy.errors import SagaConfigError, UnknownSessionError


def _core(**kw: float) -> CoordinatorCore:
    core = CoordinatorCore(final_grace_s=5.0, session_idle_s=60.0, **kw)
    core.register("w0", "n0", 8, 0.0)
    core.register("w1", "n1", 8, 0.0)
    return core


def _empty(core: CoordinatorCore) -> bool:
    return not (core.sessions or core._finals or core._ended or core.router.homes()
                or core.afs.tasks())


def test_a_final_call_drops_the_session_after_the_grace_period() -> None:
    core = _core()
    core.route("s", "t", 1.0, deadline_s=30.0, work_tokens=100.0)
    core.call_finished("s", 10, 2, 0, "w0", final=True, now=2.0)
    core.epoch(6.9)
    assert "s" in core.sessions          # late observations still land
    core.tool_finished("s", "grep", 0.5)
    core.epoch(7.0)
    assert "s" not in core.sessions and core.recently_ended("s")
    assert core.sessions_ended == 1 and core.sessions_expired == 0
    core.epoch(12.0)                     # ended ids are forgotten after another grace
    assert _empty(core)


def test_a_call_routed_during_the_grace_period_revives_the_session() -> None:
    core = _core()
    core.route("s", "t", 1.0)
    core.call_finished("s", 10, 2, 0, "w0", final=True, now=2.0)
    core.route("s", "t", 3.0)
    core.epoch(39.0)
    assert "s" in core.sessions and core.sessions_ended == 0


def test_idle_sessions_expire_and_active_ones_stay() -> None:
    core = _core()
    core.route("idle", "t", 0.0)
    core.route("busy", "t", 0.0)
    core.seen("busy", 50.0)
    core.epoch(60.0)
    assert "idle" not in core.sessions and "busy" in core.sessions
    assert core.sessions_expired == 1
    core.heartbeat("w0", 0.0, 1.0, (), 0.0, 61.0)
    core.route("idle", "t", 61.0)  # a late call of the expired task starts afresh
    assert core.session("idle").calls == 1


def test_end_session_is_immediate_and_late_observations_are_ignored_not_errors() -> None:
    core = _core()
    core.route("s", "t", 1.0)
    core.end_session("s", 2.0)
    assert core.recently_ended("s") and core.sessions_ended == 1
    with pytest.raises(UnknownSessionError):
        core.end_session("s", 2.0)
    core.epoch(7.0)
    assert _empty(core)


def test_moves_are_counted_in_the_table_and_the_old_home_is_told() -> None:
    core = _core()
    core.route("s", "t", 0.0)
    home = core.session("s").worker_id
    core.heartbeat(home, 0.9, -1.0, (), 0.0, 0.5)
    core.route("s", "t", 1.0)
    assert core.moves == 1 and [s.session_id for s in core.workers[home].steals_out] == ["s"]
    core.epoch(1.1)
    assert core.moves == 1 and core.session("s").moves == 1


@pytest.mark.parametrize("name", ["final_grace_s", "session_idle_s"])
def test_timeouts_must_be_positive(name: str) -> None:
    with pytest.raises(CoordinatorError, match=name):
        CoordinatorCore(**{name: 0.0})


def test_server_config_checks_the_timeouts() -> None:
    from saga.coordinator.server import ServerConfig

    with pytest.raises(SagaConfigError, match="session_idle_s"):
        ServerConfig(token="x", session_idle_s=-1.0)


def test_final_observation_over_grpc_drops_the_session_and_counts_it() -> None:
    async def body() -> None:
        async with coordinator(epoch_s=0.02, final_grace_s=0.1) as (server, client):
            host = WorkerHost("w0", SimulatedEngine(2, decode_s=0.0), server.address, TOKEN)
            await host.start(5.0)
            try:
                for k, final in enumerate((False, True)):
                    await client.route("s", "t")
                    await host.call(EngineCall("s", "t", "a", (1, 2, 3 + k), 1,
                                               pending_tool=None if final else "grep",
                                               final=final))
                await host.client.flush()
                for _ in range(200):
                    if "s" not in server.core.sessions:
                        break
                    await asyncio.sleep(0.01)
                stats = await client.stats()
                assert stats.sessions == 0 and stats.sessions_ended == 1
                assert stats.sessions_expired == 0 and host.sessions == []
                assert host.client.rejected == []
            finally:
                await host.stop()
    run(body)


def test_final_flag_is_in_the_observation_message() -> None:
    obs = pb.Observation(session_id="s", kind=pb.CALL_END, final=True)
    assert pb.Observation.FromString(obs.SerializeToString()).final
