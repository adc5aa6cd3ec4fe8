"""Per-step records of the engine: what one scheduler step ran and how long it took.

What a simulator of the engine needs to be configured as it: a step-time model is fitted to
``(prefill tokens, decode sequences, context) → seconds`` samples, one per engine step. A
:class:`StepLog` is filled by the scheduler (``SagaScheduler``, or
:class:`StepRecordingScheduler` for stock vLLM) when the engine is built with
``additional_config={STEP_LOG_KEY: capacity}``; without it nothing is recorded and the
scheduler does no extra work. The log is a ring buffer of ``capacity`` records.

A record's times are ``time.monotonic`` stamps taken in the engine core: ``start_s`` when
``schedule`` is entered, ``scheduled_s`` when it returns, ``end_s`` when ``update_from_output``
of the same step returns (model execution and output bookkeeping in between). With vLLM's
synchronous scheduling (the in-process engine of ``saga vllm compare``) steps run one after
the other, so the time from one record's ``start_s`` to the next one's is the engine's period
while it stays busy (``busy_after``). With async scheduling vLLM schedules step ``n + 1`` before
step ``n``'s output is processed: records are still matched to their own output, but their
spans overlap and do not add up to wall time.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

STEP_LOG_KEY = "saga_step_log"
"""``additional_config`` key: the ring buffer's capacity in steps (0 or absent: off)."""

__all__ = [
    "STEP_LOG_KEY",
    "StepLog",
    "StepLogging",
    "StepRecord",
    "StepRecordingScheduler",
    "step_log_for",
]


@dataclass(frozen=True)
class StepRecord:
    """One engine step: its work and its timestamps (seconds, ``time.monotonic``).

    ``prefill_tokens`` are prompt (or recomputed) tokens computed in the step by
    ``prefill_seqs`` requests whose KV already held ``prefill_context`` tokens before it;
    ``decode_seqs`` requests generated one token each over ``decode_context`` tokens of KV.
    ``busy_after``: requests were still unfinished when the step ended (the next step follows
    at once), so ``next.start_s - start_s`` is this step's period.
    """

    start_s: float
    scheduled_s: float
    end_s: float
    prefill_tokens: int
    prefill_seqs: int
    prefill_context: int
    decode_seqs: int
    decode_context: int
    busy_after: bool

    @property
    def duration_s(self) -> float:
        """From ``schedule`` entered to the step's output processed."""
        return self.end_s - self.start_s


@dataclass
class _Pending:
    output: Any
    start_s: float
    scheduled_s: float
    work: tuple[int, int, int, int, int]


class StepLog:
    """A bounded log of :class:`StepRecord` (the oldest are dropped past ``capacity``)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"StepLog capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.records: collections.deque[StepRecord] = collections.deque(maxlen=capacity)
        self.total = 0
        self._pending: collections.deque[_Pending] = collections.deque()

    def scheduled(self, start_s: float, output: Any, requests: Mapping[str, Any]) -> None:
        """``schedule`` (entered at ``start_s``) returned ``output``; note the step's work."""
        if not output.total_num_scheduled_tokens:
            return
        pre_tok = pre_seqs = pre_ctx = dec = dec_ctx = 0
        for rid, n in output.num_scheduled_tokens.items():
            req = requests.get(rid)
            if req is None or n <= 0:
                continue
            # vLLM advances num_computed_tokens before schedule() returns.
            before = int(req.num_computed_tokens) - int(n)
            if n == 1 and before >= int(req.num_prompt_tokens):
                dec += 1
                dec_ctx += before
            else:
                pre_tok += int(n)
                pre_seqs += 1
                pre_ctx += before
        self._pending.append(_Pending(output, start_s, time.monotonic(),
                                      (pre_tok, pre_seqs, pre_ctx, dec, dec_ctx)))

    def finished(self, output: Any, busy_after: bool) -> None:
        """``update_from_output`` of the step that ``schedule`` returned as ``output`` is done."""
        while self._pending:
            p = self._pending.popleft()
            if p.output is output:
                pre_tok, pre_seqs, pre_ctx, dec, dec_ctx = p.work
                self.records.append(StepRecord(p.start_s, p.scheduled_s, time.monotonic(), pre_tok,
                                               pre_seqs, pre_ctx, dec, dec_ctx, busy_after))
                self.total += 1
                return
        # A step that scheduled nothing (never pending): nothing to record.

    def snapshot(self) -> list[StepRecord]:
        """The records kept, oldest first."""
        return list(self.records)

    def clear(self) -> None:
        """Forget every record (e.g. after a warm-up)."""
        self.records.clear()


def step_log_for(vllm_config: Any) -> StepLog | None:
    """The step log asked for by ``additional_config[STEP_LOG_KEY]``, else None (off)."""
    additional = getattr(vllm_config, "additional_config", None)
    if not isinstance(additional, Mapping):
        return None
    capacity = additional.get(STEP_LOG_KEY)
    if not capacity:
        return None
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"additional_config[{STEP_LOG_KEY!r}] must be a step count >= 0, "
                         f"got {capacity!r}")
    return StepLog(capacity)


class StepLogging:
    """The step-log hooks a scheduler shares: a record closed when its step's output has been
    processed. The scheduler sets ``step_log`` (``step_log_for``) and notes ``scheduled`` in its
    own ``schedule``, where it decides what the step's time includes."""

    step_log: StepLog | None = None

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        """vLLM's output processing; closes the step's record in the step log (if on)."""
        base: Any = super()
        me: Any = self
        result = base.update_from_output(scheduler_output, model_runner_output)
        if self.step_log is not None:
            self.step_log.finished(scheduler_output, me.get_num_unfinished_requests() > 0)
        return result


class StepRecordingScheduler(StepLogging, Scheduler):  # type: ignore[misc]
    """vLLM's stock scheduler plus a :class:`StepLog`; nothing else differs.

    For measuring stock vLLM's step times beside ``SagaScheduler``'s (which records the same
    way); load it with ``scheduler_cls="saga.vllm.steps.StepRecordingScheduler"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_log: StepLog | None = step_log_for(self.vllm_config)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        """vLLM's step, its work and start noted in the log."""
        start = time.monotonic()
        out = super().schedule(*args, **kwargs)
        if self.step_log is not None:
            self.step_log.scheduled(start, out, self.requests)
        return out
