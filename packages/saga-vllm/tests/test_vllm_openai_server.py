"""SAGA metadata through vLLM's real OpenAI-compatible server (``vllm_xargs``, flat keys).

Starts ``python -m vllm.entrypoints.openai.api_server`` with ``SagaScheduler`` on the tiny model
(engine core in its own process, as in production), then talks HTTP to it on loopback: a
session that declares its pending tool keeps its prefix through other traffic while a plain
request's is evicted, and malformed metadata is a 400 naming the ``vllm_xargs`` key — after
which the server still serves. The scheduler's marker file shows that ``SagaScheduler`` ran in
the engine-core process (not the API server's) with the configuration sent through
``--additional-config`` (the stats it writes at shutdown are checked in-process, in
``test_vllm_marker.py``: vLLM's API server force-kills its engine core on SIGTERM).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta, saga_vllm_xargs
from saga.vllm.testing import SCHEDULER_CLS, VALIDATOR_CLS, kv_bytes_for_blocks

BLOCKS = 40
START_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One running API server and a tiny JSON client for it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, model: str, log: Path,
                 marker: Path) -> None:
        self.proc, self.port, self.model, self.log = proc, port, model, log
        self.marker = marker

    def marker_event(self) -> dict[str, Any]:
        return dict(json.loads(self.marker.read_text()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return int(resp.status), json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), json.loads(err.read())

    def complete(self, prompt: list[int], xargs: dict[str, Any] | None = None
                 ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": 2,
                                "temperature": 0.0}
        if xargs is not None:
            body["vllm_xargs"] = xargs
        return self.post("/v1/completions", body)

    def cached(self, prompt: list[int], xargs: dict[str, Any] | None = None) -> int:
        status, data = self.complete(prompt, xargs)
        assert status == 200, data
        return int(data["usage"]["prompt_tokens_details"]["cached_tokens"])


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    folder = tmp_path_factory.mktemp("vllm-server")
    log, marker = folder / "server.log", folder / "saga-marker.json"
    saga = SagaSchedulerConfig.from_preset("saga_no_afs", marker_path=str(marker))
    args = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--skip-tokenizer-init", "--dtype", "float32", "--enforce-eager",
        "--block-size", "32", "--max-model-len", "1024", "--max-num-seqs", "4",
        "--kv-cache-memory-bytes", str(kv_bytes_for_blocks(BLOCKS)),
        "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--compilation-config", json.dumps({"mode": 0}),
        "--scheduler-cls", SCHEDULER_CLS,
        "--additional-config", json.dumps({"saga": saga.to_dict()}),
        "--logits-processors", VALIDATOR_CLS,
    ]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server's engine core is its own process
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(proc, port, str(tiny_model_dir), log, marker)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the API server exited ({proc.returncode}):\n"
                            + log.read_text()[-4000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the API server did not start:\n" + log.read_text()[-4000:])
                time.sleep(1.0)
        yield srv
    finally:
        srv.stop()


def _tokens(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 1000 + 10 for i in range(n)]


def _traffic(server: Server, seed: int) -> None:
    """Other sessions' calls, together far more than the pool (26 of 40 blocks each)."""
    for i in range(3):
        assert server.cached(_tokens(seed + i, 800)) >= 0


def test_pending_tool_in_vllm_xargs_keeps_the_session_prefix(server: Server) -> None:
    # A plain request: its blocks are evictable as soon as it ends.
    plain = _tokens(1, 400)
    server.cached(plain)
    _traffic(server, 100)
    plain_hit = server.cached(plain + _tokens(2, 40))
    assert plain_hit < 384                      # the traffic evicted the plain prefix
    # The same pattern with SAGA metadata: the session waits on a tool, so its KV stays pinned.
    prompt = _tokens(3, 400)
    meta = SagaRequestMeta("s1", agent_type="coder", pending_tool="grep")
    assert server.cached(prompt, saga_vllm_xargs(meta)) == 0
    _traffic(server, 200)
    back = SagaRequestMeta("s1", agent_type="coder", final=True)
    saga_hit = server.cached(prompt + _tokens(4, 40), saga_vllm_xargs(back))
    assert saga_hit >= 384                      # every full block of the first prompt
    assert saga_hit > plain_hit


@pytest.mark.parametrize(("xargs", "needle"), [
    ({"saga_session_id": "s9", "saga_tool_latency_s": "abc"}, "saga_tool_latency_s"),
    ({"saga_session_id": "s9", "saga_final": "maybe"}, "saga_final"),
    ({"saga_session_id": "s9", "saga_pendng_tool": "x"}, "saga_pendng_tool"),
])
def test_malformed_vllm_xargs_is_a_400_naming_the_key(server: Server, xargs: dict[str, Any],
                                                      needle: str) -> None:
    status, data = server.complete(_tokens(9, 64), xargs)
    assert status == 400, data
    assert needle in data["error"]["message"]
    status, _ = server.complete(_tokens(10, 64))   # the server keeps serving
    assert status == 200
    assert server.proc.poll() is None


def test_saga_scheduler_runs_in_the_engine_core_process(server: Server) -> None:
    started = server.marker_event()
    assert started["event"] == "started"
    assert started["class"] == "SagaScheduler"
    assert started["pid"] not in (os.getpid(), server.proc.pid)  # the engine-core process
    assert started["config"]["preset"] == "saga_no_afs"
    assert started["stats"]["preset"] == "saga_no_afs"
