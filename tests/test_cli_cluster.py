"""`saga cluster up --address`: join a Ray cluster started separately (a head on loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.coordinator.testing import ray_skip_reason

runner = CliRunner(env={"COLUMNS": "250"})
pytestmark = pytest.mark.skipif(ray_skip_reason() is not None, reason=str(ray_skip_reason()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_cluster_up_joins_an_existing_ray_cluster(tmp_path: Path) -> None:
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray_cli is not None
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled"}
    # --block keeps the head in the foreground: ending its process group ends only this head.
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
         "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out = tmp_path / "up.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:      # wait for the head's GCS port
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        time.sleep(2)       # the raylet registers just after the GCS opens its port
        res = runner.invoke(app, [
            "cluster", "up", "--address", f"127.0.0.1:{port}", "--engine", "sim",
            "--workers", "2", "--tasks", "6", "--steps", "3", "--preset", "sglang",
            "--json", str(out)])
        assert res.exit_code == 0, res.output
        data = json.loads(out.read_text())
        assert data["engine"] == "sim" and data["completed"] == 6 and data["calls"] == 18
        assert sorted(data["per_worker"]) == ["w0", "w1"]
        assert data["coordinator"]["preset"] == "sglang"  # the coordinator ran that bundle
        assert "simulated engines" in res.output
        # The cluster outlives the run: `up` left the head it joined running.
        assert head.poll() is None
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):   # whatever of the head still runs
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
