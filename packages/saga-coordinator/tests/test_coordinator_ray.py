"""Real Ray worker actors (simulated engines) behind a real coordinator: a workload completes,
and keeps completing when a worker actor is killed, the coordinator restarts, or a worker is slow.

One Ray session for the module (2 CPUs, no dashboard), shut down at the end. The module runs only
in the test run's private network namespace (``ray_skip_reason``), and checks that every address
Ray uses there is loopback.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from saga.coordinator.client import CoordinatorClient
from saga.coordinator.cluster import (
    WorkloadConfig,
    make_tasks,
    ray_addresses,
    run_workload,
    spawn_workers,
    start_ray,
)
from saga.coordinator.engine import SimulatedEngine
from saga.coordinator.server import CoordinatorServer, ServerConfig
from saga.coordinator.testing import TOKEN, ray_skip_reason, run

pytestmark = pytest.mark.skipif(ray_skip_reason() is not None, reason=str(ray_skip_reason()))

FAST = functools.partial(SimulatedEngine, slots=8, prefill_s=1e-5, decode_s=2e-3)
SLOW = functools.partial(SimulatedEngine, slots=8, prefill_s=1e-5, decode_s=2e-3, speed=0.05)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ray = start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _config(**kw: Any) -> ServerConfig:
    return ServerConfig(token=TOKEN, heartbeat_interval_s=0.05, worker_timeout_s=1.0, **kw)


async def _kill_all(ray: Any, actors: dict[str, Any]) -> None:
    for a in actors.values():
        ray.kill(a)


def test_every_ray_address_is_loopback(ray_session: Any) -> None:
    ray = ray_session
    addrs = ray_addresses(ray)
    assert addrs["nodes[0].NodeManagerAddress"] and addrs["gcs_address"]

    @ray.remote  # type: ignore[untyped-decorator]
    def worker_view() -> str:      # the address a Ray worker process sees for its node
        return str(ray.util.get_node_ip_address())

    addrs["worker node"] = ray.get(worker_view.remote(), timeout=120)
    addrs["driver node.address_info"] = str(
        ray._private.worker.global_worker.node.address_info["node_ip_address"])
    loopback = ipaddress.ip_network("127.0.0.0/8")
    outside = {k: a for k, a in addrs.items() if ipaddress.ip_address(a) not in loopback}
    assert not outside, f"Ray uses addresses outside 127.0.0.0/8: {outside}"


def test_workload_completes_with_affinity_and_survives_a_killed_worker(ray_session: Any
                                                                       ) -> None:
    ray = ray_session

    async def body() -> None:
        server = CoordinatorServer(_config())
        address = await server.start()
        actors = await spawn_workers(3, address, TOKEN, FAST)
        client = CoordinatorClient(address, TOKEN)
        tasks = make_tasks(WorkloadConfig(tasks=12, steps=6, tool_s=(0.05, 0.1), seed=1))
        victim = "w1"
        killed = asyncio.Event()

        def on_call(res: Any) -> None:
            if res.calls == 20 and not killed.is_set():
                killed.set()
                ray.kill(actors[victim])

        result = await run_workload(client, actors, tasks, on_call=on_call)
        assert killed.is_set()
        assert result.completed == 12 and result.calls == 12 * 6
        # Sessions of the dead worker re-homed; the rest stayed home.
        assert result.reasons.get("REHOMED", 0) >= 1
        assert result.reasons["HOME"] > result.reasons.get("OVERLOADED", 0)
        assert result.cached_tokens > 0
        # Past worker_timeout_s the dead one expires; the others keep heartbeating.
        for _ in range(100):
            stats = await client.stats()
            alive = {w.worker_id: w.alive for w in stats.workers}
            if alive == {"w0": True, "w1": False, "w2": True}:
                break
            await asyncio.sleep(0.1)
        assert alive == {"w0": True, "w1": False, "w2": True}
        assert stats.sessions == 0    # every finished task left the table
        await _kill_all(ray, actors)
        await client.close()
        await server.stop()

    run(body, timeout_s=180)


def test_coordinator_restart_mid_workload(ray_session: Any) -> None:
    ray = ray_session

    async def body() -> None:
        first = CoordinatorServer(_config())
        address = await first.start()
        actors = await spawn_workers(2, address, TOKEN, FAST)
        client = CoordinatorClient(address, TOKEN, retry_s=20.0)
        tasks = make_tasks(WorkloadConfig(tasks=8, steps=6, tool_s=(0.05, 0.1), seed=2))
        servers = [first]
        restarted = asyncio.Event()

        async def restart() -> None:
            await first.stop()
            await asyncio.sleep(0.3)
            second = CoordinatorServer(_config(port=first.port))
            await second.start()
            servers.append(second)
            restarted.set()

        restarter: list[asyncio.Task[None]] = []

        def on_call(res: Any) -> None:
            if res.calls == 16 and not restarter:
                restarter.append(asyncio.create_task(restart()))

        result = await run_workload(client, actors, tasks, on_call=on_call)
        await restarter[0]
        assert restarted.is_set()
        assert result.completed == 8 and result.calls == 48
        second = servers[1]
        assert second.core.routes > 0
        stats = await client.stats()
        assert stats.coordinator_id == second.coordinator_id
        assert sorted(w.worker_id for w in stats.workers if w.alive) == ["w0", "w1"]
        worker_stats = [await a.stats.remote() for a in actors.values()]
        assert all(s["registrations"] >= 2 for s in worker_stats)
        await _kill_all(ray, actors)
        await client.close()
        await second.stop()

    run(body, timeout_s=180)


def test_slow_worker_does_not_stall_the_others(ray_session: Any) -> None:
    ray = ray_session

    async def body() -> None:
        server = CoordinatorServer(_config())
        address = await server.start()
        actors = await spawn_workers(2, address, TOKEN, FAST)
        actors.update(await spawn_workers(1, address, TOKEN, SLOW, prefix="slow"))
        client = CoordinatorClient(address, TOKEN)
        tasks = make_tasks(WorkloadConfig(tasks=12, steps=5, tool_s=(0.02, 0.05), seed=3))
        result = await run_workload(client, actors, tasks)
        assert result.completed == 12
        # Tasks served only by fast workers finish at their own pace, not the slow one's.
        fast = [t for s, t in result.task_time.items() if "slow0" not in result.task_workers[s]]
        slow = [t for s, t in result.task_time.items() if "slow0" in result.task_workers[s]]
        assert fast and slow
        assert max(fast) < min(slow)
        # Observations of every worker arrived (the slow one's stream did not block them).
        worker_stats = {w: await a.stats.remote() for w, a in actors.items()}
        assert all(s["rejected"] == 0 and s["dropped"] == 0 for s in worker_stats.values())
        for _ in range(100):        # the last batches may still be in flight
            if server.core.observations >= 3 * result.calls - len(tasks):
                break
            await asyncio.sleep(0.05)
        assert server.core.observations >= 3 * result.calls - len(tasks)
        await _kill_all(ray, actors)
        await client.close()
        await server.stop()

    run(body, timeout_s=180)
