"""``saga bench live``: agent tasks replayed through the gateway against real vLLM engines.

For each seed, each system under comparison runs in turn (seed k starts with system k, see
:func:`~saga.coordinator.gateway.live_tasks.rotated`): its N engines start fresh (cold caches,
no state from another run), the gateway serves in front of them with the system's preset, every
task runs as the agent it stands for (its calls in order, each prompt the previous prompt plus
the previous answer plus new tokens, its tool calls as real sleeps, the hint headers an agent
framework sends), the engines' counters are read, and everything stops. A system is a preset
name (the gateway's routing) and the :class:`EngineSpec` its engines run; what each system is,
and what its engines get (a DRAM tier, prefix caching off), is the caller's choice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from saga.coordinator.gateway.app import GatewayConfig, create_app
from saga.coordinator.gateway.hints import (
    AGENT_HEADER,
    FINAL_HEADER,
    LATENCY_HEADER,
    SESSION_HEADER,
    TOOL_HEADER,
)
from saga.coordinator.gateway.launch import EngineProcesses, EngineSpec
from saga.coordinator.gateway.live_results import (
    CallRecord,
    RunResult,
    TaskRecord,
    counter_delta,
    parse_counters,
    summarize,
)
from saga.coordinator.gateway.live_tasks import LiveTask, TaskTokens, rotated
from saga.coordinator.gateway.server import ServerThread
from saga.policy.errors import SagaConfigError, SagaError
from saga.policy.presets import get_preset

__all__ = ["LiveConfig", "LiveError", "LiveSystem", "run_live", "run_live_sync", "run_system"]

OnCall = Callable[[str, int], None]
"""Called with (system, seed) after each completed call (a progress bar's advance)."""
OnRun = Callable[[str, int, str], None]
"""Called with (system, seed, phase) as a run starts its engines, runs and stops."""


class LiveError(SagaError):
    """A live run could not be done: an engine or the gateway failed."""


@dataclass(frozen=True)
class LiveSystem:
    """One system under comparison: the gateway's preset and what its engines run."""

    name: str
    engine: EngineSpec

    def __post_init__(self) -> None:
        get_preset(self.name)  # an unknown name lists the valid ones


@dataclass(frozen=True)
class LiveConfig:
    """The comparison: systems, engines per system, tasks, seeds."""

    systems: tuple[LiveSystem, ...]
    tasks: dict[int, list[LiveTask]]
    """The tasks of each seed (the same on every system)."""
    engines: int = 2
    served_model: str = "tiny"
    vocab_size: int = 1024
    start_timeout_s: float = 300.0
    call_timeout_s: float = 300.0
    log_dir: Path | None = None
    gateway_options: dict[str, Any] = field(default_factory=dict)
    """Extra :class:`GatewayConfig` fields (e.g. ``scrape_s``)."""

    def __post_init__(self) -> None:
        if not self.systems:
            raise SagaConfigError("--systems is empty; give at least one of saga, vllm_apc, "
                                  "vllm")
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise SagaConfigError(f"--systems names a system twice: {','.join(names)}")
        if self.engines < 1:
            raise SagaConfigError(f"--engines must be >= 1, got {self.engines}")
        if not self.tasks or any(not ts for ts in self.tasks.values()):
            raise SagaConfigError("every seed needs at least one task; give --tasks >= 1")
        if any(not t.calls for ts in self.tasks.values() for t in ts):
            raise SagaConfigError("a task has no calls")

    @property
    def seeds(self) -> list[int]:
        return sorted(self.tasks)


async def _counters(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    r = await client.get(url + "/metrics")
    r.raise_for_status()
    return parse_counters(r.text)


def _headers(task: LiveTask, k: int, seed: int, prev_tool_ms: float | None) -> dict[str, str]:
    call = task.calls[k]
    h = {SESSION_HEADER: f"{task.task_id}-s{seed}", AGENT_HEADER: task.agent_type}
    if call.tool is not None:
        h[TOOL_HEADER] = call.tool
    if prev_tool_ms is not None:
        h[LATENCY_HEADER] = f"{prev_tool_ms:.0f}"
    if k == len(task.calls) - 1:
        h[FINAL_HEADER] = "true"
    return h


@dataclass
class _TaskRun:
    """Drives one task against the gateway as its agent would."""

    task: LiveTask
    seed: int
    config: LiveConfig
    client: httpx.AsyncClient
    gateway: str
    t0: float
    on_call: Callable[[], None]

    async def run(self) -> TaskRecord:
        await asyncio.sleep(max(0.0, self.t0 + self.task.arrival_s - time.monotonic()))
        start = time.monotonic() - self.t0
        tokens = TaskTokens(self.task, self.seed, self.config.vocab_size)
        prompt: list[int] = []
        records: list[CallRecord] = []
        prev_tool_ms: float | None = None
        for k, call in enumerate(self.task.calls):
            context = len(prompt)
            prompt = prompt + tokens.new(k)
            try:
                rec, out = await self._call(k, prompt, context, prev_tool_ms, tokens)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                return self._record(start, records, f"call {k}: {type(exc).__name__}: {exc}")
            records.append(rec)
            if rec.status != 200:
                return self._record(start, records, f"call {k}: HTTP {rec.status}")
            self.on_call()
            prompt = prompt + out
            prev_tool_ms = None
            if call.tool is not None:
                slept = time.monotonic()
                await asyncio.sleep(call.tool_s)
                prev_tool_ms = 1000.0 * (time.monotonic() - slept)
        return self._record(start, records)

    def _record(self, start: float, records: list[CallRecord], error: str = "") -> TaskRecord:
        end = records[-1].end_s if records else start
        return TaskRecord(self.task.task_id, start, end, tuple(records),
                          len(self.task.calls), error)

    async def _call(self, k: int, prompt: list[int], context: int, prev_tool_ms: float | None,
                    tokens: TaskTokens) -> tuple[CallRecord, list[int]]:
        call = self.task.calls[k]
        body = {"model": self.config.served_model, "prompt": prompt,
                "max_tokens": call.max_tokens, "min_tokens": call.max_tokens,
                "ignore_eos": True, "temperature": 0.0, "return_token_ids": True}
        begin = time.monotonic() - self.t0
        r = await self.client.post(self.gateway + "/v1/completions", json=body,
                                   headers=_headers(self.task, k, self.seed, prev_tool_ms))
        end = time.monotonic() - self.t0
        out: list[int] = []
        usage: dict[str, Any] = {}
        if r.status_code == 200:
            data = r.json()
            usage = data.get("usage") or {}
            out = [int(x) for x in (data["choices"][0].get("token_ids") or [])]
        if len(out) != call.max_tokens:  # an engine that does not return its output ids
            out = tokens.stand_in_output(k)
        details = usage.get("prompt_tokens_details") or {}
        rec = CallRecord(self.task.task_id, k, begin, end, r.status_code,
                         int(usage.get("prompt_tokens") or len(prompt)), len(prompt) - context,
                         context, int(details.get("cached_tokens") or 0),
                         int(usage.get("completion_tokens") or 0))
        return rec, out


async def _drive(config: LiveConfig, system: str, seed: int, gateway: str,
                 on_call: OnCall | None) -> list[TaskRecord]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(config.call_timeout_s, connect=10.0)
    async with httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits) as client:
        t0 = time.monotonic()

        def done() -> None:
            if on_call is not None:
                on_call(system, seed)

        runs = [_TaskRun(t, seed, config, client, gateway, t0, done) for t in config.tasks[seed]]
        return list(await asyncio.gather(*(r.run() for r in runs)))


async def run_system(config: LiveConfig, system: LiveSystem, seed: int, position: int = 0,
                     on_call: OnCall | None = None, on_run: OnRun | None = None) -> RunResult:
    """One system on one seed: start its engines and gateway, run the tasks, read the
    counters, stop everything (also on failure)."""
    def phase(what: str) -> None:
        if on_run is not None:
            on_run(system.name, seed, what)

    log_dir = None if config.log_dir is None else config.log_dir / f"{system.name}-s{seed}"
    engines = EngineProcesses(config.engines, system.engine, log_dir)
    phase("starting engines")
    try:
        urls = await engines.start(config.start_timeout_s)
        gw_config = GatewayConfig(engines=tuple(urls), preset=system.name,
                                  slots=system.engine.max_num_seqs,
                                  request_timeout_s=config.call_timeout_s,
                                  **config.gateway_options)
        server = ServerThread(create_app(gw_config)).start()
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=30.0) as c:
                before = [await _counters(c, u) for u in urls]
                phase("running")
                load_before, wall = os.getloadavg()[0], time.monotonic()
                tasks = await _drive(config, system.name, seed, server.url, on_call)
                wall, load_after = time.monotonic() - wall, os.getloadavg()[0]
                after = [await _counters(c, u) for u in urls]
                gateway = await _counters(c, server.url)
        finally:
            phase("stopping")
            await asyncio.to_thread(server.stop)
    except httpx.HTTPError as exc:
        raise LiveError(f"{system.name}, seed {seed}: reading an engine's or the gateway's "
                        f"/metrics failed ({type(exc).__name__}: {exc}); see the engine logs "
                        f"in {engines.log_dir}") from exc
    finally:
        await engines.stop()
    run = RunResult(system.name, seed, position, tasks,
                    [counter_delta(b, a) for b, a in zip(before, after, strict=True)],
                    gateway, wall, load_before, load_after)
    run.figures = summarize(run)
    return run


async def run_live(config: LiveConfig, on_call: OnCall | None = None,
                   on_run: OnRun | None = None) -> list[RunResult]:
    """Every system on every seed, the systems of seed k in :func:`rotated` order."""
    names = [s.name for s in config.systems]
    by_name = {s.name: s for s in config.systems}
    runs = []
    for seed in config.seeds:
        for position, name in enumerate(rotated(names, seed)):
            runs.append(await run_system(config, by_name[name], seed, position, on_call,
                                         on_run))
    return runs


def run_live_sync(config: LiveConfig, on_call: OnCall | None = None,
                  on_run: OnRun | None = None) -> list[RunResult]:
    """:func:`run_live` from synchronous code (a CLI)."""
    return asyncio.run(run_live(config, on_call, on_run))
