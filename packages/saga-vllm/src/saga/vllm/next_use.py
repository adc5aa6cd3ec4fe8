"""How :class:`~saga.vllm.scheduler.SagaScheduler` feeds predicted next use to both KV tiers.

Under the ``eta`` eviction policy the device pool's free-block queue ranks by a
:class:`~saga.vllm.eta_rank.ValueRanker` over the policy object's estimator, and a DRAM tier
under ``saga_eta`` by its own estimator (:class:`~saga.vllm.offload_eta.ETACachePolicy`). Both
learn the same events from the scheduler, which alone sees sessions:

- a call arrives (``add_request``): its session's KV is wanted now;
- a call finishes (``_free_request_blocks``): the cached blocks it read, head first, with their
  hashes; its session, the tool it now waits on, its reuse probability, whether it was the last;
- a session ends without a call in flight (``end_session``).

A prefetch (a DRAM reload during a tool call) is no call of the task and teaches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from saga.vllm.block_queue import WALRUFreeBlockQueue
from saga.vllm.eta_rank import ValueRanker
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.offload_eta import ETACachePolicy, NextUseFeed, bind_next_use


class NextUseMixin:
    """The next-use half of :class:`~saga.vllm.scheduler.SagaScheduler`."""

    block_queue: WALRUFreeBlockQueue
    connector: Any
    block_size: int
    queue_delay_ema_s: float

    if TYPE_CHECKING:  # the host scheduler's
        def _now(self) -> float: ...

    def _init_next_use(self) -> None:
        """The device ranker (None unless ``eta``) and the engine's feed to its DRAM tier."""
        self.value_ranker: ValueRanker | None = self.block_queue.ranker
        self.next_use_feed = NextUseFeed(self._now, self.block_size)
        self.eta_offload_policies: list[ETACachePolicy] = bind_next_use(
            self.connector, self.next_use_feed)

    @property
    def _next_use_fed(self) -> bool:
        return self.value_ranker is not None or bool(self.eta_offload_policies)

    def _next_use_arrival(self, meta: SagaRequestMeta | None) -> None:
        """A call of a session arrived."""
        if meta is None or meta.prefetch or not self._next_use_fed:
            return
        now = self._now()
        if self.value_ranker is not None:
            self.value_ranker.call_started(meta.session_id, now)
        self.next_use_feed.call_started(meta.session_id, now)

    def _next_use_finished(self, request: Any, meta: SagaRequestMeta | None,
                           block_ids: Sequence[int], reuse_prob: float) -> None:
        """A call finished: its cached blocks (the hashed head of ``block_ids``) and session."""
        if (meta is not None and meta.prefetch) or not self._next_use_fed:
            return
        hashes = list(request.block_hashes or ())
        blocks = self.block_queue.block_by_id
        n = 0
        while (n < min(len(hashes), len(block_ids))
               and blocks[block_ids[n]].block_hash is not None):
            n += 1
        kw: dict[str, Any] = {}
        if meta is not None:
            kw = {"session_id": meta.session_id, "pending_tool": meta.pending_tool,
                  "reuse_prob": reuse_prob, "final": meta.final, "agent_type": meta.agent_type}
        now = self._now()
        # A returning call waits this long in the queue before it reads its KV.
        delay = max(float(self.queue_delay_ema_s), 0.0)
        self.next_use_feed.set_queue_delay(delay)
        if self.value_ranker is not None:
            self.value_ranker.estimator.set_queue_delay(delay)
            self.value_ranker.observe_request(block_ids[:n], [hash(h) for h in hashes[:n]],
                                              now, **kw)
        self.next_use_feed.observe(hashes, now, **kw)

    def _next_use_ended(self, session_id: str) -> None:
        """A session ended with no call in flight."""
        if not self._next_use_fed:
            return
        now = self._now()
        if self.value_ranker is not None:
            self.value_ranker.session_ended(session_id, now)
        self.next_use_feed.session_ended(session_id, now)


__all__ = ["NextUseMixin"]
