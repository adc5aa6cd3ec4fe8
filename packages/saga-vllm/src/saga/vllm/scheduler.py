"""`SagaScheduler`: SAGA inside vLLM V1's scheduler, through subclassing only.

Load it with ``vllm.LLM(..., scheduler_cls="saga.vllm.scheduler.SagaScheduler",
additional_config={"saga": SagaSchedulerConfig(...).to_dict()})`` (see
:func:`saga.vllm.testing.tiny_engine_kwargs`). vLLM builds the scheduler itself — in the
engine-core process when multiprocessing is on — so the config travels as plain data.

Where each part hooks in (vLLM 0.32):

- WA-LRU eviction: the block pool's ``free_block_queue`` is replaced by
  :class:`~saga.vllm.block_queue.WALRUFreeBlockQueue` (vLLM picks victims only in its
  ``popleft_n``). Before a finished request's blocks go back, the scheduler stamps their reuse
  probability (``_free_request_blocks``).
- Tool-call pins: ``_free_request_blocks`` is the narrowest seam that sees every finished
  request's blocks (direct and deferred frees both pass through it; preemption too, which is
  left alone). A finished call with ``pending_tool`` hands its block references to a
  :class:`~saga.vllm.pins.Pin` (``KVCacheManager.pop_blocks_for_free``) instead of the pool;
  ``schedule`` releases pins on expiry, when the session's next call got its blocks, and under
  pressure (before vLLM would fail to place a waiting request or preempt one), earliest expiry
  first; over the cap the pin whose session is expected back last gives way.
- Queue order: ``self.waiting`` (vLLM's ``RequestQueue`` abstraction) is replaced by
  :class:`SagaRequestQueue` when ``queue != "fcfs"`` or ``afs``; with FCFS and no AFS vLLM's own
  deque stays, so all-off is the stock scheduler.
- Step log: with ``additional_config["saga_step_log"]`` set, every step's work and times go
  to a :class:`~saga.vllm.steps.StepLog` (``schedule`` entry to ``update_from_output`` exit).
- Malformed metadata: :class:`SagaMetadataValidator` is a no-op logits processor whose
  ``validate_params`` hook runs in the front end at admission, so a bad request is rejected
  with the field named and never reaches the engine core (an exception in the core's
  ``add_request`` would kill a multiprocess engine). The scheduler itself degrades a malformed
  request it still receives to a plain one and counts it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from saga.aeg.latency import LogNormalLatency, ToolLatencyModel
from saga.policy.afs import AFS
from saga.policy.eviction.walru import UNKNOWN_REUSE
from saga.policy.pins import Pin, PinTable, ReleaseReason
from saga.policy.queueing import (
    BFSQueue,
    DFSQueue,
    EmptyQueueError,
    FCFSQueue,
    HybridQueue,
    QueuedRequest,
)
from saga.policy.queueing import RequestQueue as PolicyQueue
from saga.policy.ttl import ToolCallTTL, pin_return_eta
from saga.policy.workflow import SessionHinter
from saga.vllm.block_queue import WALRUFreeBlockQueue
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaMetadataError, SagaRequestMeta, parse_saga_meta
from saga.vllm.metrics import SagaMetrics, publish
from saga.vllm.offload import REUSE_HINTS
from saga.vllm.steps import StepLog, StepLogging, step_log_for
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus
from vllm.v1.sample.logits_processor import LogitsProcessor

logger = logging.getLogger(__name__)

_PINNABLE = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class SagaMetadataValidator(LogitsProcessor):  # type: ignore[misc]
    """Rejects malformed ``extra_args["saga"]`` at admission, in the front-end process.

    vLLM calls ``validate_params`` of every configured logits processor for each request
    before it is sent to the engine core; a ``ValueError`` there becomes a per-request error
    (HTTP 400 on the OpenAI server) and the engine keeps serving. The processor itself leaves
    logits untouched.
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Raise :class:`SagaMetadataError` (a ``ValueError``) naming the bad field."""
        parse_saga_meta(sampling_params.extra_args)

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        """Nothing to set up: the processor only validates."""

    def apply(self, logits: Any) -> Any:
        """Identity."""
        return logits

    def is_argmax_invariant(self) -> bool:
        """Never changes greedy results."""
        return True

    def update_state(self, batch_update: Any) -> None:
        """No per-request state."""


VALIDATOR_CLS = "saga.vllm.scheduler:SagaMetadataValidator"


class SagaRequestQueue(RequestQueue):  # type: ignore[misc]
    """vLLM's waiting queue ordered by a saga-policy queue (FCFS/BFS/DFS/hybrid) or by AFS.

    vLLM expects ``pop_request`` to return what ``peek_request`` just showed, so the peeked
    request is remembered until the queue changes. Requests vLLM puts back at the front
    (preempted or skipped ones) stay ahead of the policy order, as in vLLM's FCFS deque.
    Single requests are removed lazily (the policy queues remove by session). Iteration yields
    the front, then the rest by arrival (the policy order is only defined by popping).

    With AFS, the session to serve is :meth:`AFS.pick` over sessions with a waiting call
    (tenant credit, then urgency ``afs_urgency``), and within a session calls go by arrival;
    AFS orders whole tasks, so it replaces the BFS/DFS/hybrid order.
    """

    def __init__(self, order: PolicyQueue | None, describe: Callable[[Any], QueuedRequest],
                 afs: AFS | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if (order is None) == (afs is None):
            raise ValueError("SagaRequestQueue needs exactly one of a policy queue or AFS")
        self._order = order
        self._afs = afs
        self._describe = describe
        self._clock = clock
        self._front: collections.deque[Any] = collections.deque()
        self._live: dict[str, Any] = {}
        self._by_session: dict[str, collections.deque[Any]] = {}
        self._session_of: dict[str, str] = {}
        self._peeked: Any = None

    # -- vLLM's RequestQueue interface -----------------------------------------------------------
    def add_request(self, request: Any) -> None:
        """Queue a request in policy order."""
        self._peeked = None
        q = self._describe(request)
        self._live[request.request_id] = request
        self._session_of[request.request_id] = q.session_id
        if self._order is not None:
            self._order.push(q)
        else:
            self._by_session.setdefault(q.session_id, collections.deque()).append(request)

    def _next(self) -> Any:
        if self._peeked is not None:
            return self._peeked
        if self._front:
            self._peeked = self._front[0]
            return self._peeked
        if self._order is not None:
            while True:
                try:
                    q = self._order.peek()
                except EmptyQueueError:
                    raise IndexError("peek from an empty queue") from None
                req = self._live.get(q.request_id)
                if req is not None:
                    self._peeked = req
                    return req
                self._order.pop()  # a tombstone of a removed request
        assert self._afs is not None
        sessions = [s for s, dq in self._by_session.items() if dq]
        if not sessions:
            raise IndexError("peek from an empty queue")
        session = self._afs.pick(sessions, self._clock())
        self._peeked = self._by_session[session][0]
        return self._peeked

    def peek_request(self) -> Any:
        """The request ``pop_request`` returns next."""
        return self._next()

    def pop_request(self) -> Any:
        """Take the next request out."""
        req = self._next()
        self._peeked = None
        if self._front and self._front[0] is req:
            self._front.popleft()
            return req
        rid = req.request_id
        self._live.pop(rid, None)
        session = self._session_of.pop(rid, "")
        if self._order is not None:
            popped = self._order.pop()
            assert popped.request_id == rid
        else:
            dq = self._by_session[session]
            dq.popleft()
            if not dq:
                del self._by_session[session]
        return req

    def prepend_request(self, request: Any) -> None:
        """Put a request back at the very front (vLLM: preempted)."""
        self._peeked = None
        self._front.appendleft(request)

    def prepend_requests(self, requests: Iterable[Any]) -> None:
        """Put requests back at the front (reversed, like ``deque.extendleft``)."""
        self._peeked = None
        self._front.extendleft(requests)

    def remove_request(self, request: Any) -> None:
        """Drop one request (aborted or finished while waiting)."""
        self.remove_requests([request])

    def remove_requests(self, requests: Iterable[Any]) -> None:
        """Drop requests; ones in the policy order leave tombstones skipped on peek."""
        self._peeked = None
        drop = {r.request_id: r for r in requests}
        if self._front:
            kept = [r for r in self._front if r.request_id not in drop]
            if len(kept) != len(self._front):
                self._front = collections.deque(kept)
        for rid in drop:
            if self._live.pop(rid, None) is None:
                continue
            session = self._session_of.pop(rid, "")
            dq = self._by_session.get(session)
            if dq is not None:
                self._by_session[session] = collections.deque(
                    r for r in dq if r.request_id != rid)
                if not self._by_session[session]:
                    del self._by_session[session]

    def __bool__(self) -> bool:
        return bool(self._front) or bool(self._live)

    def __len__(self) -> int:
        return len(self._front) + len(self._live)

    def __iter__(self) -> Iterator[Any]:
        yield from list(self._front)
        yield from sorted(self._live.values(), key=lambda r: r.arrival_time)

    # -- saga hooks ------------------------------------------------------------------------------
    def session_count(self) -> int:
        """Sessions this queue tracks a waiting request of (zero when it is empty)."""
        return len(set(self._session_of.values()) | set(self._by_session))

    def active_task_count(self) -> int:
        """Tasks holding a hybrid slot (zero for the other orders): a task that never ends
        holds its slot for good, which is why tasks must be ended."""
        return len(self._order.active_tasks) if isinstance(self._order, HybridQueue) else 0

    def on_task_done(self, session_id: str) -> None:
        """The session's task ended (its hybrid slot frees up)."""
        if self._order is not None:
            self._order.on_task_done(session_id)


