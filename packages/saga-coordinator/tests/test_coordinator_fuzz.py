"""Fuzzed gRPC traffic against a real coordinator on 127.0.0.1.

Every method gets random well-typed messages (ids empty, huge, unicode, control characters;
NaN, infinite and negative numbers; unknown enum values; long repeated fields) and raw random
bytes. Required of every answer: OK, or a client error (``INVALID_ARGUMENT`` naming a field,
``NOT_FOUND``, ``UNAVAILABLE``), never ``INTERNAL``/``UNKNOWN``; messages over the stated
receive limit are ``RESOURCE_EXHAUSTED``. After every example the server still answers Ping
and a valid Route, and ``CoordinatorCore.check_invariants()`` finds nothing wrong.

The server runs on its own event loop in a thread; the test thread talks to it with grpc's
blocking client and reads the core only through that loop (the epoch task mutates it).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.server import CoordinatorServer, ServerConfig, bearer
from saga.coordinator.testing import TOKEN
from saga.coordinator.validate import MAX_BATCH, MAX_MESSAGE_BYTES

SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]
METHODS = {m.name: m for m in SERVICE.methods}
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLIENT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                 grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}
FIELD_NAMES = {f.name for msg in pb.DESCRIPTOR.message_types_by_name.values()
               for f in msg.fields} | {"RouteBatch.requests"}


class LiveServer:
    """A coordinator on a background event loop, with a blocking channel to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = CoordinatorServer(ServerConfig(token=TOKEN, worker_timeout_s=30.0))
        address = self.on_loop(self.server.start)
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 * 2**20)])

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            out = fn()
            return await out if asyncio.iscoroutine(out) else out
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def call(self, method: str, payload: bytes | list[bytes]) -> tuple[grpc.StatusCode, str,
                                                                       list[bytes]]:
        """One raw call (bytes in, bytes out); a stream method takes a list of messages."""
        path = f"/{SERVICE.full_name}/{method}"
        kw: dict[str, Any] = {"metadata": bearer(TOKEN), "timeout": 10}
        try:
            if METHODS[method].client_streaming:
                assert isinstance(payload, list)
                stub = self.channel.stream_stream(path)
                return grpc.StatusCode.OK, "", list(stub(iter(payload), **kw))
            assert isinstance(payload, bytes)
            return grpc.StatusCode.OK, "", [self.channel.unary_unary(path)(payload, **kw)]
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", []

    def close(self) -> None:
        self.channel.close()
        self.on_loop(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    srv = LiveServer()
    try:
        yield srv
    finally:
        srv.close()


def _still_serving(live: LiveServer) -> None:
    """Ping and a valid Route answer, and the core's invariants hold."""
    code, details, _ = live.call("Ping", pb.PingRequest().SerializeToString())
    assert code == grpc.StatusCode.OK, details
    reg = pb.RegisterRequest(worker_id="w-ok", node="n-ok", slots=4).SerializeToString()
    assert live.call("Register", reg)[0] == grpc.StatusCode.OK
    code, details, out = live.call("Route", pb.RouteRequest(session_id="s-ok").SerializeToString())
    assert code == grpc.StatusCode.OK, details
    assert pb.RouteReply.FromString(out[0]).worker_id
    assert live.on_loop(live.server.core.check_invariants) == []
    assert live.on_loop(lambda: _router_agrees(live.server.core)) == []


def _router_agrees(core: Any) -> list[str]:
    """SAGA's affinity router keeps a home per session: it must be the table's worker (the
    table is the coordinator's record; a router that drifts from it routes from stale homes)."""
    homes, table = dict(core.router.homes()), {s: e.worker_id for s, e in core.sessions.items()}
    return sorted(s for s in homes.keys() | table.keys() if homes.get(s) != table.get(s))[:5]


def _check_answer(method: str, code: grpc.StatusCode, details: str, out: list[bytes]) -> None:
    assert code in CLIENT_ERRORS, (method, code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert any(f in details for f in FIELD_NAMES) or "is not a valid" in details, details
    if method == "Observe":
        for raw in out:
            for line in pb.ObservationAck.FromString(raw).rejected:
                assert line.startswith("observations[") and any(f in line for f in FIELD_NAMES)


# -- well-typed messages ----------------------------------------------------------------------
# Each field is mostly valid (ids from a small pool, so calls meet the same sessions and
# workers) and one time in six anything its type allows.
pool = st.sampled_from(["w1", "w2", "w-ok", "s1", "s2", "s-ok"])
bad_ids = st.one_of(st.just(""), st.text(max_size=20), st.text(min_size=250, max_size=300),
                    st.text(st.characters(max_codepoint=31), min_size=1, max_size=4))
bad_numbers = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -1.0,
                                                      1e308, -1e308, 5e-324]))
u32 = st.integers(0, 2**32 - 1)
enum_values = st.integers(-(2**31), 2**31 - 1)


_CLEAN = [False]
"""Set per example by :func:`calls`: a clean message has only valid fields (half of them are,
so that the calls reach the core's deeper paths: claims, steals, TTL pins, AFS)."""


