"""The discrete-event simulator of a SAGA (or peer) deployment serving agent tasks.

A heap-ordered event loop in the style of vidur: each event names a handler from a registry, and
a handler changes the entities it owns and pushes the events that follow. The policy objects are
saga-policy's, built fresh from a :class:`~saga.policy.presets.Preset` for every run: eviction
inside each instance's ``CacheManager``, the TTL pin, DRAM tier and prefetch, the router, work
stealing, the queue order and AFS, Llumnix's live migration when the preset asks for it.

Events: ``arrive`` (a session issues its next call: route it, maybe prefetch its KV),
``enqueue`` (the call reaches its instance's queue, after a prefetch or KV transfer), ``step``
(an instance's next prefill or decode completion), ``steal`` (an idle instance looks for work),
``migrate`` (Llumnix's rescheduler moves running calls, with their KV, off overloaded instances).

An eviction policy with a next-use model (``EvictionPolicy.next_use_model()``, ``eta``) hears
what SAGA's vLLM scheduler hears, on each instance's own model: a call reaching the instance
(``call_started``) and, when it ends, its session, pending tool, the AEG's reuse probability and
whether it was the last call (``observe_request``), with the instance's queueing delay; never a
drawn tool duration or a future arrival.

Simplifications, stated: KV is tracked in blocks of ``block_tokens`` (256 by default, not vLLM's
16, so that the per-block policy arrays stay small; a prefix hit is rounded down to 256 tokens);
a call reserves the blocks for its output at admission, so no call is preempted; a prefetch starts
when the tool returns (not earlier, as an AEG-timed prefetch could); the DRAM of a node is split
evenly between its instances; PCIe loads delay only the call that needs them and do not contend;
KV copies between instances (a moved session's KV under ``rehome_kv``) take their link's time
but do not contend with one another; a live migration (Llumnix's pipelined copy) moves a
decoding call at once, its final-stage downtime (milliseconds) not charged. Without
``rehome_kv`` a session that changes instance (routing, stealing) is prefilled again there.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saga.aeg import PatternInference
from saga.bench.costmodel import RooflineCost, StepCost, ideal_call_s
from saga.bench.sim.entities import Request, TaskState
from saga.bench.sim.instance import Instance
from saga.bench.sim.pins import PinBook
from saga.bench.sim.results import Counters, RunResult, build_result
from saga.bench.workload import Task, Workload
from saga.policy.cache import CacheManager
from saga.policy.errors import CacheError, SagaConfigError
from saga.policy.migration import Rescheduler
from saga.policy.presets import PolicyBundle, Preset
from saga.policy.queueing import QueuedRequest
from saga.policy.routing import RouteRequest, WorkerSignals
from saga.policy.spec import LLAMA3_70B, REFERENCE_CLUSTER, ClusterSpec, ModelSpec
from saga.policy.stealing import WaitingSession, WorkerState, kv_transfer_time
from saga.policy.workflow import ReuseHint, SessionHinter

ARRIVE, ENQUEUE, STEP, STEAL, MIGRATE = range(5)


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
        # A constant of the cost model, read once: a re-prefill's seconds per token.
        self._token_s = self.cost.prefill_token_s()
        capacity = 1.0 / max(self._token_s, 1e-12)
        self.instances = [self._instance(i, hbm, dram, capacity)
                          for i in range(cfg.cluster.instances)]
        self.names = [f"w{i}" for i in range(len(self.instances))]
        self.by_name = dict(zip(self.names, self.instances, strict=True))
        self.router = bundle.router
        self.ttl = bundle.ttl
        self.pins = PinBook(cfg.pin_cap_fraction, self.ttl)
        self.stealer = bundle.stealer
        self.reads_hints = self.instances[0].cache.policy.reads_hints
        # The AEG's hints are computed when the eviction order or the TTL policy reads them.
        self.needs_hints = self.reads_hints or (self.ttl is not None and self.ttl.reads_hints)
        self.hinter = SessionHinter(PatternInference(theta_conf=cfg.theta_conf))
        self._hint_memo: dict[tuple[str, str | None, int], ReuseHint] = {}
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._handlers: dict[int, Callable[[float, Any], None]] = {
            ARRIVE: self._on_arrive, ENQUEUE: self._on_enqueue, STEP: self._on_step,
            STEAL: self._on_steal, MIGRATE: self._on_migrate}
        self.n = Counters()
        self.rescheduler = Rescheduler() if self.preset.migration else None
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
        if self.rescheduler is not None:
            self.push(self.rescheduler.interval_s, MIGRATE, None)
        now = 0.0
        while self._heap:
            now, _, kind, payload = heapq.heappop(self._heap)
            self.events += 1
            self._handlers[kind](now, payload)
        for inst in self.instances:
            inst.advance(now)
        return build_result(self.preset.name, self.states, self.instances, self.n, self.cost,
                            now, self.events)

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
        signals = {n: WorkerSignals(len(inst.waiting), inst.pressure(now))
                   for n, inst in self.by_name.items()} if self.router.reads_signals else None
        held = self.pins.home_held(task.task_id, now, task.calls[k - 1].tool_s) if k else None
        name = self.router.route(RouteRequest(task.task_id, tuple(hashes[:n_prompt]), prompt, now,
                                              signals, home_held=held), loads)
        inst = self.by_name[name]
        self._call_started(inst, task.task_id, now)
        req = Request(st, k, now, prompt, call.output_tokens, st.context, hashes)
        req.queued = QueuedRequest(req.request_id, task.task_id, now, steps_done=k,
                                   tenant=task.tenant, task_start_s=task.arrival_s)
        delay = 0.0
        if self.preset.rehome_kv and 0 <= st.home != inst.index:
            # The session moved: its KV follows it instead of being prefilled again.
            delay = self._move_kv(req, self.instances[st.home], inst, now)
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

    def _call_started(self, inst: Instance, session: str, now: float) -> None:
        """A call of ``session`` reached ``inst``: its eviction policy's next-use model (if it
        has one) hears it, as SAGA's vLLM scheduler does when the request is added."""
        est = inst.cache.policy.next_use_model()
        if est is not None:
            est.call_started(session, now)

    def _enqueue(self, req: Request, inst: Instance, now: float) -> None:
        self._call_started(inst, req.state.task_id, now)
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
            inst.queue_delay_ema += 0.05 * (delay - inst.queue_delay_ema)
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
        reuse_prob = 1.0
        if self.needs_hints:
            self.hinter.observe_call(task.task_id, r.prompt_tokens, r.output_tokens, call.tool)
            h = self._hint(task.agent_type, call.tool)
            reuse_prob = h.reuse_prob
            if self.reads_hints:
                inst.cache.set_hints(r.resident, reuse_prob=h.reuse_prob,
                                     steps_to_exec=h.steps_to_exec)
        self._observe_finish(r, inst, now, reuse_prob)
        if call.tool is None:
            self._task_done(st, inst, now)
            return
        if self.ttl is not None:
            reload_s = (r.prompt_tokens + r.output_tokens) * self._token_s
            share = max(len(r.resident), 1) / inst.cache.hbm_blocks
            ttl = self.ttl.ttl(call.tool, inst.pressure(now), queue_delay_s=n.queue_delay_ema,
                               reload_s=reload_s, reuse_prob=reuse_prob, share=min(share, 1.0))
            n.pins += 1
            n.pins_held += call.tool_s <= ttl
            self.pins.granted(task.task_id, now, ttl)
            if ttl > 0:
                shared = min(task.system_tokens // b, len(r.resident)) if (
                    self.preset.prefix_caching) else 0
                self.pins.pin(inst, task.task_id, r.resident, shared, call.tool, now, now + ttl)
        self.push(now + call.tool_s, ARRIVE, st)

    def _observe_finish(self, r: Request, inst: Instance, now: float, reuse_prob: float) -> None:
        """Tell ``inst``'s next-use model (if its eviction policy has one) that ``r`` finished,
        with what SAGA's scheduler gets at a call's end: the session, its pending tool, the
        AEG's reuse probability and whether it was the last call; and the instance's queueing
        delay. Never the drawn tool duration or a future arrival."""
        est = inst.cache.policy.next_use_model()
        if est is None:
            return
        task = r.state.task
        tool = task.calls[r.call_index].tool
        est.set_queue_delay(inst.queue_delay_ema)
        est.observe_request(r.hashes, now, session_id=task.task_id, pending_tool=tool,
                            reuse_prob=reuse_prob, final=tool is None,
                            agent_type=task.agent_type)

    def _task_done(self, st: TaskState, inst: Instance, now: float) -> None:
        task = st.task
        st.done_s = now
        self._open -= 1
        self.pins.forget(task.task_id)
        if self.needs_hints:
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
                # The call moves; its KV only with rehome_kv, else it is prefilled again there.
                t = self._move_kv(req, src, dst, now) if self.preset.rehome_kv else 0.0
                self.push(now + t, ENQUEUE, (req, dst.index))
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
        self.n.rehome_kv += 1
        blocks = req.hashes[:m.cached_blocks]
        alloc = dst.cache.allocate(blocks, now, partial=True)
        dst.cache.release(blocks[:alloc.resident_blocks], now)
        nbytes = m.cached_blocks * self.block_tokens * self.config.model.kv_bytes_per_token
        c = self.config.cluster
        bw = c.nvlink_bytes_per_s if src.node == dst.node else c.ib_bytes_per_s
        return kv_transfer_time(nbytes, bw, c.ib_latency_s)

    def _on_migrate(self, now: float, _: Any) -> None:
        """Llumnix's rescheduler: each (overloaded, underloaded) pair moves running calls."""
        resched = self.rescheduler
        if not self._open or resched is None:
            return
        loads = {n: inst.load("utilisation") for n, inst in self.by_name.items()}
        for s, d in resched.pairs(loads):
            src, dst = self.by_name[s], self.by_name[d]
            self._settle(src, now)
            self._settle(dst, now)
            running = {r.request_id: (r, left) for r, left in src.decoding_left()}
            lengths = [(rid, r.prompt_tokens + r.output_tokens - round(left))
                       for rid, (r, left) in running.items()]
            for rid in resched.select(lengths):
                req, _ = running[rid]
                if dst.running >= dst.cost.max_num_seqs or not self._live_migrate(
                        req, src, dst, now):
                    break
            self._kick(src, now)
            self._kick(dst, now)
        self.push(now + resched.interval_s, MIGRATE, None)

    def _live_migrate(self, req: Request, src: Instance, dst: Instance, now: float) -> bool:
        """Move a decoding call and its KV from ``src`` to ``dst`` (False: ``dst`` has no room,
        the migration is dropped, as Llumnix drops one whose blocks it cannot pre-allocate)."""
        try:
            alloc = dst.cache.allocate(req.hashes, now)
        except CacheError:
            return False
        left = src.migrate_out(req, now)
        req.resident = req.hashes[:alloc.resident_blocks]
        dst.migrate_in(req, left)
        self.router.reassign(req.state.task_id, self.names[dst.index], now)
        self.n.migrations += 1
        return True


def simulate(preset: Preset, workload: Workload, config: SimConfig | None = None,
             cost: StepCost | None = None) -> RunResult:
    """Run ``workload`` under ``preset`` (a fresh bundle of its policies) on a new deployment."""
    return Simulation(preset.build(), config, cost).run(workload)


__all__ = ["RunResult", "SimConfig", "Simulation", "simulate"]
