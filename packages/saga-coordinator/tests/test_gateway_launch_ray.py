"""The gateway's engines as Ray actors (``saga serve --ray``): one tiny engine started through
an actor on a local Ray (loopback only) serves, and stops with the launcher. In its own file so
the test scheduler runs it with the other Ray tests (conftest.py)."""

from __future__ import annotations

import httpx
import pytest

from saga.coordinator.gateway.launch import EngineSpec, RayEngines
from saga.coordinator.testing import ray_skip_reason, run

START_S = 240.0   # the time limit a start gets on 2 busy cores


def _get(url: str) -> int:
    """Status of GET ``url``; 0 when nothing answers."""
    try:
        return httpx.get(url, timeout=5.0, trust_env=False).status_code
    except httpx.HTTPError:
        return 0


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> EngineSpec:
    cache = tmp_path_factory.mktemp("models")
    return EngineSpec(model="tiny", kv_blocks=64, max_num_seqs=4, max_model_len=1024,
                      cache_dir=str(cache))


@pytest.mark.skipif(ray_skip_reason() is not None, reason=str(ray_skip_reason()))
def test_an_engine_in_a_ray_actor_serves_on_loopback(spec: EngineSpec) -> None:
    from saga.coordinator.cluster import is_loopback, start_ray

    ray = start_ray(num_cpus=2)
    try:
        address = str(ray.get_runtime_context().gcs_address)
        engines = RayEngines(1, spec, address)

        async def body() -> None:
            urls = await engines.start(timeout_s=START_S)
            try:
                host = httpx.URL(urls[0]).host
                assert is_loopback(host), urls
                assert _get(f"{urls[0]}/health") == 200
                resp = httpx.get(f"{urls[0]}/v1/models", timeout=10.0, trust_env=False)
                assert [m["id"] for m in resp.json()["data"]] == ["tiny"]
            finally:
                await engines.stop()
            assert _get(f"{urls[0]}/health") == 0
            await engines.stop()

        run(body, timeout_s=START_S + 60)
    finally:
        ray.shutdown()
