"""The coordinator runs any preset's bundle: each of the 24 presets by name routes sessions
through register / heartbeat / route / observe / end with the preset's own policy objects, and
reasons, moves, pins and AFS follow from the session table whatever the router."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.core import AFS_CAPACITY_PER_S, CoordinatorCore
from saga.coordinator.serve import TOKEN_ENV
from saga.coordinator.server import ServerConfig, bearer
from saga.coordinator.testing import TOKEN, coordinator, run
from saga.policy.presets import PRESETS, PolicySpec, get_preset, policy
from saga.policy.stealing import WaitingSession
from saga.policy.ttl import TTL_MAX_S

WORKERS = ("w0", "w1", "w2")
SLOTS = 4


def _params(obj: object) -> dict[str, Any]:
    """An object's public scalar settings (what its constructor was given)."""
    return {k: v for k, v in vars(obj).items()
            if not k.startswith("_") and isinstance(v, int | float | str | bool)}


def _holds(obj: object | None, spec: PolicySpec[Any] | None, **deployment: Any) -> None:
    """``obj`` is what ``spec`` builds (with the coordinator's ``deployment`` settings): none for
    none, else the same class and settings, and every keyword of the spec set on it."""
    if spec is None:
        assert obj is None
        return
    fresh = spec.build(**deployment)
    assert type(obj) is type(fresh), (spec.describe(), type(obj))
    assert _params(obj) == _params(fresh), spec.describe()
    for key, value in spec.kwargs.items():
        assert getattr(obj, key) == value, (spec.describe(), key)


def _core(name: str) -> CoordinatorCore:
    core = CoordinatorCore.from_preset(name, final_grace_s=5.0, session_idle_s=60.0)
    for w in WORKERS:
        core.register(w, f"node-{w}", SLOTS, 0.0)
    return core


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_runs_its_own_policies(name: str) -> None:
    preset = get_preset(name)
    core = _core(name)
    assert core.preset == name and core.bundle.preset is preset
    _holds(core.router, preset.router)
    _holds(core.stealer, preset.stealing)
    _holds(core.ttl, preset.ttl)
    _holds(core.afs, preset.fairness, capacity_per_s=AFS_CAPACITY_PER_S, epoch_s=0.1)
    if core.ttl is not None:
        assert core.ttl.ttl("search", 0.0) <= TTL_MAX_S
    # The load each router is given is the one its load_kind names: 0.5 utilisation of 4 slots
    # is 2 requests (running + waiting).
    core.heartbeat("w0", 0.5, -1.0, (), 0.01, 0.1)
    expected = {"utilisation": 0.5, "requests": 0.5 * SLOTS}[core.router.load_kind]
    assert core.loads()["w0"] == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_routes_observes_and_ends_sessions(name: str) -> None:
    core = _core(name)
    sessions = [f"s{i}" for i in range(6)]
    for i, w in enumerate(WORKERS):
        core.heartbeat(w, 0.1 * i, -1.0, (), 0.05, 0.5)
    for t, s in enumerate(sessions):
        d = core.route(s, "tenant", 1.0 + t, prompt_tokens=3000, deadline_s=30.0,
                       work_tokens=500.0)
        assert d.reason == "NEW_SESSION" and d.worker_id in WORKERS and d.pinned_for_s == 0
        assert core.session(s).in_afs == (core.afs is not None)
        pinned = core.tool_started(s, "search", 0.3, 2.0 + t)
        assert 0.0 <= pinned <= TTL_MAX_S
        if core.ttl is None:
            assert pinned == core.session(s).pinned_until == 0.0
        else:
            assert core.session(s).pinned_until == 2.0 + t + pinned
        if t % 2 == 0:  # half the calls end before the next session routes: sessions spread
            core.call_finished(s, 3000, 20, 1000, d.worker_id, now=2.0 + t)
        assert core.check_invariants() == []
    # The workers report: w0 saturated, so a router that balances load moves its sessions.
    core.heartbeat("w0", 0.95, -1.0, (), 0.05, 9.0)
    for s in sessions:
        core.tool_finished(s, "search", 1.5)
        before = core.session(s).worker_id
        d = core.route(s, "tenant", 10.0, prompt_tokens=3000)
        assert d.reason == ("HOME" if d.worker_id == before else "OVERLOADED")
        assert core.session(s).worker_id == d.worker_id
        assert core.check_invariants() == []
    assert core.moves == sum(core.session(s).moves for s in sessions)
    order = core.heartbeat("w1", 0.2, -1.0, tuple(WaitingSession(s) for s in reversed(sessions)),
                           0.05, 10.5)[1]
    assert sorted(order) == sorted(sessions)
    if core.afs is None:
        assert order == list(reversed(sessions)) and core.shares() == {}
    core.end_session("s0", 11.0)
    for s in sessions[1:]:
        core.call_finished(s, 10, 2, 0, core.session(s).worker_id, final=True, now=11.0)
    core.epoch(11.0)
    assert len(core.sessions) == len(sessions) - 1
    for w in WORKERS:
        core.heartbeat(w, 0.0, -1.0, (), 0.0, 16.5)
    core.epoch(16.5)
    assert not core.sessions and core.sessions_ended == len(sessions)
    assert core.epochs == (2 if core.afs is not None else 0)
    assert core.afs is None or not core.afs.tasks()
    assert core.check_invariants() == []


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_departed_home_rehomes_and_a_restarted_coordinator_adopts_claims(name: str) -> None:
    core = _core(name)
    home = core.route("s", "t", 1.0).worker_id
    assert core.deregister(home) == 1
    d = core.route("s", "t", 2.0)
    assert d.reason == "REHOMED" and d.worker_id != home and core.moves == 1
    fresh = CoordinatorCore.from_preset(name)
    assert fresh.register("w9", "n9", SLOTS, 0.0, [("s", "t", 30.0), ("x", "t", 5.0)]) == 2
    assert fresh.session("s").worker_id == "w9"
    again = fresh.route("s", "t", 1.0)
    assert again.reason == "HOME"
    assert again.pinned_for_s == (29.0 if fresh.ttl is not None else 0.0)
    assert fresh.check_invariants() == []


