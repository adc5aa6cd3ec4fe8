"""A live session's KV follows it from one real vLLM engine to another through the gateway.

Two tiny engines share a node KV store (``--kv-store``). A session's first call runs on its home
engine, which writes every full block through to the store. The reference for the second call
is that call on the home engine (the unmoved run). Then the home engine is SIGKILLed; the
gateway re-homes the session and sends its second call, with the load instruction, to the other
engine, which has never seen the session: the greedy output must equal the unmoved run's, and
at least 90 % of its prompt must come back as cached tokens, loaded from the store.

The same two engines (one running request each) serve the steal tests first: a session's call
waits behind a long call on its home engine, in vLLM's queue or in the gateway's, while the
other engine finishes a shorter call and goes idle; the gateway moves the waiting call there
(cancelling it upstream when it waited inside vLLM). Every call is answered exactly once, the
stolen call by the thief, with the unstolen run's greedy output and its prefix loaded.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from saga.coordinator.gateway.app import GatewayConfig, create_app
from saga.coordinator.gateway.launch import EngineProcesses, EngineSpec, engine_command
from saga.coordinator.gateway.server import ServerThread
from saga.vllm.serve import build_command

START_S = 300.0
REQUEST_S = 60.0
MAX_LEN = 1024
PROMPT, OUT, MORE = 600, 8, 16
LONG, SHORT = 400, 24
"""Output tokens of the call that blocks the victim, and of the thief's shorter call."""


@dataclass
class Stack:
    engines: EngineProcesses
    urls: list[str]
    gateway: ServerThread


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    build_command(["--model", "tiny", "--port", "1"])  # build the model once, before both
    store = tmp_path_factory.mktemp("kv-store")
    engines = EngineProcesses(2, EngineSpec(model="tiny", kv_blocks=MAX_LEN // 32 + 8,
                                            max_num_seqs=1, max_model_len=MAX_LEN,
                                            kv_store=str(store)))
    try:
        urls = asyncio.run(engines.start(START_S))
        gateway = ServerThread(create_app(GatewayConfig(
            engines=tuple(urls), preset="saga", scrape_s=0.25, slots=1,
            request_timeout_s=REQUEST_S))).start()
        try:
            yield Stack(engines, urls, gateway)
        finally:
            gateway.stop()
    finally:
        asyncio.run(engines.stop())


def _post(client: httpx.Client, url: str, prompt: list[int], session: str,
          max_tokens: int = OUT) -> httpx.Response:
    r = client.post(url + "/v1/completions", headers={"X-Session-Id": session},
                    json={"model": "tiny", "prompt": prompt, "max_tokens": max_tokens,
                          "temperature": 0, "seed": 0, "ignore_eos": True,
                          "return_token_ids": True}, timeout=REQUEST_S)
    assert r.status_code == 200, r.text
    return r


def _tokens(r: httpx.Response) -> tuple[list[int], int]:
    """(output token ids, cached prompt tokens) of a completion."""
    body: dict[str, Any] = r.json()
    details = body["usage"].get("prompt_tokens_details") or {}
    return list(body["choices"][0]["token_ids"]), int(details.get("cached_tokens") or 0)


def _completion(client: httpx.Client, url: str, prompt: list[int],
                session: str) -> tuple[list[int], int]:
    """Greedy completion of token ids: (output token ids, cached prompt tokens)."""
    return _tokens(_post(client, url, prompt, session))


def _finished(client: httpx.Client, urls: list[str]) -> dict[str, float]:
    """Requests the engines finished, by reason (``length``, ``abort``...), over both."""
    out: dict[str, float] = {}
    for url in urls:
        for fam in text_string_to_metric_families(client.get(url + "/metrics").text):
            for s in fam.samples:
                if s.name == "vllm:request_success_total":
                    reason = s.labels.get("finished_reason", "")
                    out[reason] = out.get(reason, 0.0) + s.value
    return out


def _busy(client: httpx.Client, gw: str, engines: int) -> bool:
    """Wait until ``engines`` engines have a call in flight (the gateway's own count); False
    if that never happened (a short call can finish between two polls on a loaded machine)."""
    deadline = time.monotonic() + REQUEST_S
    while time.monotonic() < deadline:
        loads = [e["load"] for e in client.get(gw + "/health").json()["engines"]]
        if sum(load >= 1 for load in loads) >= engines:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("waits_in", ["engine", "gateway"])
