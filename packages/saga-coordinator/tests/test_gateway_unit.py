"""The gateway's own logic, isolated from inference: hints, tenants, metrics parsing, and the
request path against trivial engines (instant OpenAI-shaped ASGI apps on loopback). Serving
with real vLLM engines is tested in tests/test_gateway_e2e.py and tests/test_gateway_faults.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from saga.coordinator.gateway.app import GatewayConfig, create_app
from saga.coordinator.gateway.engines import parse_vllm_metrics
from saga.coordinator.gateway.hints import HintError, parse_ttl, read_hints
from saga.coordinator.gateway.routing import prompt_hashes
from saga.coordinator.gateway.server import ServerThread
from saga.coordinator.gateway.tenants import AuthError, Tenants, load_api_keys
from saga.coordinator.gateway.trivial_engine import TrivialEngine
from saga.policy.errors import SagaConfigError

CHAT = "/v1/chat/completions"


def _msg(text: str) -> dict[str, object]:
    return {"model": "trivial", "messages": [{"role": "user", "content": text}]}


# -- hints ------------------------------------------------------------------------------------

def test_session_comes_from_header_then_prompt_cache_key_then_user() -> None:
    body = {"prompt_cache_key": "k", "user": "u"}
    assert read_hints({"x-session-id": "h"}, body, "default", "r").meta.session_id == "h"
    hints = read_hints({}, body, "default", "r")
    assert (hints.meta.session_id, hints.session_source) == ("k", "prompt_cache_key")
    assert read_hints({}, {"user": "u"}, "default", "r").meta.session_id == "u"
    alone = read_hints({}, {}, "default", "r1")
    assert alone.meta.session_id == "req-r1" and alone.meta.final
    assert alone.session_source == "none"


def test_tool_hints_become_request_metadata() -> None:
    h = read_hints({"x-session-id": "s", "x-saga-tool": "pytest",
                    "x-saga-tool-latency-ms": "1500", "x-saga-agent-type": "coder",
                    "x-saga-final": "false"}, {}, "acme", "r")
    m = h.meta
    assert (m.pending_tool, m.tool_latency_s, m.agent_type, m.final, m.tenant_id) == (
        "pytest", 1.5, "coder", False, "acme")
    assert m.vllm_xargs()["saga_pending_tool"] == "pytest"


@pytest.mark.parametrize(("headers", "body", "where"), [
    ({"x-saga-final": "maybe"}, {}, "X-Saga-Final header"),
    ({"x-saga-tool-latency-ms": "-3"}, {}, "X-Saga-Tool-Latency-Ms header"),
    ({"x-saga-tool-latency-ms": "nan"}, {}, "X-Saga-Tool-Latency-Ms header"),
    ({"x-session-id": "x" * 300}, {}, "X-Session-Id header"),
    ({}, {"prompt_cache_key": 7}, "prompt_cache_key"),
    ({"x-saga-deadline-s": "soon"}, {}, "X-Saga-Deadline-S header"),
    ({}, {"cache_control": {"type": "ephemeral", "ttl": "forever"}}, "cache_control.ttl"),
    ({}, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "persistent"}}]}]},
     "messages[0].content[0].cache_control.type"),
])
def test_malformed_hints_name_the_header_or_field(headers: dict[str, str],
                                                  body: dict[str, object], where: str) -> None:
    with pytest.raises(HintError) as err:
        read_hints(headers, body, "default", "r")
    assert err.value.where == where


def test_cache_control_ttl_is_a_retention_hint() -> None:
    assert parse_ttl("5m", "t") == 300 and parse_ttl("1h", "t") == 3600
    assert parse_ttl(30, "t") == 30 and parse_ttl("250ms", "t") == 0.25
    h = read_hints({"x-session-id": "s"}, {"messages": [
        {"role": "system", "content": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        "default", "r")
    assert h.retain_s == 3600 and h.meta.reuse_prob == 1.0


# -- tenants and metrics ----------------------------------------------------------------------

def test_api_keys_from_file_env_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# key tenant\nk1 acme\nk2 globex  # comment\n")
    assert load_api_keys(f) == {"k1": "acme", "k2": "globex"}
    j = tmp_path / "keys.json"
    j.write_text(json.dumps({"k3": "initech"}))
    assert load_api_keys(j) == {"k3": "initech"}
    assert load_api_keys(env={"SAGA_API_KEYS": "a=x, b=y"}) == {"a": "x", "b": "y"}
    assert load_api_keys(env={}) is None
    f.write_text("k1 acme extra\n")
    with pytest.raises(SagaConfigError, match="expected `key tenant`"):
        load_api_keys(f)
    with pytest.raises(SagaConfigError, match="cannot read"):
        load_api_keys(tmp_path / "missing")
    t = Tenants({"k1": "acme"})
    assert t.tenant_of("Bearer k1") == "acme"
    for bad in (None, "Bearer nope", "k1"):
        with pytest.raises(AuthError):
            t.tenant_of(bad)
    assert Tenants().tenant_of(None) == "default"
    assert Tenants.cache_salt("acme") != Tenants.cache_salt("globex")
    assert Tenants.cache_salt("default") is None


def test_vllm_metrics_are_summed_over_label_sets() -> None:
    text = ("# HELP x\nvllm:num_requests_running{model_name=\"a\"} 2.0\n"
            "vllm:num_requests_running{model_name=\"b\"} 1.0\n"
            "vllm:num_requests_waiting{model_name=\"a\"} 3\n"
            "vllm:kv_cache_usage_perc{model_name=\"a\"} 0.5\nvllm:other 9\n")
    assert parse_vllm_metrics(text) == {"running": 3.0, "waiting": 3.0, "kv_usage": 0.5}


def test_prompt_hashes_are_chained_prefix_hashes() -> None:
    a, b = prompt_hashes("x" * 1024), prompt_hashes("x" * 768 + "y" * 256)
    assert len(a) == 4 and a[:3] == b[:3] and a[3] != b[3]
    assert prompt_hashes("short") == ()


# -- the request path, on trivial engines -----------------------------------------------------

@pytest.fixture
def two_engines() -> Iterator[tuple[list[TrivialEngine], list[str]]]:
    engines = [TrivialEngine(), TrivialEngine()]
    servers = [ServerThread(e).start() for e in engines]
    try:
        yield engines, [s.url for s in servers]
    finally:
        for s in servers:
            s.stop()


def _gateway(urls: list[str], **kw: object) -> ServerThread:
    return ServerThread(create_app(GatewayConfig(tuple(urls), scrape_s=0.2, **kw))).start()


def test_a_session_stays_on_one_engine_and_carries_its_metadata(
        two_engines: tuple[list[TrivialEngine], list[str]]) -> None:
    engines, urls = two_engines
    gw = _gateway(urls, api_keys={"ka": "acme"})
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            auth = {"Authorization": "Bearer ka", "X-Session-Id": "s1"}
            for _ in range(3):
                r = c.post(CHAT, json=_msg("hello " * 50), headers={**auth, "X-Saga-Tool": "ls"})
                assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
            served = [e for e in engines if e.requests]
            assert len(served) == 1 and served[0].requests == 3
            sent = served[0].seen[-1]
            assert sent["vllm_xargs"]["saga_session_id"] == "acme:s1"  # tenant-scoped
            assert sent["vllm_xargs"]["saga_tenant_id"] == "acme"
            assert sent["vllm_xargs"]["saga_pending_tool"] == "ls"
            assert sent["cache_salt"] == Tenants.cache_salt("acme")
            assert c.post(CHAT, json=_msg("x")).status_code == 401
            r = c.post(CHAT, json=_msg("x"), headers={**auth, "X-Saga-Final": "perhaps"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "X-Saga-Final header"
            assert c.post(CHAT, content=b"{not json", headers=auth).status_code == 400
            assert c.post(CHAT, json=_msg("x"), headers=auth).status_code == 200
            metrics = c.get("/metrics").text
            assert 'saga_gateway_tenant_requests_total{tenant="acme"} 4.0' in metrics
            assert 'saga_gateway_errors_total{kind="auth"} 1.0' in metrics
            assert "saga_gateway_pins_total 3.0" in metrics
            assert c.get("/v1/models").json()["data"][0]["id"] == "trivial"
    finally:
        gw.stop()


def test_streams_pass_through_with_usage(
        two_engines: tuple[list[TrivialEngine], list[str]]) -> None:
    _, urls = two_engines
    gw = _gateway(urls)
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            body = {**_msg("hi"), "stream": True, "stream_options": {"include_usage": True}}
            with c.stream("POST", CHAT, json=body, headers={"X-Session-Id": "s"}) as r:
                assert r.status_code == 200
                events = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[-2][6:])["usage"]["prompt_tokens"] > 0
            assert [json.loads(e[6:])["choices"][0]["delta"]["content"]
                    for e in events[:3]] == ["t0", "t1", "t2"]
    finally:
        gw.stop()


def test_a_dead_engine_is_routed_around_and_the_request_retried(
        two_engines: tuple[list[TrivialEngine], list[str]]) -> None:
    engines, urls = two_engines
    dead = ServerThread(TrivialEngine()).start()
    dead_url = dead.url
    gw = _gateway([dead_url, urls[1]])
    try:
        dead.stop()  # e0 stops answering after the gateway found it up
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for i in range(4):
                r = c.post(CHAT, json=_msg("x"), headers={"X-Session-Id": f"s{i}"})
                assert r.status_code == 200, r.text
            health = c.get("/health").json()
            assert [e["up"] for e in health["engines"]] == [False, True]
            metrics = c.get("/metrics").text
        assert engines[1].requests == 4
        assert "saga_gateway_retries_total 1.0" in metrics or \
            "saga_gateway_retries_total 0.0" in metrics  # a scrape may find it down first
    finally:
        gw.stop()


def test_no_engine_up_is_a_503_and_the_gateway_keeps_serving() -> None:
    gone = ServerThread(TrivialEngine()).start()
    url = gone.url
    gone.stop()
    gw = _gateway([url])
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post(CHAT, json=_msg("x"))
            assert r.status_code == 503 and "no engine is up" in r.json()["error"]["message"]
            assert c.get("/health").status_code == 503
    finally:
        gw.stop()


def test_config_errors_are_named() -> None:
    with pytest.raises(SagaConfigError, match="at least one engine"):
        GatewayConfig(())
    with pytest.raises(SagaConfigError, match="must start with http"):
        GatewayConfig(("localhost:8000",))
    with pytest.raises(SagaConfigError, match="token"):
        GatewayConfig(("http://x",), coordinator="127.0.0.1:1")


def test_past_queue_at_requests_wait_in_the_gateway_and_all_complete() -> None:
    slow = TrivialEngine(delay_s=0.15)
    with ServerThread(slow) as engine:
        gw = _gateway([engine.url], queue_at=2)
        try:
            async def burst() -> list[int]:
                async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                    rs = await asyncio.gather(*(
                        c.post(CHAT, json=_msg("x"), headers={
                            "X-Session-Id": f"s{i}", "X-Saga-Deadline-S": str(5 + i)})
                        for i in range(8)))
                return [r.status_code for r in rs]

            assert asyncio.run(asyncio.wait_for(burst(), 60)) == [200] * 8
            assert slow.most_running <= 2  # the gateway held the rest
            text = httpx.get(gw.url + "/metrics").text
            slowest = max(float(line.split()[-1]) for line in text.splitlines()
                          if line.startswith("saga_gateway_queue_seconds_sum"))
            assert slowest > 0.3  # queued requests waited for places
        finally:
            gw.stop()


def test_gateway_replicas_share_a_grpc_coordinator(
        two_engines: tuple[list[TrivialEngine], list[str]]) -> None:
    """Two gateways with --coordinator route one session to the same engine (real gRPC
    coordinator on loopback), and its session table holds the session."""
    import threading

    from saga.coordinator.server import CoordinatorServer, ServerConfig

    engines, urls = two_engines
    loop = asyncio.new_event_loop()
    server = CoordinatorServer(ServerConfig(token="t", worker_timeout_s=30.0))
    address = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gws = [_gateway(urls, coordinator=address, coordinator_token="t") for _ in range(2)]
    try:
        for i in range(4):
            r = httpx.post(gws[i % 2].url + CHAT, json=_msg("hello"),
                           headers={"X-Session-Id": "shared"}, timeout=10)
            assert r.status_code == 200, r.text
        assert sorted(e.requests for e in engines) == [0, 4]
        assert "shared" in server.core.sessions
        r = httpx.post(gws[0].url + CHAT, json=_msg("bye"),
                       headers={"X-Session-Id": "shared", "X-Saga-Final": "true"}, timeout=10)
        assert r.status_code == 200
        assert "shared" not in server.core.sessions  # the final call ended it
    finally:
        for g in gws:
            g.stop()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
