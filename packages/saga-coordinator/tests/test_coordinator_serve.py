"""`python -m saga.coordinator` as its own process: token from the environment, Prometheus
metrics over HTTP, clean stop on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

from saga.coordinator.bench import start_server_process
from saga.coordinator.client import CoordinatorClient
from saga.coordinator.serve import TOKEN_ENV
from saga.coordinator.testing import run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_served_process_routes_and_exports_metrics() -> None:
    metrics_port = _free_port()
    proc, address = start_server_process("tok", metrics_port=metrics_port)
    try:
        async def body() -> None:
            async with CoordinatorClient(address, "tok") as client:
                from saga.coordinator._proto import saga_coordinator_pb2 as pb

                await client.stub.Register(pb.RegisterRequest(worker_id="w", slots=4),
                                           metadata=client.metadata)
                assert (await client.route("s", "t")).worker_id == "w"
        run(body)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'saga_coordinator_routes_total{reason="NEW_SESSION"} 1.0' in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_serving_without_a_token_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    done = subprocess.run([sys.executable, "-m", "saga.coordinator"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and TOKEN_ENV in done.stderr


def test_the_served_process_runs_the_preset_it_is_given() -> None:
    env = {**os.environ, TOKEN_ENV: "tok"}
    done = subprocess.run([sys.executable, "-m", "saga.coordinator", "--preset", "nope"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown preset 'nope'" in done.stderr
    assert "sglang" in done.stderr  # the valid names are listed
