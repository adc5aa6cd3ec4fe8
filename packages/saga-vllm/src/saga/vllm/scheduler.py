"""`SagaScheduler`: a SAGA preset inside vLLM V1's scheduler, through subclassing only.

Load it with ``vllm.LLM(..., scheduler_cls="saga.vllm.scheduler.SagaScheduler",
additional_config={"saga": SagaSchedulerConfig.from_preset("saga").to_dict()})`` (see
:func:`saga.vllm.models.vllm_engine_kwargs`), or ``vllm serve ... --scheduler-cls
saga.vllm.scheduler.SagaScheduler`` with ``SAGA_PRESET=saga`` in the environment. vLLM builds
the scheduler itself — in the engine-core process when multiprocessing is on — so the config
travels as plain data (:mod:`saga.vllm.config`).

The policies are the preset's (:func:`~saga.vllm.policies.build_scheduler_policies`: the
bundle's TTL policy and ``bundle.engine()``'s eviction, queue and fairness), the same objects
the simulator builds. Where each hooks in (vLLM 0.32):

- Eviction: the block pool's ``free_block_queue`` is replaced by
  :class:`~saga.vllm.block_queue.WALRUFreeBlockQueue` (vLLM picks victims only in its
  ``popleft_n``). WA-LRU ranks by its score with the policy object's weights, KVFlow by the
  steps-to-execution hint; ``lru``, ``prefix_lru`` and ``radix_lru`` run on vLLM's native order
  (LRU by free time, a request's tail blocks first: the order those policies model).
  ``saga_stats()["eviction_enacted"]`` says which ran. Before a finished request's blocks go
  back, the scheduler stamps their hints (``_free_request_blocks``).
- Tool-call pins (the preset's TTL layer): ``_free_request_blocks`` is the narrowest seam that
  sees every finished request's blocks (direct and deferred frees both pass through it;
  preemption too, which is left alone); see :mod:`saga.vllm.pinning`.
- Queue order and fairness: ``self.waiting`` (vLLM's ``RequestQueue`` abstraction) is replaced by
  :class:`~saga.vllm.request_queue.SagaRequestQueue` unless the order is FCFS without fairness,
  where vLLM's own deque stays (so ``vllm_apc`` is the stock scheduler).
- DRAM-tier hints: the engine's own :class:`~saga.vllm.offload.OffloadReuseHints` table, bound
  to the WA-LRU policy of this scheduler's KV connector.
- Predicted next use (``eta``): each call's arrival and finish feed the free-block queue's
  value ranking and the ``saga_eta`` DRAM tier (:mod:`saga.vllm.next_use`).
- Step log: with ``additional_config["saga_step_log"]`` set, every step's work and times go
  to a :class:`~saga.vllm.steps.StepLog` (``schedule`` entry to ``update_from_output`` exit).
- Malformed metadata: :class:`~saga.vllm.validator.SagaMetadataValidator` rejects it in the
  front end; the scheduler itself degrades a malformed request it still receives to a plain one
  and counts it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saga.policy.pins import PinTable, ReleaseReason
from saga.policy.queueing import QueuedRequest
from saga.policy.workflow import SessionHinter
from saga.vllm.block_queue import WALRUFreeBlockQueue
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaMetadataError, SagaRequestMeta, parse_saga_meta
from saga.vllm.metrics import SagaMetrics, publish
from saga.vllm.next_use import NextUseMixin
from saga.vllm.offload import OffloadReuseHints, bind_reuse_hints
from saga.vllm.pinning import PinningMixin
from saga.vllm.policies import build_scheduler_policies
from saga.vllm.request_queue import SagaRequestQueue
from saga.vllm.steps import StepLog, StepLogging, step_log_for
from saga.vllm.task_tracking import TaskTrackingMixin
from saga.vllm.validator import VALIDATOR_CLS, SagaMetadataValidator
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

logger = logging.getLogger(__name__)

_PINNABLE = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)


class SagaScheduler(TaskTrackingMixin, NextUseMixin, PinningMixin, StepLogging,
                    Scheduler):  # type: ignore[misc]
    """vLLM's scheduler running a preset's eviction, TTL pins, queue order and fairness.

    Every part follows :class:`SagaSchedulerConfig` (``effective_preset()``); with the stock
    preset ``vllm_apc`` this is vLLM's scheduler (the only difference is bookkeeping for
    :meth:`saga_stats`). ``clock`` (seconds, ``time.monotonic`` by default) may be replaced,
    e.g. by tests, before requests arrive. ``policies`` (also ``bundle``, ``engine_policies``,
    ``ttl_policy``, ``afs``) holds the policy objects.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = SagaSchedulerConfig.resolve(self.vllm_config)
        self.saga_config = cfg
        self.policies = build_scheduler_policies(cfg)
        self.bundle = self.policies.bundle
        self.engine_policies = self.policies.engine
        self.ttl_policy = self.policies.ttl
        self.afs = self.policies.fairness
        self.clock: Callable[[], float] = time.monotonic
        self.metrics = SagaMetrics()
        self.pins = PinTable()
        self._init_session_state()
        self._afs_epoch_at = -math.inf
        self._preempted: dict[str, int] = {}  # request id -> tokens computed when preempted
        self._step_marks: dict[int, tuple[float, int]] = {}  # id(output) -> (time, tokens)
        self.hinter = SessionHinter()  # AEGs per agent type, learned from the tasks served here
        self.block_pool: Any = self.kv_cache_manager.block_pool
        self.num_usable_blocks: int = int(self.block_pool.num_gpu_blocks) - 1
        self.block_queue = WALRUFreeBlockQueue.replace_in(
            self.block_pool, self._now, **{"walru": False, **self.policies.enactment.queue_kwargs},
            block_size=self.block_size, on_evict=self.metrics.on_evict)
        self.step_log: StepLog | None = step_log_for(self.vllm_config)
        self.saga_queue: SagaRequestQueue | None = None
        if not self.policies.native_queue:
            self.saga_queue = SagaRequestQueue(self.policies.queue, self._describe, self.afs,
                                               self._now)
            self.waiting = self.saga_queue
        self.reuse_hints = OffloadReuseHints()
        self.offload_policies = bind_reuse_hints(self.connector, self.reuse_hints)
        self._init_next_use()
        self._check_prefix_caching()
        if cfg.marker_path:
            self._write_marker("started")

    def _check_prefix_caching(self) -> None:
        """The preset's prefix caching is an engine option (``enable_prefix_caching``) the
        scheduler cannot change: say so when they differ."""
        enabled = bool(getattr(self.cache_config, "enable_prefix_caching", True))
        if enabled != self.policies.preset.prefix_caching:
            logger.warning("preset %s wants prefix caching %s but the engine has it %s; start "
                           "vLLM with enable_prefix_caching=%s", self.policies.preset.name,
                           "on" if self.policies.preset.prefix_caching else "off",
                           "on" if enabled else "off", self.policies.preset.prefix_caching)

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
        """The policy queue's view of a vLLM request (session progress, tenant, task start)."""
        meta = self._meta.get(request.request_id)
        session = meta.session_id if meta is not None else request.request_id
        return QueuedRequest(
            request_id=request.request_id, session_id=session,
            arrival_s=float(request.arrival_time),
            steps_done=self._session_steps.get(session, 0),
            tenant=meta.tenant_id if meta is not None else "default",
            task_start_s=self._task_start.get(session))

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
            step = not (meta is not None and meta.prefetch)
            if meta is not None and meta.tool_latency_s is not None:
                tool = self._last_tool.get(meta.session_id)
                if tool is not None and self.ttl_policy is not None:
                    self.ttl_policy.observe(tool, meta.tool_latency_s)
            if step and self.saga_queue is not None:
                session = meta.session_id if meta is not None else request.request_id
                self._task_start.setdefault(session, float(request.arrival_time))
            self._next_use_arrival(meta)
            if self.afs is not None and step:
                self._afs_track(request, meta)
        super().add_request(request)

    # -- scheduling --------------------------------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        """vLLM's step, with pins expired/relieved before and released/accounted after."""
        start = time.monotonic()
        now = self._now()
        if self.afs is not None and now - self._afs_epoch_at >= self.afs.epoch_s:
            self.afs.step_epoch(now)
            self._afs_epoch_at = now
        if len(self.pins):
            self.release_expired_pins(now)
            self._relieve_pressure()
        out = super().schedule(*args, **kwargs)
        self._count_resumed(out)
        for new in out.scheduled_new_reqs:
            self._on_scheduled_new(new, now)
        if self.afs is not None:
            for rid, n in out.num_scheduled_tokens.items():
                session = self._session(rid)
                if session in self._afs_sessions:
                    self.afs.record_service(session, float(n))
        if len(self.pins) and (out.preempted_req_ids or self._head_blocked()):
            self._relieve_pressure(force=True)
        self._sync_gauges()
        self._step_marks[id(out)] = (time.monotonic(), int(out.total_num_scheduled_tokens))
        if self.step_log is not None:
            self.step_log.scheduled(start, out, self.requests)
        return out

    def _on_scheduled_new(self, new: Any, now: float) -> None:
        req = self.requests.get(new.req_id)
        if req is None:
            return
        if new.req_id in self._preempted:  # a resumed request (vLLM's v2 model runner)
            self.metrics.on_resume(self._preempted.pop(new.req_id), int(new.num_computed_tokens))
            return
        self.metrics.on_prefill(int(req.num_prompt_tokens), int(new.num_computed_tokens))
        self._observe_queue_delay(req)
        if self.saga_queue is not None:
            self._started_at.setdefault(new.req_id, now)
        meta = self._meta.get(new.req_id)
        if meta is not None and meta.session_id in self.pins:
            # The next call holds its own references now; the pin has done its job.
            self._release(self.pins.pop(meta.session_id), ReleaseReason.RETURNED)

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        """vLLM's output processing, after timing the step for the TTL's reload estimate."""
        mark = self._step_marks.pop(id(scheduler_output), None)
        if mark is not None:
            self._observe_step(time.monotonic() - mark[0], mark[1])
        if len(self._step_marks) > 8:  # outputs vLLM never processed (e.g. an aborted step)
            self._step_marks.clear()
        return super().update_from_output(scheduler_output, model_runner_output)

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

    # -- freeing and pinning -----------------------------------------------------------------------
    def _free_request_blocks(self, request: Any) -> None:
        """Stamp workflow hints; pin a finished tool-calling request's blocks instead of
        freeing them (the seam vLLM routes every finished request's blocks through)."""
        if not request.is_finished():
            # Preemption: the request comes back, vLLM frees its blocks as usual.
            super()._free_request_blocks(request)
            return
        meta = self._finish_request(request)
        ids = [i for group in self.kv_cache_manager.get_block_ids(request.request_id)
               for i in group]
        p_reuse = self._reuse_prob(meta)
        self.block_queue.set_reuse(ids, p_reuse)
        if self.block_queue.steps:
            self.block_queue.set_steps(ids, self._steps_to_exec(meta))
        self._next_use_finished(request, meta, ids, p_reuse)
        if meta is not None and not meta.prefetch:
            self._observe_workflow(request, meta)
        if meta is not None and request.block_hashes:
            self.reuse_hints.set(request.block_hashes, p_reuse)  # the DRAM tier's WA-LRU
        if (self.ttl_policy is not None and meta is not None and meta.pending_tool is not None
                and not meta.final and request.status in _PINNABLE
                and self._request_blocks_can_be_freed(request)):
            self._last_tool[meta.session_id] = meta.pending_tool
            self._pin(meta.session_id, meta.pending_tool,
                      self.kv_cache_manager.pop_blocks_for_free(request), int(request.num_tokens))
            return
        super()._free_request_blocks(request)

    def _finish_request(self, request: Any) -> SagaRequestMeta | None:
        """Close a finished request's bookkeeping; returns its metadata (an ended session's
        call in flight becomes its final call)."""
        rid = request.request_id
        meta = self._meta.pop(rid, None)
        self._preempted.pop(rid, None)  # finished (or aborted) while preempted
        if self.saga_queue is not None:
            started = self._started_at.pop(rid, None)
            self.saga_queue.on_finished(rid, None if started is None else self._now() - started)
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
        return meta

    # -- stats and lifecycle -----------------------------------------------------------------------
    def saga_stats(self) -> dict[str, Any]:
        """Counters of this scheduler (:meth:`SagaMetrics.as_dict`), the pool's state, the
        preset that runs and how its eviction is enacted."""
        self._sync_gauges()
        stats = self.metrics.as_dict()
        stats["free_blocks"] = int(self.block_pool.get_num_free_blocks())
        stats["usable_blocks"] = self.num_usable_blocks
        stats["config"] = self.saga_config.to_dict()
        stats["preset"] = self.policies.preset.name
        stats["eviction_enacted"] = self.policies.enactment.mode
        stats["prefix_caching"] = bool(getattr(self.cache_config, "enable_prefix_caching", True))
        stats["queue_delay_ema_s"] = self.queue_delay_ema_s
        stats["token_time_ema_s"] = self.token_time_ema_s
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
]