def _or_bad(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    return draw(bad) if not _CLEAN[0] and draw(st.integers(0, 5)) == 0 else draw(good)


def _id(draw: st.DrawFn) -> str:
    return str(_or_bad(draw, pool, bad_ids))


def _num(draw: st.DrawFn, hi: float = 100.0) -> float:
    return float(_or_bad(draw, st.floats(0.0, hi), bad_numbers))


def _route(draw: st.DrawFn) -> Any:
    return pb.RouteRequest(session_id=_id(draw), tenant_id=_or_bad(draw, pool, bad_ids),
                           agent_type=_or_bad(draw, pool, bad_ids), prompt_tokens=draw(u32),
                           deadline_s=_num(draw), work_tokens=_num(draw, 1e6),
                           avoid_worker=_or_bad(draw, st.just(""), pool | bad_ids))


def _observation(draw: st.DrawFn) -> Any:
    return pb.Observation(
        session_id=_id(draw), kind=_or_bad(draw, st.integers(1, 4), enum_values),
        node=_or_bad(draw, pool, bad_ids), prompt_tokens=draw(u32), output_tokens=draw(u32),
        cached_tokens=_or_bad(draw, st.just(0), u32),
        tool=_or_bad(draw, st.sampled_from(["grep", "bash"]), bad_ids),
        tool_latency_s=_num(draw), cache_state=_or_bad(draw, st.integers(0, 4), enum_values),
        pressure=_num(draw, 1.0), final=draw(st.booleans()))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, bytes | list[bytes]]:
    """A method and a random but well-typed request (a list of them for a stream)."""
    method = draw(st.sampled_from(sorted(METHODS)))
    _CLEAN[0] = draw(st.booleans())
    n = st.integers(0, 6)
    if method == "Route":
        msg: Any = _route(draw)
    elif method == "RouteStream":
        return method, [pb.RouteBatch(requests=[_route(draw) for _ in range(draw(n))])
                        .SerializeToString() for _ in range(draw(st.integers(1, 3)))]
    elif method == "Register":
        msg = pb.RegisterRequest(worker_id=_id(draw), node=_or_bad(draw, pool, bad_ids),
                                 slots=_or_bad(draw, st.integers(1, 8), u32),
                                 sessions=[pb.SessionClaim(
                                     session_id=_id(draw), tenant_id=_or_bad(draw, pool, bad_ids),
                                     pinned_for_s=_num(draw), kv_tokens=draw(u32))
                                     for _ in range(draw(n))])
    elif method == "Heartbeat":
        msg = pb.HeartbeatRequest(worker_id=_id(draw), load=_num(draw, 2.0),
                                  idle_for_s=_or_bad(draw, st.floats(-1, 10), bad_numbers),
                                  step_time_s=_num(draw, 1.0),
                                  waiting=[pb.WaitingSession(session_id=_id(draw),
                                                             kv_bytes=_num(draw, 1e9))
                                           for _ in range(draw(n))])
    elif method == "Observe":
        return method, [pb.ObservationBatch(
            worker_id=_id(draw), seq=draw(st.integers(0, 2**64 - 1)),
            observations=[_observation(draw) for _ in range(draw(n))]).SerializeToString()
            for _ in range(draw(st.integers(1, 3)))]
    elif method == "Deregister":
        msg = pb.DeregisterRequest(worker_id=_id(draw))
    elif method in ("EndSession", "GetSession"):
        msg = getattr(pb, METHODS[method].input_type.name)(session_id=_id(draw))
    else:
        msg = getattr(pb, METHODS[method].input_type.name)()
    return method, msg.SerializeToString()


@FUZZ
@given(call=calls())
def test_well_typed_random_messages(live: LiveServer, call: tuple[str, Any]) -> None:
    method, payload = call
    code, details, out = live.call(method, payload)
    event(f"{method}: {code.name}")
    _check_answer(method, code, details, out)
    _still_serving(live)


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)),
       payload=st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_raw_random_bytes(live: LiveServer, method: str, payload: list[bytes]) -> None:
    code, details, out = live.call(
        method, payload if METHODS[method].client_streaming else payload[0])
    _check_answer(method, code, details, out)
    _still_serving(live)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_undecodable_bytes_are_invalid_argument(live: LiveServer, method: str) -> None:
    bad = b"\x0a\x02\xff\xfe"  # field 1 (an id string in every request) with invalid UTF-8
    if method in ("Ping", "Stats"):
        bad = b"\x0b"  # a group start with no end: not a message of any type
    code, details, _ = live.call(method, [bad] if METHODS[method].client_streaming else bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid" in details, (code,
                                                                                   details)
    _still_serving(live)


@pytest.mark.parametrize("method", ["Route", "RouteStream", "Register", "Observe", "Ping"])
def test_oversized_messages_are_resource_exhausted(live: LiveServer, method: str) -> None:
    huge = b"\x0a" + b"\xff\xff\xff\x03" + b"x" * (MAX_MESSAGE_BYTES + 16)
    code, details, _ = live.call(method, [huge] if METHODS[method].client_streaming else huge)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    _still_serving(live)


def test_batches_over_max_batch_name_the_field(live: LiveServer) -> None:
    over = pb.RouteBatch(requests=[pb.RouteRequest(session_id=f"b{i}")
                                   for i in range(MAX_BATCH + 1)]).SerializeToString()
    code, details, _ = live.call("RouteStream", [over])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "RouteBatch.requests" in details
    obs = pb.ObservationBatch(worker_id="w-ok", observations=[
        pb.Observation(session_id="s-ok", kind=pb.CALL_START)] * (MAX_BATCH + 1))
    code, details, _ = live.call("Observe", [obs.SerializeToString()])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "observations" in details
    claims = pb.RegisterRequest(worker_id="w-big", slots=1, sessions=[
        pb.SessionClaim(session_id="c")] * 100_001)
    code, details, _ = live.call("Register", claims.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sessions" in details
    _still_serving(live)


def test_message_size_limit_is_a_config_field() -> None:
    from saga.policy.errors import SagaConfigError

    assert ServerConfig(token="t").max_message_bytes == MAX_MESSAGE_BYTES == 4 * 2**20
    with pytest.raises(SagaConfigError, match="max_message_bytes"):
        ServerConfig(token="t", max_message_bytes=10)