def test_steal_moves_a_waiting_call_to_the_idle_engine(stack: Stack, waits_in: str) -> None:
    # queue_at 2: the second call on an engine is forwarded and waits in vLLM's queue;
    # queue_at 1: it waits in the gateway's.
    server = ServerThread(create_app(GatewayConfig(
        engines=tuple(stack.urls), preset="saga", scrape_s=0.1, slots=1,
        queue_at=2 if waits_in == "engine" else 1, request_timeout_s=REQUEST_S))).start()
    rng = random.Random(11 if waits_in == "engine" else 13)
    session = f"steal-{waits_in}"
    p1 = [rng.randrange(5, 1000) for _ in range(PROMPT)]
    gw = server.url
    answers: dict[str, httpx.Response] = {}

    took: dict[str, float] = {}

    def send(name: str, prompt: list[int], sid: str, max_tokens: int) -> None:
        t = time.monotonic()
        with httpx.Client(trust_env=False) as c:
            answers[name] = _post(c, gw, prompt, sid, max_tokens)
        took[name] = time.monotonic() - t

    try:
        with httpx.Client(trust_env=False) as client:
            before = _finished(client, stack.urls)
            first = _post(client, gw, p1, session)
            home = first.headers["x-saga-engine"]
            out1, _ = _tokens(first)
            time.sleep(0.3)  # a scrape reports the home idle again (routing reads its load)
            # The home engine runs a long call of the session; the other one a shorter call.
            long = threading.Thread(target=send, args=(
                "long", p1 + [rng.randrange(5, 1000) for _ in range(8)], session, LONG))
            long.start()
            assert _busy(client, gw, 1), "the long call never started"
            short = threading.Thread(target=send, args=(
                "short", [rng.randrange(5, 1000) for _ in range(64)], f"{session}-b", SHORT))
            short.start()
            if not _busy(client, gw, 2):
                long.join(REQUEST_S)
                short.join(REQUEST_S)
                pytest.skip("setup not reached: the shorter call finished (or shared the home) "
                            "before both engines were seen busy, so nothing waited to be stolen")
            # No engine has headroom: the session's next call goes home and waits there.
            p2 = p1 + out1 + [rng.randrange(5, 1000) for _ in range(MORE)]
            t0 = time.monotonic()
            stolen = _post(client, gw, p2, session)
            waited = time.monotonic() - t0
            long.join(REQUEST_S)
            short.join(REQUEST_S)
            answered_long = not long.is_alive() and "long" in answers
            short_s = took.get("short", -1.0)
            assert answered_long and "short" in answers
            assert answers["long"].headers["x-saga-engine"] == home
            thief = answers["short"].headers["x-saga-engine"]
            assert thief != home
            seen = [line for line in client.get(gw + "/metrics").text.splitlines()
                    if ("steals_total" in line or "routes_total" in line)
                    and not line.startswith("#")]
            assert stolen.headers["x-saga-engine"] == thief, \
                f"not stolen (waited {waited:.2f} s; short took {short_s:.2f} s): {seen}"
            moved, cached = _tokens(stolen)
            assert cached >= 0.9 * len(p2), f"{cached} of {len(p2)} prompt tokens cached"
            unstolen, _ = _tokens(_post(client, stack.urls[int(home[1:])], p2, session))
            assert moved == unstolen
            # Each call answered once, by one engine: four through the gateway, one direct.
            ids = {r.headers["x-request-id"] for r in (first, stolen, *answers.values())}
            assert len(ids) == 4
            after = _finished(client, stack.urls)
            done = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            assert done.get("length", 0.0) == 5, done
            metrics = client.get(gw + "/metrics").text
            assert _metric(metrics, "saga_gateway_steals_total", where=waits_in) == 1
            assert _metric(metrics, "saga_gateway_steals_total") == 1
            assert _metric(metrics, "saga_gateway_requests_total", status="200") == 4
    finally:
        server.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_moved_session_loads_its_kv_with_identical_output(stack: Stack) -> None:
    rng = random.Random(7)
    p1 = [rng.randrange(5, 1000) for _ in range(PROMPT)]
    gw = stack.gateway.url
    with httpx.Client(trust_env=False) as client:
        first, _ = _completion(client, gw, p1, "s-move")
        metrics = client.get(gw + "/metrics").text
        served = [i for i in range(2) if _metric(
            metrics, "saga_gateway_requests_total", engine=f"e{i}", status="200") > 0]
        assert len(served) == 1
        home, other = served[0], 1 - served[0]
        p2 = p1 + first + [rng.randrange(5, 1000) for _ in range(MORE)]
        unmoved, home_cached = _completion(client, stack.urls[home], p2, "s-move")
        assert home_cached >= 0.9 * len(p2)  # the unmoved run reads its own prefix cache

        stack.engines.kill(home)
        moved, cached = _completion(client, gw, p2, "s-move")
        assert moved == unmoved
        assert cached >= 0.9 * len(p2), f"{cached} of {len(p2)} prompt tokens cached"
        engine_metrics = client.get(stack.urls[other] + "/metrics").text
        assert _metric(engine_metrics, "vllm:saga_kv_store_loaded_blocks_total") >= cached // 32
        assert _metric(engine_metrics, "vllm:external_prefix_cache_hits_total") >= cached
        assert _metric(client.get(gw + "/metrics").text, "saga_gateway_kv_moves_total") == 1


def test_engine_command_passes_the_kv_store() -> None:
    cmd = engine_command(EngineSpec(kv_store="/node/kv"), "127.0.0.1", 8001)
    assert cmd[cmd.index("--kv-store") + 1] == "/node/kv"
    assert "--kv-store" not in engine_command(EngineSpec(), "127.0.0.1", 8001)
