"""A live session's KV follows it from one real vLLM engine to another through the gateway.

Two tiny engines share a node KV store (``--kv-store``). A session's first call runs on its home
engine, which writes every full block through to the store. The reference for the second call
is that call on the home engine (the unmoved run). Then the home engine is SIGKILLed; the
gateway re-homes the session and sends its second call, with the load instruction, to the other
engine, which has never seen the session: the greedy output must equal the unmoved run's, and
at least 90 % of its prompt must come back as cached tokens, loaded from the store.
"""

from __future__ import annotations

import asyncio
import random
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
                                            max_num_seqs=2, max_model_len=MAX_LEN,
                                            kv_store=str(store)))
    try:
        urls = asyncio.run(engines.start(START_S))
        gateway = ServerThread(create_app(GatewayConfig(
            engines=tuple(urls), preset="saga", scrape_s=0.25,
            request_timeout_s=REQUEST_S))).start()
        try:
            yield Stack(engines, urls, gateway)
        finally:
            gateway.stop()
    finally:
        asyncio.run(engines.stop())


def _completion(client: httpx.Client, url: str, prompt: list[int],
                session: str) -> tuple[list[int], int]:
    """Greedy completion of token ids: (output token ids, cached prompt tokens)."""
    r = client.post(url + "/v1/completions", headers={"X-Session-Id": session},
                    json={"model": "tiny", "prompt": prompt, "max_tokens": OUT,
                          "temperature": 0, "seed": 0, "ignore_eos": True,
                          "return_token_ids": True}, timeout=REQUEST_S)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    details = body["usage"].get("prompt_tokens_details") or {}
    return list(body["choices"][0]["token_ids"]), int(details.get("cached_tokens") or 0)


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
