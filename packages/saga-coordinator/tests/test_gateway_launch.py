"""The gateway's engine launchers, with real engines (``python -m saga.vllm.serve``, tiny model).

The command line and environment are checked as data; the failure paths start real processes
(an unknown model exits at once, a start that outlives its time limit is stopped); two engines
started as child processes answer ``/health`` and ``/v1/models``, one killed engine stops
answering while the other serves, and stopping leaves no process of any engine's group. (Ray
actors as engines: test_gateway_launch_ray.py, scheduled with the other Ray tests.)
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from saga.coordinator.gateway.launch import (
    EngineProcesses,
    EngineSpec,
    EngineStartError,
    RayEngines,
    engine_command,
    engine_env,
)
from saga.coordinator.testing import run
from saga.policy.errors import SagaConfigError, SagaError

START_S = 240.0   # the time limit a start gets: two engines on 2 busy cores


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> EngineSpec:
    """Tiny engines with a small pool; the model is built once, under a cache of this module."""
    cache = tmp_path_factory.mktemp("models")
    return EngineSpec(model="tiny", kv_blocks=64, max_num_seqs=4, max_model_len=1024,
                      cache_dir=str(cache))


def _group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(stat.parent.name))
    return alive


def _group_gone(pgid: int, within_s: float = 15.0) -> bool:
    """Whether process group ``pgid`` has no live process within ``within_s`` (a SIGKILLed
    process takes a moment to die: the check polls instead of racing it)."""
    deadline = time.monotonic() + within_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _get(url: str) -> int:
    """Status of GET ``url``; 0 when nothing answers."""
    try:
        return httpx.get(url, timeout=5.0, trust_env=False).status_code
    except httpx.HTTPError:
        return 0


def _model_ids(url: str) -> list[str]:
    resp = httpx.get(f"{url}/v1/models", timeout=10.0, trust_env=False)
    assert resp.status_code == 200, resp.text
    return [m["id"] for m in resp.json()["data"]]


# --- command line, environment, options -------------------------------------------------------


def test_engine_command_has_every_option_that_is_set() -> None:
    full = EngineSpec(model="/models/llama", preset="vllm_baseline", kv_blocks=64,
                      max_num_seqs=4, max_model_len=2048, cache_dir="/tmp/models",
                      extra_args=("--seed", "3"))
    assert engine_command(full, "10.0.0.2", 8001) == [
        sys.executable, "-m", "saga.vllm.serve", "--model", "/models/llama",
        "--host", "10.0.0.2", "--port", "8001", "--preset", "vllm_baseline",
        "--kv-blocks", "64", "--max-num-seqs", "4", "--max-model-len", "2048",
        "--cache-dir", "/tmp/models", "--", "--seed", "3"]
    # Unset options are left to the engine's defaults, and no "--" without extra args.
    assert engine_command(EngineSpec(), "127.0.0.1", 9000) == [
        sys.executable, "-m", "saga.vllm.serve", "--model", "tiny", "--host", "127.0.0.1",
        "--port", "9000", "--preset", "saga", "--max-num-seqs", "8"]


def test_engine_env_keeps_engines_to_one_unbound_thread_unless_told() -> None:
    base = {"PATH": "/bin", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "8"}
    env = engine_env(EngineSpec(), base)
    assert env == {"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                   "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    mine = engine_env(EngineSpec(env=(("OMP_NUM_THREADS", "2"), ("VLLM_LOGGING_LEVEL", "INFO"))),
                      base)
    assert mine["OMP_NUM_THREADS"] == "2" and mine["VLLM_LOGGING_LEVEL"] == "INFO"
    assert mine["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


@pytest.mark.parametrize("bad", [{"kv_blocks": 0}, {"max_num_seqs": 0}, {"max_model_len": -1},
                                 {"num_cpus": 0.0}, {"model": ""}])
def test_engine_spec_rejects_impossible_values(bad: dict[str, Any]) -> None:
    with pytest.raises(SagaConfigError, match=f"EngineSpec.{next(iter(bad))}"):
        EngineSpec(**bad)


def test_launchers_reject_no_engines_and_unknown_indexes(spec: EngineSpec) -> None:
    with pytest.raises(SagaConfigError, match="at least one engine"):
        EngineProcesses(0, spec)
    with pytest.raises(SagaConfigError, match="at least one engine"):
        RayEngines(0, spec, "127.0.0.1:6379")
    with pytest.raises(SagaConfigError, match="no engine 3"):
        EngineProcesses(2, spec).kill(3)


# --- failure paths with real processes ---------------------------------------------------------


def test_an_engine_that_exits_at_once_fails_fast_with_its_log_tail(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    engines = EngineProcesses(1, EngineSpec(model=str(missing)), log_dir=tmp_path / "logs")

    async def body() -> None:
        t0 = time.monotonic()
        with pytest.raises(EngineStartError) as info:
            await engines.start(timeout_s=120)
        assert time.monotonic() - t0 < 60       # the exit is seen, not the time limit
        msg = str(info.value)
        assert isinstance(info.value, SagaError)
        assert "engine 0 (http://127.0.0.1:" in msg and "exited with code 2" in msg
        assert "unknown model" in msg and str(missing) in msg    # the engine's own words
        assert str(engines.logs()[0]) in msg
        assert engines.logs()[0].parent == tmp_path / "logs"
        assert _group_gone(engines.pids()[0])
        await engines.stop()      # again after the failed start's own stop: nothing to do
        await engines.stop()
        with pytest.raises(EngineStartError, match="make a new EngineProcesses"):
            await engines.start()

    run(body, timeout_s=90)


def test_a_start_past_its_time_limit_names_the_engine_and_stops_it(spec: EngineSpec) -> None:
    engines = EngineProcesses(1, spec)

    async def body() -> None:
        with pytest.raises(EngineStartError, match=r"did not answer /health within 0.5 s"
                           r"(.|\n)*engine 0 \(http://127\.0\.0\.1:"):
            await engines.start(timeout_s=0.5)
        assert engines.log_dir is not None and engines.log_dir.name.startswith("saga-engines-")
        assert _group_gone(engines.pids()[0])
        shutil.rmtree(engines.log_dir)    # the default log folder is kept for reading

    run(body, timeout_s=60)


def test_stop_before_start_is_a_no_op(spec: EngineSpec) -> None:
    engines = EngineProcesses(2, spec)

    async def body() -> None:
        await engines.stop()
        await engines.stop()
        assert engines.urls() == [] and engines.pids() == []

    run(body, timeout_s=10)


# --- real engines ------------------------------------------------------------------------------


def test_two_engines_serve_and_one_killed_leaves_the_other_serving(spec: EngineSpec,
                                                                   tmp_path: Path) -> None:
    engines = EngineProcesses(2, spec, log_dir=tmp_path)

    async def body() -> None:
        async with engines as urls:
            assert urls == engines.urls() and len(set(urls)) == 2
            assert all(u.startswith("http://127.0.0.1:") for u in urls)
            for url in urls:
                assert _get(f"{url}/health") == 200
                assert _model_ids(url) == ["tiny"]
            pids = engines.pids()
            assert all(_group_alive(p) for p in pids)
            engines.kill(0)
            assert _group_gone(pids[0])      # the API server and its engine core
            assert _get(f"{urls[0]}/health") == 0
            assert _get(f"{urls[1]}/health") == 200 and _model_ids(urls[1]) == ["tiny"]
        for p in pids:
            assert _group_gone(p)
        assert _get(f"{urls[1]}/health") == 0
        await engines.stop()     # idempotent

    run(body, timeout_s=START_S + 60)


def test_engines_log_under_their_log_dir(spec: EngineSpec, tmp_path: Path) -> None:
    engines = EngineProcesses(2, spec, log_dir=tmp_path / "deep" / "logs")

    async def body() -> None:
        with pytest.raises(EngineStartError):
            await engines.start(timeout_s=0.1)
        assert [p.name for p in engines.logs()] == ["engine-0.log", "engine-1.log"]
        assert all(p.exists() for p in engines.logs())
        assert all(_group_gone(p) for p in engines.pids())

    run(body, timeout_s=60)
