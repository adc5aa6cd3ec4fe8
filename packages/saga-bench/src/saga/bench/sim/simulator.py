"""The discrete-event simulator of a SAGA (or peer) deployment serving agent tasks.

A heap-ordered event loop in the style of vidur: each event names a handler from a registry, and
a handler changes the entities it owns and pushes the events that follow. The policy objects are
saga-policy's, built fresh from a :class:`~saga.policy.presets.Preset` for every run: eviction
inside each instance's ``CacheManager``, the TTL pin, DRAM tier and prefetch, the router, work
stealing, the queue order and AFS, Llumnix-style migration when the preset asks for it.

Events: ``arrive`` (a session issues its next call: route it, maybe prefetch its KV),
``enqueue`` (the call reaches its instance's queue, after a prefetch or KV transfer), ``step``
(an instance's next prefill or decode completion), ``steal`` (an idle instance looks for work),
``migrate`` (the load balancer of a migrating preset rebalances).

Simplifications, stated: KV is tracked in blocks of ``block_tokens`` (256 by default, not vLLM's
16, so that the per-block policy arrays stay small; a prefix hit is rounded down to 256 tokens);
a call reserves the blocks for its output at admission, so no call is preempted; a prefetch starts
when the tool returns (not earlier, as an AEG-timed prefetch could); the DRAM of a node is split
evenly between its instances; KV transfers between instances (stealing, migration, a re-homed
session's KV under ``rehome_kv``) take their link's time but do not contend with one another.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saga.aeg import PatternInference
from saga.bench.costmodel import RooflineCost, StepCost, ideal_call_s
from saga.bench.sim.entities import Request, TaskState
from saga.bench.sim.instance import Instance
from saga.bench.sim.pins import PinBook
from saga.bench.workload import Task, Workload
from saga.policy.cache import CacheManager
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PolicyBundle, Preset
from saga.policy.queueing import QueuedRequest
from saga.policy.routing import RouteRequest
from saga.policy.spec import LLAMA3_70B, REFERENCE_CLUSTER, ClusterSpec, ModelSpec
from saga.policy.stealing import WaitingSession, WorkerState, kv_transfer_time
from saga.policy.workflow import ReuseHint, SessionHinter

ARRIVE, ENQUEUE, STEP, STEAL, MIGRATE = range(5)
MIGRATE_INTERVAL_S = 0.5
MIGRATE_GAP = 0.1
"""Llumnix-style rebalancing: every interval, if the most and least loaded instances differ by
more than this utilisation gap, one waiting call moves with its KV."""


@dataclass(frozen=True)
class SimConfig:
    """The deployment simulated: cluster, model, cost model and bookkeeping granularity."""

    cluster: ClusterSpec = REFERENCE_CLUSTER
    model: ModelSpec = LLAMA3_70B
    block_tokens: int = 256
    theta_conf: float = 0.7
    hbm_blocks: int | None = None
    """Override the KV pool per instance (blocks of ``block_tokens``); None: computed."""
    dram_blocks: int | None = None
    pin_cap_fraction: float | None = None
    """Most of an instance's HBM blocks tool-call pins may hold (None: no cap), as
    ``SagaSchedulerConfig.pin_cap_fraction`` in vLLM; see :mod:`saga.bench.sim.pins`."""


@dataclass
class RunResult:
    """What one simulated run measured (times in simulated seconds)."""

    preset: str
    tasks: int
    calls: int
    tct_mean_s: float
    tct_p50_s: float
    tct_p95_s: float
    makespan_s: float
    throughput_tasks_per_min: float
    prompt_tokens: int
    hit_tokens: int
    recomputed_tokens: int
    reprefilled_tokens: int
    output_tokens: int
    eviction_rate: float
    ttl_accuracy: float
    slo_attainment: dict[str, float]
    latency_vs_ideal: float
    hbm_utilisation: float
    reprefill_gpu_share: float
    steals: int
    migrations: int
    rehomed_kv: int
    """Calls whose session changed instance and brought its KV along (``rehome_kv``)."""
    events: int
    tct_by_task: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("tct_by_task")
        return d


@dataclass
class _Counters:
    prompt: int = 0
    hit: int = 0
    reprefill: int = 0
    output: int = 0
    followups: int = 0
    missed_context: int = 0
    pins: int = 0
    pins_held: int = 0
    steals: int = 0
    migrations: int = 0
    rehome_kv: int = 0
    queue_delay_ema: float = 0.0


class Simulation:
    """One run of one preset over one workload (build a new one per run).

    ``bundle`` holds the preset's fresh policy objects (``Preset.build``): the router, stealer
    and TTL policy are the deployment's, and every instance gets its own eviction policy, queue
    and fairness from ``PolicyBundle.engine``.
    """

    def __init__(self, bundle: PolicyBundle, config: SimConfig | None = None,
                 cost: StepCost | None = None) -> None:
        self.bundle = bundle
        self.preset = bundle.preset
        self.config = cfg = config or SimConfig()
        self.cost: StepCost = (cost if cost is not None
                               else RooflineCost(model=cfg.model, cluster=cfg.cluster))
        b = cfg.block_tokens
        self.block_tokens = b
        kv_token = cfg.model.kv_bytes_per_token
        hbm = cfg.hbm_blocks or int(cfg.cluster.kv_hbm_bytes_per_instance(cfg.model)
                                    // (b * kv_token))
        dram = cfg.dram_blocks if cfg.dram_blocks is not None else int(
            cfg.cluster.dram_kv_bytes_per_node() // (b * kv_token)
            // cfg.cluster.instances_per_node)
        capacity = 1.0 / max(self.cost.prefill_token_s(), 1e-12)
        self.instances = [self._instance(i, hbm, dram, capacity)
                          for i in range(cfg.cluster.instances)]
        self.names = [f"w{i}" for i in range(len(self.instances))]
        self.by_name = dict(zip(self.names, self.instances, strict=True))
        self.router = bundle.router
        self.ttl = bundle.ttl
        self.pins = PinBook(cfg.pin_cap_fraction, self.ttl)
        self.stealer = bundle.stealer
        self.reads_hints = self.instances[0].cache.policy.reads_hints
        self.hinter = SessionHinter(PatternInference(theta_conf=cfg.theta_conf))
        self._hint_memo: dict[tuple[str, str | None, int], ReuseHint] = {}
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._handlers: dict[int, Callable[[float, Any], None]] = {
            ARRIVE: self._on_arrive, ENQUEUE: self._on_enqueue, STEP: self._on_step,
            STEAL: self._on_steal, MIGRATE: self._on_migrate}
        self.n = _Counters()
        self.states: list[TaskState] = []
        self._open = 0
        self.events = 0

    def _instance(self, i: int, hbm: int, dram: int, capacity: float) -> Instance:
        """Instance ``i`` with its own engine policies from the bundle."""
        cfg, b = self.config, self.block_tokens
        own = self.bundle.engine(capacity_per_s=capacity)
        cache = CacheManager(hbm, own.eviction, dram_blocks=dram if self.preset.dram_tier else 0,
                             block_tokens=b, block_bytes=b * cfg.model.kv_bytes_per_token,
                             swap=cfg.cluster.pcie)
        return Instance(index=i, node=i // cfg.cluster.instances_per_node, cache=cache,
                        queue=own.queue, cost=self.cost, block_tokens=b,
                        fairness=own.fairness)

    # ------------------------------------------------------------------ loop

    def push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def run(self, workload: Workload) -> RunResult:
        """Simulate every task of ``workload`` to completion."""
        hbm = self.instances[0].cache.hbm_blocks
        longest = max((sum(c.new_tokens + c.output_tokens for c in t.calls)
                       for t in workload.tasks), default=0)
        if longest // self.block_tokens > hbm:
            raise SagaConfigError(
                f"a task's context ({longest} tokens) exceeds one instance's KV pool "
                f"({hbm} blocks of {self.block_tokens} tokens); raise SimConfig.hbm_blocks or "
                "lower WorkloadSpec.max_context")
        for i, task in enumerate(workload.tasks):
            st = TaskState(task, i, ideal_s=self.ideal_tct(task))
            self.states.append(st)
            self.push(task.arrival_s, ARRIVE, st)
        self._open = len(self.states)
        if self.preset.migration:
            self.push(MIGRATE_INTERVAL_S, MIGRATE, None)
        now = 0.0
        while self._heap:
            now, _, kind, payload = heapq.heappop(self._heap)
            self.events += 1
            self._handlers[kind](now, payload)
        for inst in self.instances:
            inst.advance(now)
        return self._result(now)

    def ideal_tct(self, task: Task) -> float:
        """The task alone on an idle instance with every prefix cached, tools included."""
        ctx = 0
        total = 0.0
        for c in task.calls:
            total += ideal_call_s(self.cost, c.new_tokens, ctx, c.output_tokens) + c.tool_s
            ctx += c.new_tokens + c.output_tokens
        return total

    # ------------------------------------------------------------------ handlers

    def _hashes(self, st: TaskState, tokens: int, call: int) -> list[int]:
        """Chained block ids of the session's first ``tokens`` tokens (full blocks only).

        The system prompt's blocks are shared by the agent type; the rest are the session's.
        Without prefix caching every call's blocks are new (nothing is reused across calls).
        """
        b = self.block_tokens
        n = tokens // b
        if not self.preset.prefix_caching:
            base = (1 << 60) + ((st.index + 1) << 24) + (call << 12)
            return list(range(base, base + n))
        sys_n = min(st.task.system_tokens // b, n)
        sys_base = (2 << 56) + (sum(map(ord, st.task.system_key)) << 12)
        own = ((st.index + 1) << 24)
        return list(range(sys_base, sys_base + sys_n)) + list(range(own + sys_n, own + n))

    def _on_arrive(self, now: float, st: TaskState) -> None:
        task = st.task
        k = st.next_call
        call = task.calls[k]
        if k > 0 and self.ttl is not None:
            prev = task.calls[k - 1]
            if prev.tool is not None and prev.tool_s > 0:
                self.ttl.observe(prev.tool, prev.tool_s)
        prompt = st.context + call.new_tokens
        hashes = self._hashes(st, prompt + call.output_tokens, k)
        n_prompt = prompt // self.block_tokens
        loads = {n: inst.load(self.router.load_kind) for n, inst in self.by_name.items()}
        name = self.router.route(RouteRequest(task.task_id, tuple(hashes[:n_prompt]), prompt, now),
                                 loads)
        inst = self.by_name[name]
        req = Request(st, k, now, prompt, call.output_tokens, st.context, hashes)
        req.queued = QueuedRequest(req.request_id, task.task_id, now, steps_done=k,
                                   tenant=task.tenant, task_start_s=task.arrival_s)
        delay = 0.0
        if self.preset.rehome_kv and 0 <= st.home != inst.index:
            # The session moved: its KV follows it (kv_migrate) instead of being prefilled again.
            delay = self._move_kv(req, self.instances[st.home], inst, now)
            self.n.rehome_kv += 1
        if self.preset.prefetch and inst.cache.dram_used:
            m = inst.cache.longest_prefix(hashes[:n_prompt])
            if m.dram_blocks > 0:
                delay += inst.cache.prefetch(hashes[:m.cached_blocks], now, partial=True)
        if delay > 0:
            self.push(now + delay, ENQUEUE, (req, inst.index))
        else:
            self._enqueue(req, inst, now)

    def _on_enqueue(self, now: float, payload: tuple[Request, int]) -> None:
        req, idx = payload
        self._enqueue(req, self.instances[idx], now)

    def _enqueue(self, req: Request, inst: Instance, now: float) -> None:
        self._settle(inst, now)
        inst.enqueue(req)
        self._kick(inst, now)
        if self.stealer is not None and inst.waiting:
            # Work is queueing here: an instance that went idle earlier may now steal it.
            for other in self.instances:
                if other is not inst:
                    self._arm_steal(other, now)

    def _on_step(self, now: float, payload: tuple[int, int]) -> None:
        idx, version = payload
        inst = self.instances[idx]
        if version == inst.version:
            self._settle(inst, now)
            self._kick(inst, now)

    def _settle(self, inst: Instance, now: float) -> None:
        """Account progress up to ``now`` and finish the calls that completed."""
        _, decoded = inst.advance(now)
        for r in decoded:
            self._finish_call(r, inst, now)

    def _kick(self, inst: Instance, now: float) -> None:
        """Admit what fits, fix the batch and schedule the instance's next completion."""
        for r in inst.admit(now):
            self.pins.release(r.state.task_id)  # the call holds its blocks: the pin is done
            delay = now - r.arrival_s
            self.n.queue_delay_ema += 0.05 * (delay - self.n.queue_delay_ema)
        nxt = inst.plan(now)
        if nxt is not None:
            self.push(nxt, STEP, (inst.index, inst.version))
        else:
            self._arm_steal(inst, now)

    def _arm_steal(self, inst: Instance, now: float) -> None:
        """An idle instance looks for work once it has been idle ``t_idle`` (one event at a
        time: it is re-armed when it finds nothing while others still queue, or when a call
        has to wait somewhere)."""
        if self.stealer is None or inst.busy or inst.steal_armed or not self._open:
            return
        inst.idle_since = now if inst.idle_since is None else inst.idle_since
        inst.steal_armed = True
        self.push(max(now, inst.idle_since + self.stealer.t_idle), STEAL,
                  (inst.index, inst.idle_since))

    def _hint(self, agent: str, tool: str | None) -> ReuseHint:
        key = (agent, tool, self.hinter.inference.n_tasks(agent))
        h = self._hint_memo.get(key)
        if h is None:
            h = self._hint_memo[key] = self.hinter.hint(agent, tool)
        return h

    def _finish_call(self, r: Request, inst: Instance, now: float) -> None:
        st = r.state
        task = st.task
        call = task.calls[r.call_index]
        inst.finish(r, now)
        b = self.block_tokens
        cacheable = (min(r.reusable_tokens, r.prompt_tokens) // b) * b
        n = self.n
        n.prompt += r.prompt_tokens
        n.hit += r.hit_tokens
        n.output += r.output_tokens
        n.reprefill += max(0, cacheable - r.hit_tokens)
        if r.call_index > 0:
            n.followups += 1
            n.missed_context += r.hbm_hit_tokens < cacheable
        assert r.queued is not None
        inst.queue.on_service(r.queued, now - r.admitted_s)
        if inst.fairness is not None:
            inst.fairness.record_service(task.task_id,
                                         r.prompt_tokens - r.hit_tokens + r.output_tokens)
        sample = (now - r.admitted_s) / max(1, inst.running + 1)
        inst.step_time_ema += 0.1 * (sample - inst.step_time_ema)
        st.context = r.prompt_tokens + r.output_tokens
        st.next_call += 1
        st.home = inst.index
        if self.reads_hints:
            self.hinter.observe_call(task.task_id, r.prompt_tokens, r.output_tokens, call.tool)
            h = self._hint(task.agent_type, call.tool)
            inst.cache.set_hints(r.resident, reuse_prob=h.reuse_prob,
                                 steps_to_exec=h.steps_to_exec)
        if call.tool is None:
            self._task_done(st, inst, now)
            return
        if self.ttl is not None:
            reload_s = (r.prompt_tokens + r.output_tokens) * self.cost.prefill_token_s()
            ttl = self.ttl.ttl(call.tool, inst.pressure(now), queue_delay_s=n.queue_delay_ema,
                               reload_s=reload_s)
            n.pins += 1
            n.pins_held += call.tool_s <= ttl
            if ttl > 0:
                shared = min(task.system_tokens // b, len(r.resident)) if (
                    self.preset.prefix_caching) else 0
                self.pins.pin(inst, task.task_id, r.resident, shared, call.tool, now, now + ttl)
        self.push(now + call.tool_s, ARRIVE, st)

    def _task_done(self, st: TaskState, inst: Instance, now: float) -> None:
        task = st.task
        st.done_s = now
        self._open -= 1
        if self.reads_hints:
            self.hinter.finish(task.task_id, task.agent_type)
        for i in self.instances:
            i.queue.on_task_done(task.task_id)
            if i.fairness is not None:
                with contextlib.suppress(KeyError):
                    i.fairness.finish(task.task_id)
        self.router.forget(task.task_id)

    def _on_steal(self, now: float, payload: tuple[int, float]) -> None:
        idx, since = payload
        thief = self.instances[idx]
        assert self.stealer is not None
        thief.steal_armed = False
        if thief.busy or thief.idle_since != since or not self._open:
            return
        states = [self._worker_state(i, now) for i in self.instances]
        for s in self.stealer.plan(now, states):
            src, dst = self.by_name[s.src], self.by_name[s.dst]
            self._settle(src, now)
            for req in src.remove_waiting(s.session_id):
                self._move_kv(req, src, dst, now)
                self.push(now + s.transfer_s, ENQUEUE, (req, dst.index))
            self.router.reassign(s.session_id, s.dst, now)
            self.n.steals += 1
            dst.idle_since = None
            self._kick(src, now)
        if not thief.busy and thief.idle_since is not None and any(
                i.waiting for i in self.instances):
            thief.steal_armed = True
            self.push(now + self.stealer.t_idle, STEAL, (idx, thief.idle_since))

    def _worker_state(self, inst: Instance, now: float) -> WorkerState:
        kv = self.config.model.kv_bytes_per_token
        waiting = sorted(inst.waiting.values(), key=lambda r: r.arrival_s)[:32]
        sessions = tuple(
            WaitingSession(r.state.task_id,
                           inst.cache.longest_prefix(r.hashes).cached_blocks
                           * self.block_tokens * kv)
            for r in waiting)
        return WorkerState(self.names[inst.index], inst.load("utilisation"),
                           idle_since=None if inst.busy else inst.idle_since, waiting=sessions,
                           step_time_s=inst.step_time_ema, node=str(inst.node),
                           head_blocked=inst.head_blocked)

    def _move_kv(self, req: Request, src: Instance, dst: Instance, now: float) -> float:
        """Copy a call's cached prefix from ``src`` to ``dst``; returns the transfer seconds."""
        m = src.cache.longest_prefix(req.hashes)
        if m.cached_blocks == 0:
            return 0.0
        blocks = req.hashes[:m.cached_blocks]
        alloc = dst.cache.allocate(blocks, now, partial=True)
        dst.cache.release(blocks[:alloc.resident_blocks], now)
        nbytes = m.cached_blocks * self.block_tokens * self.config.model.kv_bytes_per_token
        c = self.config.cluster
        bw = c.nvlink_bytes_per_s if src.node == dst.node else c.ib_bytes_per_s
        return kv_transfer_time(nbytes, bw, c.ib_latency_s)

    def _on_migrate(self, now: float, _: Any) -> None:
        if not self._open:
            return
        loads = [i.load("utilisation") for i in self.instances]
        src = self.instances[int(np.argmax(loads))]
        dst = self.instances[int(np.argmin(loads))]
        if loads[src.index] - loads[dst.index] > MIGRATE_GAP and src.waiting:
            self._settle(src, now)
            req = max(src.waiting.values(), key=lambda r: (r.arrival_s, r.request_id))
            for moved in src.remove_waiting(req.state.task_id):
                t = self._move_kv(moved, src, dst, now)
                self.push(now + t, ENQUEUE, (moved, dst.index))
            self.n.migrations += 1
            self._kick(src, now)
        self.push(now + MIGRATE_INTERVAL_S, MIGRATE, None)

    # ------------------------------------------------------------------ results

    def _result(self, end: float) -> RunResult:
        done = [s for s in self.states if s.done_s is not None]
        if len(done) != len(self.states):
            raise RuntimeError(f"{len(self.states) - len(done)} tasks never finished")
        tct = np.array([s.done_s - s.task.arrival_s for s in done])  # type: ignore[operator]
        ideal = np.array([max(s.ideal_s, 1e-9) for s in done])
        first = min(s.task.arrival_s for s in done)
        span = max(end - first, 1e-9)
        tenants: dict[str, list[bool]] = {}
        for s, t in zip(done, tct, strict=True):
            tenants.setdefault(s.task.tenant, []).append(
                bool(t + s.task.arrival_s <= s.task.deadline_s))
        slo = {k: float(np.mean(v)) for k, v in sorted(tenants.items())}
        if math.isfinite(min((s.task.deadline_s for s in done), default=math.inf)):
            slo["overall"] = float(np.mean([x for v in tenants.values() for x in v]))
        n = self.n
        busy = sum(i.busy_s for i in self.instances)
        hbm = self.instances[0].cache.hbm_blocks
        return RunResult(
            preset=self.preset.name, tasks=len(done), calls=sum(len(s.task.calls) for s in done),
            tct_mean_s=float(tct.mean()), tct_p50_s=float(np.percentile(tct, 50)),
            tct_p95_s=float(np.percentile(tct, 95)), makespan_s=span,
            throughput_tasks_per_min=len(done) / span * 60.0,
            prompt_tokens=n.prompt, hit_tokens=n.hit, recomputed_tokens=n.prompt - n.hit,
            reprefilled_tokens=n.reprefill, output_tokens=n.output,
            eviction_rate=n.missed_context / n.followups if n.followups else 0.0,
            ttl_accuracy=n.pins_held / n.pins if n.pins else math.nan,
            slo_attainment=slo, latency_vs_ideal=float(np.mean(tct / ideal)),
            hbm_utilisation=sum(i.ref_block_s for i in self.instances) / (
                hbm * span * len(self.instances)),
            reprefill_gpu_share=(n.reprefill * self.cost.prefill_token_s() / busy) if busy
            else 0.0,
            steals=n.steals, migrations=n.migrations, rehomed_kv=n.rehome_kv, events=self.events,
            tct_by_task={s.task_id: float(t) for s, t in zip(done, tct, strict=True)})


def simulate(preset: Preset, workload: Workload, config: SimConfig | None = None,
             cost: StepCost | None = None) -> RunResult:
    """Run ``workload`` under ``preset`` (a fresh bundle of its policies) on a new deployment."""
    return Simulation(preset.build(), config, cost).run(workload)


__all__ = ["RunResult", "SimConfig", "Simulation", "simulate"]