def _policy_queue(cfg: SagaSchedulerConfig) -> PolicyQueue:
    if cfg.queue == "bfs":
        return BFSQueue()
    if cfg.queue == "dfs":
        return DFSQueue()
    if cfg.queue == "hybrid":
        return HybridQueue(cfg.hybrid_max_active)
    return FCFSQueue()


def tool_latency_source(default_p95_s: float) -> ToolLatencyModel:
    """A per-tool log-normal registry whose prior for an unseen tool has p95 = ``default_p95_s``
    (shape of saga-aeg's vague prior, shifted)."""
    unit = LogNormalLatency(mu=0.0, sigma=1.0)
    mu = math.log(max(default_p95_s, 1e-6)) - math.log(unit.p95())
    return ToolLatencyModel(default_prior=LogNormalLatency(mu=mu, sigma=1.0))


class SagaScheduler(StepLogging, Scheduler):  # type: ignore[misc]
    """vLLM's scheduler plus WA-LRU eviction, tool-call pins, SAGA queue orders and AFS.

    Every part follows :class:`SagaSchedulerConfig`; with all parts off this is vLLM's
    scheduler (the only difference is bookkeeping for :meth:`saga_stats`). ``clock`` (seconds,
    ``time.monotonic`` by default) may be replaced, e.g. by tests, before requests arrive.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = SagaSchedulerConfig.resolve(self.vllm_config)
        self.saga_config = cfg
        self.clock: Callable[[], float] = time.monotonic
        self.metrics = SagaMetrics()
        self.pins = PinTable()
        self._meta: dict[str, SagaRequestMeta | None] = {}
        self._session_steps: dict[str, int] = {}
        self._last_tool: dict[str, str] = {}
        self._afs_sessions: set[str] = set()
        self._agent_of: dict[str, str] = {}  # session -> agent type (pattern inference)
        self._ending: set[str] = set()  # ended sessions with a call still in flight
        self._afs_epoch_at = -math.inf
        self._preempted: dict[str, int] = {}  # request id -> tokens computed when preempted
        # The workflow model: AEGs per agent type, learned from the tasks this engine served.
        self.hinter = SessionHinter()
        self.block_pool: Any = self.kv_cache_manager.block_pool
        self.num_usable_blocks: int = int(self.block_pool.num_gpu_blocks) - 1
        self.block_queue = WALRUFreeBlockQueue.replace_in(
            self.block_pool, self._now, walru=cfg.walru, alpha=cfg.alpha, beta=cfg.beta,
            gamma=cfg.gamma, block_size=self.block_size, on_evict=self.metrics.on_evict)
        self.tool_latency = tool_latency_source(cfg.default_tool_p95_s)
        self.ttl_policy = ToolCallTTL(source=self.tool_latency, ttl_max=cfg.ttl_max_s)
        self.afs: AFS | None = (AFS(capacity_per_s=cfg.afs_capacity_tokens_per_s)
                                if cfg.afs else None)
        self.step_log: StepLog | None = step_log_for(self.vllm_config)
        self.saga_queue: SagaRequestQueue | None = None
        if cfg.queue != "fcfs" or cfg.afs:
            self.saga_queue = SagaRequestQueue(
                None if cfg.afs else _policy_queue(cfg), self._describe, self.afs, self._now)
            self.waiting = self.saga_queue
        if cfg.marker_path:
            self._write_marker("started")

    # -- helpers -----------------------------------------------------------------------------------
    def _now(self) -> float:
        return float(self.clock())

    def _parse_meta(self, request: Any) -> SagaRequestMeta | None:
        params = request.sampling_params
        if params is None:
            return None
        try:
            return parse_saga_meta(params.extra_args)
        except SagaMetadataError as exc:
            # Front ends with SagaMetadataValidator never get here; raising would kill a
            # multiprocess engine core, so serve the request as a plain one.
            self.metrics.malformed_metadata += 1
            logger.warning("request %s: %s; scheduling it as a plain request",
                           request.request_id, exc)
            return None

    def _session(self, request_id: str) -> str:
        meta = self._meta.get(request_id)
        return meta.session_id if meta is not None else request_id

    def _describe(self, request: Any) -> QueuedRequest:
        """The policy queue's view of a vLLM request (session progress, tenant)."""
        meta = self._meta.get(request.request_id)
        session = meta.session_id if meta is not None else request.request_id
        return QueuedRequest(
            request_id=request.request_id, session_id=session,
            arrival_s=float(request.arrival_time),
            steps_done=self._session_steps.get(session, 0),
            tenant=meta.tenant_id if meta is not None else "default")

    def _reuse_prob(self, meta: SagaRequestMeta | None) -> float:
        """P_reuse of a finished call's blocks: the caller's value, else the workflow's.

        With an agent type, the AEG that pattern inference learned for it (a generic prior
        during the cold start) gives ``p_reuse`` at the pending tool's node (the spec's formula
        in saga-aeg); without one, a pending tool means the session is expected back.
        """
        if meta is None:
            return UNKNOWN_REUSE
        if meta.reuse_prob is not None:
            return meta.reuse_prob
        if meta.final:
            return 0.0
        if meta.pending_tool is not None:
            if meta.agent_type is not None:
                return self.hinter.hint(meta.agent_type, meta.pending_tool).reuse_prob
            return self.saga_config.pending_tool_reuse
        return UNKNOWN_REUSE

    def _observe_workflow(self, request: Any, meta: SagaRequestMeta) -> None:
        """Feed pattern inference: this call, its pending tool, and the task's end."""
        if meta.agent_type is None:
            return
        self.hinter.observe_call(meta.session_id, int(request.num_prompt_tokens),
                                 int(request.num_output_tokens), meta.pending_tool)
        if meta.final:
            self._agent_of.pop(meta.session_id, None)
            self.hinter.finish(meta.session_id, meta.agent_type)
        else:
            self._agent_of[meta.session_id] = meta.agent_type

    def _pressure(self) -> float:
        return min(max(float(self.block_pool.get_usage()), 0.0), 1.0)

    def _write_marker(self, event: str) -> None:
        path = self.saga_config.marker_path
        assert path is not None
        payload = {"event": event, "pid": os.getpid(), "class": type(self).__qualname__,
                   "config": self.saga_config.to_dict(), "stats": self.saga_stats()}
        tmp = Path(f"{path}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)

    # -- requests in -------------------------------------------------------------------------------
    def add_request(self, request: Any) -> None:
        """Read the request's SAGA metadata, feed the tool-latency model, then queue it."""
        if request.request_id not in self.requests:
            meta = self._parse_meta(request)
            self._meta[request.request_id] = meta
            if meta is not None and meta.tool_latency_s is not None:
                tool = self._last_tool.get(meta.session_id)
                if tool is not None:
                    self.ttl_policy.observe(tool, meta.tool_latency_s)
            if self.afs is not None and not (meta is not None and meta.prefetch):
                self._afs_track(request, meta)
        super().add_request(request)

    def _afs_track(self, request: Any, meta: SagaRequestMeta | None) -> None:
        assert self.afs is not None
        session = meta.session_id if meta is not None else request.request_id
        max_tokens = request.max_tokens if request.max_tokens is not None else 0
        call_work = float(request.num_prompt_tokens + max_tokens)
        if session not in self._afs_sessions:
            deadline = math.inf
            if meta is not None and meta.deadline_s is not None:
                deadline = self._now() + meta.deadline_s
            self.afs.add_task(session, meta.tenant_id if meta else "default", call_work,
                              deadline)
            self._afs_sessions.add(session)
        else:
            task = self.afs.task(session)
            self.afs.update_estimate(session, task.service + call_work)

    # -- scheduling --------------------------------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        """vLLM's step, with pins expired/relieved before and released/accounted after."""
        start = time.monotonic()
        cfg = self.saga_config
        now = self._now()
        if self.afs is not None and now - self._afs_epoch_at >= self.afs.epoch_s:
            self.afs.step_epoch(now)
            self._afs_epoch_at = now
        if cfg.ttl and len(self.pins):
            self.release_expired_pins(now)
            self._relieve_pressure()
        out = super().schedule(*args, **kwargs)
        self._count_resumed(out)
        for new in out.scheduled_new_reqs:
            req = self.requests.get(new.req_id)
            if req is None:
                continue
            if new.req_id in self._preempted:  # a resumed request (vLLM's v2 model runner)
                self.metrics.on_resume(self._preempted.pop(new.req_id),
                                       int(new.num_computed_tokens))
                continue
            self.metrics.on_prefill(int(req.num_prompt_tokens), int(new.num_computed_tokens))
            meta = self._meta.get(new.req_id)
            if meta is not None and meta.session_id in self.pins:
                # The next call holds its own references now; the pin has done its job.
                self._release(self.pins.pop(meta.session_id), ReleaseReason.RETURNED)
        if self.afs is not None:
            for rid, n in out.num_scheduled_tokens.items():
                session = self._session(rid)
                if session in self._afs_sessions:
                    self.afs.record_service(session, float(n))
        if cfg.ttl and len(self.pins) and (out.preempted_req_ids or self._head_blocked()):
            self._relieve_pressure(force=True)
        self._sync_gauges()
        if self.step_log is not None:
            self.step_log.scheduled(start, out, self.requests)
        return out

    def _count_resumed(self, out: Any) -> None:
        """Count what preempted requests resuming this step compute again."""
        cached = out.scheduled_cached_reqs
        for rid in getattr(cached, "resumed_req_ids", ()) or ():
            before = self._preempted.pop(rid, None)
            if before is not None:
                idx = cached.req_ids.index(rid)
                self.metrics.on_resume(before, int(cached.num_computed_tokens[idx]))

    def _preempt_request(self, request: Any, *args: Any, **kwargs: Any) -> None:
        """vLLM's preemption, counted (what the request had computed is lost unless cached)."""
        self.metrics.preemptions += 1
        self._preempted[request.request_id] = int(request.num_computed_tokens)
        super()._preempt_request(request, *args, **kwargs)

    def _head_blocked(self) -> bool:
        """A waiting request exists but nothing new was placed and nothing runs."""
        return bool(self.waiting) and not self.running

    def _relieve_pressure(self, force: bool = False) -> None:
        """Release pins (earliest expiry first, the head request's own session last) until the
        head of the waiting queue fits beside the running requests' next blocks.

        Counts the head's prefix hits: hit blocks need no allocation, but the ones sitting free
        stop counting as free once touched. ``force`` (after a step that failed to place it or
        preempted) also releases when no estimate says so, one pin at a time, so a waiting
        request is never starved by pins.
        """
        if not len(self.pins):
            return
        head = None
        if self.waiting:
            try:
                head = self.waiting.peek_request()
            except IndexError:
                head = None
        own = self._session(head.request_id) if head is not None else None
        reserve = len(self.running)
        must_release = force
        while len(self.pins):
            if not must_release and self._fits(head, reserve):
                return
            victim = self._earliest_pin(exclude=own)
            if victim is None:
                return
            self._release(self.pins.pop(victim.session_id), ReleaseReason.PRESSURE)
            must_release = False

    def _fits(self, head: Any, reserve: int) -> bool:
        """Whether ``head`` (or nothing) plus one new block per running request fits now."""
        need_new, hits_free = 0, 0
        if head is not None and head.num_computed_tokens == 0:
            hit_blocks, n_hit, _ = self.kv_cache_manager.get_computed_blocks(head)
            flat = [b for group in hit_blocks.blocks for b in group]
            hits_free = sum(1 for b in flat if b.ref_cnt == 0)
            need_new = _cdiv(int(head.num_tokens), self.block_size) - n_hit // self.block_size
        free = int(self.block_pool.get_num_free_blocks()) - hits_free
        return free >= need_new + reserve

    def _earliest_pin(self, exclude: str | None) -> Pin | None:
        first = self.pins.earliest()
        if first is None or first.session_id != exclude:
            return first
        others = sorted((p for p in self.pins if p.session_id != exclude),
                        key=lambda p: (p.expires_at, p.seq))
        return others[0] if others else first

    # -- freeing and pinning -----------------------------------------------------------------------
    def _free_request_blocks(self, request: Any) -> None:
        """Stamp reuse probabilities; pin a finished tool-calling request's blocks instead of
        freeing them (the seam vLLM routes every finished request's blocks through)."""
        if not request.is_finished():
            # Preemption: the request comes back, vLLM frees its blocks as usual.
            super()._free_request_blocks(request)
            return
        meta = self._meta.pop(request.request_id, None)
        self._preempted.pop(request.request_id, None)  # finished (or aborted) while preempted
        if meta is not None and meta.session_id in self._ending and not meta.prefetch:
            # The task ended while this call ran: it was the last one, whatever it said.
            self._ending.discard(meta.session_id)
            meta = dataclasses.replace(meta, final=True, pending_tool=None)
        step = meta is None or not meta.prefetch  # a prefetch is no step of the task
        if meta is not None and step:
            self._session_steps[meta.session_id] = self._session_steps.get(
                meta.session_id, 0) + 1
        if step:
            self._task_bookkeeping(request, meta)
        p_reuse = self._reuse_prob(meta)
        if meta is not None and step:
            self._observe_workflow(request, meta)
        ids = [i for group in self.kv_cache_manager.get_block_ids(request.request_id)
               for i in group]
        self.block_queue.set_reuse(ids, p_reuse)
        if meta is not None and request.block_hashes:
            REUSE_HINTS.set(request.block_hashes, p_reuse)  # the DRAM tier's WA-LRU reads it
        if (self.saga_config.ttl and meta is not None and meta.pending_tool is not None
                and not meta.final and request.status in _PINNABLE
                and self._request_blocks_can_be_freed(request)):
            self._pin(meta.session_id, meta.pending_tool,
                      self.kv_cache_manager.pop_blocks_for_free(request))
            return
        super()._free_request_blocks(request)

    def _task_bookkeeping(self, request: Any, meta: SagaRequestMeta | None) -> None:
        session = meta.session_id if meta is not None else request.request_id
        task_done = meta is None or meta.final
        if task_done and self.saga_queue is not None:
            self.saga_queue.on_task_done(session)
        if task_done and self.afs is not None and session in self._afs_sessions:
            self.afs.finish(session)
            self._afs_sessions.discard(session)
        if meta is not None and meta.final:
            self._session_steps.pop(session, None)
            self._last_tool.pop(session, None)

    def _pin(self, session_id: str, tool: str, blocks: list[Any]) -> None:
        now = self._now()
        ttl = self.ttl_policy.ttl(tool, self._pressure())
        pin = Pin(session_id, tool, blocks, pinned_at=now, expires_at=now + ttl)
        self._last_tool[session_id] = tool
        self.metrics.pins_created += 1
        old = self.pins.add(pin)
        if old is not None:
            self._release(old, ReleaseReason.REPLACED)
        cap = math.floor(self.saga_config.pin_cap_fraction * self.num_usable_blocks)
        while self.pins.pinned_blocks > cap:
            self._release(self.pins.pop(self._expected_back_last(now).session_id),
                          ReleaseReason.CAP)
        if ttl <= 0.0 and session_id in self.pins:
            self._release(self.pins.pop(session_id), ReleaseReason.EXPIRED)
        self._sync_gauges()

    def _expected_back_last(self, now: float) -> Pin:
        """Over the cap, the pin to give up: the one whose session is expected back last
        (``pin_return_eta`` from its tool's fitted latency; the newer pin on ties), so a new pin
        that would displace sessions about to return is refused instead."""
        return max(self.pins, key=lambda p: (
            pin_return_eta(self.tool_latency.latency(p.tool), max(now - p.pinned_at, 0.0)),
            p.seq))

    def _release(self, pin: Pin | None, reason: ReleaseReason) -> None:
        """Give a pin's block references back to vLLM (tail first, as vLLM frees)."""
        if pin is None:
            return
        p_reuse = (UNKNOWN_REUSE if reason is ReleaseReason.RETURNED
                   else self.saga_config.pending_tool_reuse)
        self.block_queue.set_reuse((b.block_id for b in pin.blocks if not b.is_null), p_reuse)
        self.block_pool.free_blocks(reversed(pin.blocks))
        self.metrics.on_pin_release(reason.value, pin.num_blocks)

    # -- public --------------------------------------------------------------------------------
    def release_expired_pins(self, now: float | None = None) -> int:
        """Release pins whose TTL ran out at ``now`` (default: the clock); returns how many.

        vLLM only calls ``schedule`` while requests exist, so an idle engine keeps expired pins
        until the next request; call this to return them sooner.
        """
        expired = self.pins.pop_expired(self._now() if now is None else now)
        for pin in expired:
            self._release(pin, ReleaseReason.EXPIRED)
        self._sync_gauges()
        return len(expired)

    def end_session(self, session_id: str) -> bool:
        """The session's task is over (its agent framework said so after the last call was
        sent): release its pin at once — the tool it was pinned for will never run — and drop
        its per-session state, learning the task's workflow without that phantom tool. A call
        of the session still in flight is treated as its final call. Returns whether a pin was
        released. Idempotent; call it from the thread that steps the engine.
        """
        pin = self.pins.pop(session_id)
        self._release(pin, ReleaseReason.ENDED)
        self._sync_gauges()
        if any(m is not None and m.session_id == session_id and not m.prefetch
               for m in self._meta.values()):
            self._ending.add(session_id)  # closed when that call finishes
            return pin is not None
        if self.saga_queue is not None:
            self.saga_queue.on_task_done(session_id)
        if self.afs is not None and session_id in self._afs_sessions:
            self.afs.finish(session_id)
            self._afs_sessions.discard(session_id)
        self._session_steps.pop(session_id, None)
        self._last_tool.pop(session_id, None)
        agent_type = self._agent_of.pop(session_id, None)
        if agent_type is not None:
            # The pending tool the last call was expected to end in never ran.
            self.hinter.finish(session_id, agent_type, pending_tool_ran=False)
        return pin is not None

    def session_tables(self) -> dict[str, int]:
        """Sizes of every per-session and per-request structure of this scheduler: all zero
        on an idle engine whose sessions ended (what a soak test checks for leaks)."""
        queue = self.saga_queue
        return {
            "pins": len(self.pins),
            "pin_heap": self.pins.heap_size,
            "pinned_blocks": self.pins.pinned_blocks,
            "requests": len(self.requests),
            "request_meta": len(self._meta),
            "preempted": len(self._preempted),
            "session_steps": len(self._session_steps),
            "last_tool": len(self._last_tool),
            "agent_of": len(self._agent_of),
            "ending": len(self._ending),
            "afs_sessions": len(self._afs_sessions),
            "hinter_sessions": len(self.hinter.active_sessions()),
            "waiting": len(self.waiting),
            "running": len(self.running),
            "queue_sessions": queue.session_count() if queue is not None else 0,
            "queue_active_tasks": queue.active_task_count() if queue is not None else 0,
        }

    def release_all_pins(self, reason: ReleaseReason = ReleaseReason.SHUTDOWN) -> int:
        """Release every pin; returns how many."""
        n = 0
        while len(self.pins):
            self._release(self.pins.pop_earliest(), reason)
            n += 1
        self._sync_gauges()
        return n

    def _sync_gauges(self) -> None:
        self.metrics.pinned_blocks = self.pins.pinned_blocks
        self.metrics.pinned_sessions = len(self.pins)

    def saga_stats(self) -> dict[str, Any]:
        """Counters of this scheduler (:meth:`SagaMetrics.as_dict`) plus the pool's state."""
        self._sync_gauges()
        stats = self.metrics.as_dict()
        stats["free_blocks"] = int(self.block_pool.get_num_free_blocks())
        stats["usable_blocks"] = self.num_usable_blocks
        stats["config"] = self.saga_config.to_dict()
        return stats

    def publish_metrics(self, registry: Any = None) -> None:
        """Mirror :meth:`saga_stats` into the ``saga_*`` prometheus metrics."""
        self._sync_gauges()
        publish(self.metrics, scheduler=str(id(self)), registry=registry)

    def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Pins hold blocks, and vLLM only resets a fully free pool: release them first."""
        self.release_all_pins()
        return bool(super().reset_prefix_cache(*args, **kwargs))

    def shutdown(self) -> None:
        """Release pins, record the final stats in the marker file if configured."""
        self.release_all_pins()
        if self.saga_config.marker_path:
            self._write_marker("shutdown")
        super().shutdown()


class SagaAsyncScheduler(SagaScheduler, AsyncScheduler):  # type: ignore[misc]
    """:class:`SagaScheduler` over vLLM's ``AsyncScheduler`` (for ``async_scheduling=True``).

    vLLM falls back to synchronous scheduling when a custom class derives from ``Scheduler``
    only; this variant keeps async scheduling (the default on CUDA builds). SAGA's overrides all
    call ``super()``, so the MRO puts vLLM's async bookkeeping under them unchanged.
    """


__all__ = [
    "VALIDATOR_CLS",
    "SagaAsyncScheduler",
    "SagaMetadataValidator",
    "SagaRequestQueue",
    "SagaScheduler",
    "tool_latency_source",
]