def test_a_given_bundle_is_the_cores_and_the_default_is_saga() -> None:
    bundle = get_preset("sglang").build()
    core = CoordinatorCore(bundle=bundle)
    assert (core.router, core.stealer, core.ttl) == (bundle.router, None, None)
    assert core.afs is None and core.preset == "sglang"
    assert CoordinatorCore().preset == "saga"
    with pytest.raises(Exception, match="valid presets: autellix"):
        CoordinatorCore.from_preset("nope")


def test_preset_kwargs_reach_the_coordinators_policies() -> None:
    saga = get_preset("saga")
    custom = saga.derive("saga_custom", "SAGA, tighter knobs.",
                         router=policy("router", "affinity", theta=0.5),
                         ttl=policy("ttl", "tool_call", ttl_max=5.0),
                         fairness=policy("fairness", "afs", capacity_per_s=50.0))
    core = CoordinatorCore(bundle=custom.build(), epoch_s=0.25)
    assert vars(core.router)["theta"] == 0.5
    assert core.afs is not None and (core.afs.capacity_per_s, core.afs.epoch_s) == (50.0, 0.25)
    core.register("w0", "n0", SLOTS, 0.0)
    core.route("s", "t", 0.0)
    assert 0 < core.tool_started("s", "slow_tool", 0.0, 1.0) <= 5.0


def test_autellix_keeps_long_calls_home_and_balances_short_ones() -> None:
    core = _core("autellix")
    first = core.route("s", "t", 1.0, prompt_tokens=5000).worker_id
    core.heartbeat(first, 0.9, -1.0, (), 0.05, 2.0)
    assert core.route("s", "t", 3.0, prompt_tokens=5000).reason == "HOME"
    short = core.route("s", "t", 4.0, prompt_tokens=10)
    assert (short.reason, core.moves) == ("OVERLOADED", 1) and short.worker_id != first
    assert [s.session_id for s in core.workers[first].steals_out] == ["s"]


def test_stealing_moves_the_table_whatever_the_router() -> None:
    core = CoordinatorCore.from_preset("saga_no_affinity")
    for w in ("idle", "busy"):
        core.register(w, w, SLOTS, 0.0)
    core.heartbeat("idle", 5.0, -1.0, (), 0.0, 0.1)
    for s in "abc":
        core.route(s, "t", 0.2)
    waiting = tuple(WaitingSession(s, 1e6) for s in "abc")
    core.heartbeat("busy", 1.5, -1.0, waiting, 0.5, 0.3)
    core.heartbeat("idle", 0.0, 1.0, (), 0.0, 0.3)
    core.epoch(0.4)
    assert core.steals == 1 and core.session("c").worker_id == "idle"
    assert core.moves == core.session("c").moves == 1
    assert core.check_invariants() == []
    off = CoordinatorCore.from_preset("saga_no_stealing")
    assert off.plan_steals(1.0) == []


def test_continuum_pins_weigh_the_workers_queue() -> None:
    core = _core("continuum")
    core.route("idle", "t", 0.0)
    assert core.tool_started("idle", "search", 0.5, 0.1) == 0.0  # no queue, no reload cost
    busy = core.session("idle").worker_id
    core.heartbeat(busy, 2.0, -1.0, (), 2.0, 0.2)  # 4 calls queued, 2 s each
    assert core.tool_started("idle", "search", 0.5, 0.3) > 0.0


def test_server_config_takes_a_preset_name() -> None:
    assert ServerConfig(token="x").preset == "saga"
    assert ServerConfig(token="x", preset="vllm").preset == "vllm"
    with pytest.raises(Exception, match="unknown preset 'nope'; valid presets: autellix"):
        ServerConfig(token="x", preset="nope")


def test_the_server_runs_its_configs_preset_and_stats_names_it() -> None:
    async def body() -> None:
        async with coordinator(preset="vllm", epoch_s=0.02) as (server, client):
            await client.stub.Register(pb.RegisterRequest(worker_id="w", slots=4),
                                       metadata=bearer(TOKEN))
            assert (await client.route("s", "t", deadline_s=9.0, work_tokens=99.0)).worker_id \
                == "w"
            await asyncio.sleep(0.1)
            stats = await client.stats()
            assert stats.preset == "vllm" and type(server.core.router).__name__ == \
                "LeastLoadedRouter"
            assert stats.afs_epochs == 0 and dict(stats.afs_shares) == {}
            assert not server.core.session("s").in_afs
    run(body)


def test_the_cli_lists_the_presets_and_refuses_an_unknown_one_in_one_line() -> None:
    runner = CliRunner(env={"COLUMNS": "250", TOKEN_ENV: "tok"})
    res = runner.invoke(app, ["coordinator", "serve", "--help"])
    assert res.exit_code == 0 and all(name in res.output for name in PRESETS)
    res = runner.invoke(app, ["coordinator", "serve", "--port", "0", "--preset", "nope"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown preset 'nope'; valid "
                                                   "presets: autellix, continuum")
