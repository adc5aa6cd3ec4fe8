"""The gRPC coordinator on loopback: routing, auth, bad input, observations, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator._proto import saga_coordinator_pb2_grpc as pb_grpc
from saga.coordinator.server import CoordinatorServer, ServerConfig, bearer
from saga.coordinator.testing import TOKEN, coordinator, run
from saga.policy.errors import SagaConfigError


async def _register(client: Any, worker_id: str, slots: int = 10, **kw: Any) -> Any:
    return await client.stub.Register(
        pb.RegisterRequest(worker_id=worker_id, node=f"node-{worker_id}", slots=slots, **kw),
        metadata=bearer(TOKEN))


async def _heartbeat(client: Any, worker_id: str, load: float, **kw: Any) -> Any:
    return await client.stub.Heartbeat(
        pb.HeartbeatRequest(worker_id=worker_id, load=load, idle_for_s=kw.pop("idle", -1.0),
                            **kw), metadata=bearer(TOKEN))


async def _code(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details() or ""


def test_affinity_keeps_a_session_home_and_falls_back_above_theta() -> None:
    async def body() -> None:
        async with coordinator() as (server, client):
            await _register(client, "w0")
            await _register(client, "w1")
            await _heartbeat(client, "w0", 0.1)
            await _heartbeat(client, "w1", 0.3)
            first = await client.route("s1", "t")
            assert (first.worker_id, first.reason) == ("w0", pb.NEW_SESSION)
            again = await client.route("s1", "t")
            assert (again.worker_id, again.reason) == ("w0", pb.HOME)
            # Home at theta (0.8): the call goes to the least loaded worker, the new home.
            await _heartbeat(client, "w0", 0.8)
            moved = await client.route("s1", "t")
            assert (moved.worker_id, moved.reason) == ("w1", pb.OVERLOADED)
            info = await client.get_session("s1")
            assert (info.worker_id, info.node, info.calls, info.moves) == ("w1", "node-w1", 3, 1)
            assert server.core.router.home("s1") == "w1"
    run(body)


def test_routes_raise_load_between_heartbeats() -> None:
    async def body() -> None:
        async with coordinator() as (_, client):
            await _register(client, "a", slots=2)
            await _register(client, "b", slots=2)
            workers = [(await client.route(f"s{i}", "t")).worker_id for i in range(4)]
            # Each route adds 1/slots to its worker's load, so new sessions alternate.
            assert sorted(workers) == ["a", "a", "b", "b"]
    run(body)


def test_wrong_or_missing_token_is_unauthenticated() -> None:
    async def body() -> None:
        async with coordinator() as (server, client):
            stub = client.stub
            req = pb.RouteRequest(session_id="s")
            code, details = await _code(stub.Route(req))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details
            code, _ = await _code(stub.Route(req, metadata=bearer("nope")))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = await _code(stub.Stats(pb.StatsRequest(), metadata=bearer("")))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert server.core.routes == 0
            assert 'saga_coordinator_rejected_total{status="unauthenticated"} 3.0' in \
                server.metrics_text()
    run(body)


@pytest.mark.parametrize(("request_kw", "field"), [
    ({"session_id": ""}, "session_id"),
    ({"session_id": "x" * 300}, "session_id"),
    ({"session_id": "s\x00"}, "session_id"),
    ({"session_id": "s", "deadline_s": float("nan")}, "deadline_s"),
    ({"session_id": "s", "work_tokens": -1.0}, "work_tokens"),
    ({"session_id": "s", "tenant_id": "t" * 257}, "tenant_id"),
])
def test_garbage_route_fields_are_invalid_argument(request_kw: dict[str, Any], field: str
                                                   ) -> None:
    async def body() -> None:
        async with coordinator() as (server, client):
            await _register(client, "w0")
            code, details = await _code(client.stub.Route(pb.RouteRequest(**request_kw),
                                                          metadata=bearer(TOKEN)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith(field)
            assert server.core.sessions == {}
            # The server keeps serving.
            assert (await client.route("ok", "t")).worker_id == "w0"
    run(body)


def test_unknown_session_and_worker_are_not_found() -> None:
    async def body() -> None:
        async with coordinator() as (_, client):
            md = bearer(TOKEN)
            code, details = await _code(client.stub.EndSession(
                pb.EndSessionRequest(session_id="ghost"), metadata=md))
            assert code == grpc.StatusCode.NOT_FOUND and "ghost" in details
            code, _ = await _code(client.stub.GetSession(
                pb.GetSessionRequest(session_id="ghost"), metadata=md))
            assert code == grpc.StatusCode.NOT_FOUND
            code, details = await _code(_heartbeat(client, "nobody", 0.1))
            assert code == grpc.StatusCode.NOT_FOUND and "Register" in details
            # No worker at all: a clear UNAVAILABLE, not a crash.
            code, details = await _code(client.stub.Route(pb.RouteRequest(session_id="s"),
                                                          metadata=md))
            assert code == grpc.StatusCode.UNAVAILABLE and "no live worker" in details
    run(body)


def test_bad_register_and_heartbeat_fields() -> None:
    async def body() -> None:
        async with coordinator() as (_, client):
            code, details = await _code(_register(client, "w", slots=0))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("slots")
            code, details = await _code(_register(
                client, "w", sessions=[pb.SessionClaim(session_id="", tenant_id="t")]))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("sessions[0].session_id")
            await _register(client, "w")
            code, details = await _code(_heartbeat(client, "w", float("inf")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("load")
    run(body)


def test_oversized_batches_are_refused() -> None:
    async def body() -> None:
        async with coordinator(max_batch=8) as (_, client):
            await _register(client, "w")

            async def batches() -> AsyncIterator[Any]:
                yield pb.RouteBatch(requests=[pb.RouteRequest(session_id=f"s{i}")
                                              for i in range(9)])

            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in client.route_stream(batches()):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "RouteBatch.requests has 9 items; at most 8" in (info.value.details() or "")

            async def obs() -> AsyncIterator[Any]:
                yield pb.ObservationBatch(worker_id="w", seq=1, observations=[
                    pb.Observation(session_id="s", kind=pb.CALL_START)] * 9)

            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in client.stub.Observe(obs(), metadata=bearer(TOKEN)):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    run(body)


def test_route_stream_answers_each_batch_in_order() -> None:
    async def body() -> None:
        async with coordinator() as (server, client):
            await _register(client, "w0")

            async def batches() -> AsyncIterator[Any]:
                for b in range(3):
                    yield pb.RouteBatch(requests=[
                        pb.RouteRequest(session_id=f"s{b}-{i}", tenant_id="t")
                        for i in range(5)])

            got = [r async for r in client.route_stream(batches())]
            assert [len(r.replies) for r in got] == [5, 5, 5]
            assert {x.worker_id for r in got for x in r.replies} == {"w0"}
            assert server.core.routes == 15
    run(body)


def test_observations_pin_sessions_train_ttl_and_reject_unknown_items() -> None:
    async def body() -> None:
        async with coordinator() as (server, client):
            await _register(client, "w")
            await client.route("s", "t", deadline_s=60.0, work_tokens=1000.0)

            async def obs() -> AsyncIterator[Any]:
                yield pb.ObservationBatch(worker_id="w", seq=7, observations=[
                    pb.Observation(session_id="s", kind=pb.CALL_END, prompt_tokens=100,
                                   output_tokens=10, cached_tokens=40),
                    pb.Observation(session_id="s", kind=pb.TOOL_START, tool="pytest",
                                   pressure=0.2),
                    pb.Observation(session_id="ghost", kind=pb.CALL_START),
                    pb.Observation(session_id="s", kind=pb.TOOL_START, tool="x", pressure=2.0),
                    pb.Observation(session_id="s", kind=pb.CALL_END, prompt_tokens=1,
                                   cached_tokens=5),
                ])

            acks = [a async for a in client.stub.Observe(obs(), metadata=bearer(TOKEN))]
            assert [(a.seq, a.accepted) for a in acks] == [(7, 2)]
            rejected = list(acks[0].rejected)
            assert rejected[0].startswith("observations[2]: session_id 'ghost'")
            assert rejected[1].startswith("observations[3]: pressure")
            assert rejected[2].startswith("observations[4]: cached_tokens")
            assert (await client.get_session("s")).pinned_for_s > 0
            assert server.core.afs.task("s").service == 70  # (100 - 40) + 10 computed tokens
            # TOOL_END ends the pin and feeds the tool's latency model.
            async def end() -> AsyncIterator[Any]:
                yield pb.ObservationBatch(worker_id="w", seq=8, observations=[
                    pb.Observation(session_id="s", kind=pb.TOOL_END, tool="pytest",
                                   tool_latency_s=3.0)])
            [a async for a in client.stub.Observe(end(), metadata=bearer(TOKEN))]
            assert (await client.get_session("s")).pinned_for_s == 0
            assert server.core.observations == 3
            # A late observation of an ended task is accepted as a no-op, not an error.
            await client.end_session("s")

            async def late() -> AsyncIterator[Any]:
                yield pb.ObservationBatch(worker_id="w", seq=9, observations=[
                    pb.Observation(session_id="s", kind=pb.CALL_END, prompt_tokens=5)])
            acks = [a async for a in client.stub.Observe(late(), metadata=bearer(TOKEN))]
            assert (acks[0].accepted, list(acks[0].rejected)) == (1, [])
    run(body)


def test_stats_and_prometheus_metrics_follow_the_table() -> None:
    async def body() -> None:
        async with coordinator(epoch_s=0.02) as (server, client):
            await _register(client, "w0")
            for i in range(3):
                await client.route(f"s{i}", "t")
            await client.end_session("s0")
            await asyncio.sleep(0.1)
            stats = await client.stats()
            assert (stats.sessions, stats.routes) == (2, 3)
            assert stats.afs_epochs >= 2
            assert [(w.worker_id, w.sessions, w.alive) for w in stats.workers] == [
                ("w0", 2, True)]
            text = server.metrics_text()
            assert 'saga_coordinator_routes_total{reason="NEW_SESSION"} 3.0' in text
            assert "saga_coordinator_sessions 2.0" in text
            assert "saga_coordinator_route_seconds_count 3.0" in text
    run(body)


def test_a_silent_worker_expires_and_its_sessions_rehome() -> None:
    async def body() -> None:
        async with coordinator(epoch_s=0.02, worker_timeout_s=0.2) as (_, client):
            await _register(client, "w0")
            await _register(client, "w1")
            await _heartbeat(client, "w1", 0.5)
            first = await client.route("s", "t")
            assert first.worker_id == "w0"
            for _ in range(10):      # only w1 keeps heartbeating
                await _heartbeat(client, "w1", 0.5)
                await asyncio.sleep(0.05)
            again = await client.route("s", "t")
            assert (again.worker_id, again.reason) == ("w1", pb.REHOMED)
    run(body)


def test_avoid_worker_reroutes_a_failed_call() -> None:
    async def body() -> None:
        async with coordinator() as (_, client):
            await _register(client, "w0")
            await _register(client, "w1")
            home = (await client.route("s", "t")).worker_id
            other = (await client.route("s", "t", avoid_worker=home)).worker_id
            assert other != home
            # The avoided worker comes back with its next heartbeat.
            await _heartbeat(client, home, 0.0)
            assert (await client.route("fresh", "t")).worker_id == home
    run(body)


def test_server_config_and_port_errors() -> None:
    with pytest.raises(SagaConfigError, match="token"):
        ServerConfig(token="")

    async def body() -> None:
        async with coordinator() as (server, _):
            clash = CoordinatorServer(ServerConfig(token=TOKEN, port=server.port))
            with pytest.raises(SagaConfigError, match="cannot bind"):
                await clash.start()
    run(body)


def test_generated_stub_matches_the_service() -> None:
    names = {m.name for m in pb.DESCRIPTOR.services_by_name["Coordinator"].methods}
    assert names == {"Route", "RouteStream", "Register", "Heartbeat", "Deregister", "Observe",
                     "EndSession", "GetSession", "Stats", "Ping"}
    assert hasattr(pb_grpc, "CoordinatorStub")
