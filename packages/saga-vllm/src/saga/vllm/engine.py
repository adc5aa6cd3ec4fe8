"""`SagaEngine`: an agent-session API over vLLM that fills SAGA's request metadata for the caller.

An agent framework knows which calls belong to one task, which tool a call ends in and how long
that tool took; the scheduler needs exactly these facts, but asking every caller to assemble
``SamplingParams.extra_args["saga"]`` by hand invites mistakes. A :class:`Session` records them
as the agent runs (``call`` → ``tool_started`` → ``tool_finished`` → ``call`` ...) and attaches
them to each request: session and tenant ids, the AEG node of the call (named the way
``saga.aeg`` infers nodes), the pending tool, the measured latency of the tool that just ran, the
task deadline and whether the call is the task's last. The tenant also becomes the prompt's
``cache_salt``, so one tenant's requests never hit another tenant's cached prefix.

Stock vLLM ignores ``extra_args``, so the same client code drives both the stock scheduler and
:class:`~saga.vllm.scheduler.SagaScheduler` — which is what makes the comparison fair.

Two front ends share one session model:

- :class:`SagaEngine` over ``vllm.LLM`` (sync): ``Session.call`` blocks; ``run_batch`` sends
  several sessions' calls as one batch; ``submit``/``step`` expose the engine's step loop.
- :class:`AsyncSagaEngine` (asyncio): over vLLM's ``AsyncLLM`` (engine core in its own process)
  or over an in-process ``vllm.LLM`` stepped by a pump task, so many sessions run as asyncio
  tasks (call → tool sleep → call) and their calls batch in the engine.

vLLM is imported lazily: importing this module (or the CLI that uses it) stays cheap.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saga.aeg.latency import ToolLatencyModel
from saga.vllm.session import (
    CallResult,
    Clock,
    SagaSessionError,
    _deadline,
    _end_request,
    _new_session_id,
    _result,
    _SessionState,
)

__all__ = [
    "AsyncSagaEngine",
    "AsyncSession",
    "Call",
    "CallResult",
    "SagaEngine",
    "SagaSessionError",
    "Session",
]


# --- sync ---------------------------------------------------------------------------------


class Session(_SessionState):
    """One agent task on a :class:`SagaEngine`; its context is the caller's token list."""

    def __init__(self, engine: SagaEngine, session_id: str, agent_type: str, tenant: str,
                 deadline_at: float | None) -> None:
        super().__init__(session_id, agent_type, tenant, deadline_at, engine.clock)
        self.engine = engine

    def call(self, prompt_token_ids: Sequence[int], max_tokens: int, *,
             pending_tool: str | None = None, final: bool = False) -> CallResult:
        """Run one LLM call (blocking). ``pending_tool``: the tool this call is expected to end
        in (SAGA keeps the session's KV through it); ``final``: the task's last call."""
        return self.engine.run_batch(
            [Call(self, prompt_token_ids, max_tokens, pending_tool, final)])[0]

    def end(self) -> bool:
        """The task is over although no call was marked ``final`` (the framework said so only
        after the last call): the engine releases the session's pin at once and forgets it.
        Returns whether the engine was told (False: the final call already ended it)."""
        if not self.close():
            return False
        self.engine.end_session(self.session_id, self.tenant)
        return True


@dataclass(frozen=True)
class Call:
    """One session's call, for :meth:`SagaEngine.run_batch` / :meth:`SagaEngine.submit`."""

    session: Session
    prompt_token_ids: Sequence[int]
    max_tokens: int
    pending_tool: str | None = None
    final: bool = False


class SagaEngine:
    """Session API over a ``vllm.LLM`` (or the keyword arguments to build one).

    Calls go through the engine's own step loop (``LLMEngine.add_request``/``step``), so calls
    submitted together run in one continuous batch and each gets its own latency.
    """

    def __init__(self, llm_or_kwargs: Any, *, clock: Clock = time.monotonic) -> None:
        if isinstance(llm_or_kwargs, Mapping):
            from vllm import LLM

            self.llm: Any = LLM(**dict(llm_or_kwargs))
        else:
            self.llm = llm_or_kwargs
        self.clock = clock
        self._pending: dict[str, tuple[Call, float]] = {}
        self._end_requests: set[str] = set()
        self._end_ids = itertools.count()

    def start_session(self, agent_type: str, tenant: str = "default",
                      deadline_s: float | None = None, *,
                      session_id: str | None = None) -> Session:
        """A new task of ``agent_type`` for ``tenant``; ``deadline_s`` is relative to now."""
        return Session(self, session_id or _new_session_id(agent_type), agent_type, tenant,
                       _deadline(self.clock, deadline_s))

    # The step loop --------------------------------------------------------------------
    def submit(self, call: Call) -> str:
        """Queue ``call`` in the engine; returns its request id (see :meth:`step`)."""
        s = call.session
        if s.engine is not self:
            raise SagaSessionError(f"session {s.session_id} belongs to another engine")
        request_id, prompt, params = s.begin_call(
            call.prompt_token_ids, call.max_tokens, call.pending_tool, call.final)
        try:
            self.llm.llm_engine.add_request(request_id, prompt, params)
        except BaseException:
            s.end_call(None, final=False)
            raise
        self._pending[request_id] = (call, self.clock())
        return request_id

    @property
    def has_pending(self) -> bool:
        """True while a submitted call has not finished."""
        return bool(self._pending)

    def step(self) -> list[tuple[str, CallResult]]:
        """One engine step; returns the calls that finished in it as ``(request_id, result)``."""
        done: list[tuple[str, CallResult]] = []
        outputs = self.llm.llm_engine.step()
        now = self.clock()
        for out in outputs:
            if out.finished:
                self._end_requests.discard(out.request_id)
            if not out.finished or out.request_id not in self._pending:
                continue
            call, submitted = self._pending.pop(out.request_id)
            result = _result(out, now - submitted)
            call.session.end_call(result, final=call.final)
            done.append((out.request_id, result))
        return done

    def fail_pending(self) -> list[Call]:
        """Forget every unfinished call (after an engine error) and free their sessions."""
        calls = [c for c, _ in self._pending.values()]
        if self._pending:
            # Best effort: the engine may already be broken.
            with contextlib.suppress(Exception):
                self.llm.llm_engine.abort_request(list(self._pending))
        for c in calls:
            c.session.end_call(None, final=False)
        self._pending.clear()
        return calls

    def run_batch(self, calls: Sequence[Call]) -> list[CallResult]:
        """Run several sessions' calls as one batch; results in the order of ``calls``."""
        ids: list[str] = []
        try:
            for c in calls:
                ids.append(self.submit(c))
            results: dict[str, CallResult] = {}
            while len(results) < len(ids):
                results.update(self.step())
        except BaseException:
            self.fail_pending()
            raise
        return [results[i] for i in ids]

    def end_session(self, session_id: str, tenant: str = "default") -> bool:
        """Tell the scheduler that ``session_id``'s task ended (see :meth:`Session.end`).

        In-process, ``SagaScheduler.end_session`` runs at once (True when it released a pin).
        With the engine core in another process a one-token ``final`` call of the session is
        queued instead; its core schedules it by itself (False: nothing known yet).
        """
        sched = self.scheduler
        end = getattr(sched, "end_session", None)
        if callable(end):
            return bool(end(session_id))
        if sched is not None:
            return False  # stock vLLM: nothing is pinned
        rid = f"{session_id}:end#{next(self._end_ids)}"
        prompt, params = _end_request(session_id, tenant)
        self.llm.llm_engine.add_request(rid, prompt, params)
        self._end_requests.add(rid)
        return False

    # Introspection ----------------------------------------------------------------------
    @property
    def scheduler(self) -> Any | None:
        """The engine's scheduler when the engine core runs in this process, else None."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        inner = getattr(core, "engine_core", None)
        return getattr(inner, "scheduler", None)

    def saga_stats(self) -> dict[str, Any] | None:
        """``SagaScheduler.saga_stats()`` of an in-process SAGA engine; None otherwise."""
        sched = self.scheduler
        stats = getattr(sched, "saga_stats", None)
        return dict(stats()) if callable(stats) else None

    def step_records(self) -> list[Any] | None:
        """The in-process scheduler's step log (:mod:`saga.vllm.steps`), oldest first; None
        when the engine was built without ``record_steps`` or its core runs elsewhere."""
        log = getattr(self.scheduler, "step_log", None)
        return None if log is None else list(log.snapshot())

    def shutdown(self) -> None:
        """Stop the engine core (frees its workers); the engine is unusable afterwards."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()


# --- asyncio ------------------------------------------------------------------------------


class AsyncSession(_SessionState):
    """One agent task on an :class:`AsyncSagaEngine`; ``await session.call(...)``."""

    def __init__(self, engine: AsyncSagaEngine, session_id: str, agent_type: str, tenant: str,
                 deadline_at: float | None) -> None:
        super().__init__(session_id, agent_type, tenant, deadline_at, engine.clock)
        self.engine = engine

    _prefetch_task: asyncio.Task[None] | None = None
    _prefetch_sent = False

    def tool_started(self, name: str) -> None:
        """A tool call began; with the engine's ``prefetch_quantile`` set, a prefetch is
        planned for when that share of this tool's calls have usually returned."""
        super().tool_started(name)
        delay = self.engine.prefetch_delay(name)
        if delay is not None:
            self._prefetch_task = asyncio.get_running_loop().create_task(
                self._prefetch_later(name, delay))

    def tool_finished(self) -> float:
        """The running tool ended: a planned prefetch that has not started is dropped (one
        under way finishes: its blocks are half loaded), the duration trains the plan."""
        tool = self._tool
        task, self._prefetch_task = self._prefetch_task, None
        if task is not None and not task.done() and not self._prefetch_sent:
            task.cancel()
        self._prefetch_sent = False
        duration = super().tool_finished()
        if tool is not None:
            self.engine.tool_latency.observe(tool, max(duration, 1e-6))
        return duration

    async def _prefetch_later(self, tool: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._tool != tool:
            return
        self._prefetch_sent = True
        try:
            await self.prefetch()
        except Exception:  # best effort: the next call loads or recomputes what is missing
            self.engine.prefetch_failures += 1

    async def prefetch(self) -> CallResult:
        """Bring the session's context back into device memory while its tool runs: from the
        DRAM tier when it holds the blocks, else by recomputing them — off the next call's
        critical path. The blocks are pinned again for the running tool."""
        request_id, prompt, params = self.prefetch_request()
        self.engine.prefetches += 1
        return await self.engine._run(request_id, prompt, params)

    async def end(self) -> bool:
        """The task is over although no call was marked ``final``: see :meth:`Session.end`
        (a planned prefetch is dropped)."""
        task, self._prefetch_task = self._prefetch_task, None
        if task is not None and not task.done():
            task.cancel()
        if not self.close():
            return False
        await self.engine.end_session(self.session_id, self.tenant)
        return True

    async def call(self, prompt_token_ids: Sequence[int], max_tokens: int, *,
                   pending_tool: str | None = None, final: bool = False) -> CallResult:
        """Run one LLM call; other sessions' calls batch with it in the engine."""
        request_id, prompt, params = self.begin_call(
            prompt_token_ids, max_tokens, pending_tool, final)
        result: CallResult | None = None
        try:
            result = await self.engine._run(request_id, prompt, params)
        finally:
            self.end_call(result, final=final)
        return result


class AsyncSagaEngine:
    """Asyncio session API over vLLM's ``AsyncLLM`` or an in-process ``vllm.LLM``.

    With ``AsyncLLM`` the engine core runs in its own process and steps by itself. With a
    ``vllm.LLM`` (or a :class:`SagaEngine`) a pump task steps the in-process engine while calls
    are outstanding, yielding to the event loop between steps so tool sleeps and new calls
    interleave with decoding — one process, and the scheduler stays inspectable.
    """

    def __init__(self, engine: Any, *, clock: Clock = time.monotonic,
                 prefetch_quantile: float | None = None, prefetch_min_samples: int = 3) -> None:
        if prefetch_quantile is not None and not 0.0 < prefetch_quantile < 1.0:
            raise SagaSessionError(
                f"prefetch_quantile must be in (0, 1) or None, got {prefetch_quantile!r}")
        self.clock = clock
        self.prefetch_quantile = prefetch_quantile
        self.prefetch_min_samples = prefetch_min_samples
        self.tool_latency = ToolLatencyModel()
        self.prefetches = 0
        self.prefetch_failures = 0
        self._ids = itertools.count()
        self._sync: SagaEngine | None = None
        self.async_llm: Any | None = None
        if isinstance(engine, SagaEngine):
            self._sync = engine
        elif hasattr(engine, "llm_engine"):
            self._sync = SagaEngine(engine, clock=clock)
        elif hasattr(engine, "generate"):
            self.async_llm = engine
        else:
            raise SagaSessionError(
                "AsyncSagaEngine needs a vllm AsyncLLM, a vllm.LLM or a SagaEngine, got "
                f"{type(engine).__name__}")
        self._futures: dict[str, asyncio.Future[CallResult]] = {}
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    def from_engine_args(cls, kwargs: Mapping[str, Any], *, clock: Clock = time.monotonic,
                         in_process: bool = False, prefetch_quantile: float | None = None
                         ) -> AsyncSagaEngine:
        """Build the engine from ``vllm.LLM`` keyword arguments: ``AsyncLLM`` (own process),
        or with ``in_process`` a stepped ``vllm.LLM`` (set ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
        for the engine core to live in this process too)."""
        if in_process:
            from vllm import LLM

            return cls(LLM(**dict(kwargs)), clock=clock, prefetch_quantile=prefetch_quantile)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return cls(AsyncLLM.from_engine_args(AsyncEngineArgs(**dict(kwargs))), clock=clock,
                   prefetch_quantile=prefetch_quantile)

    def prefetch_delay(self, tool: str) -> float | None:
        """Seconds after ``tool`` starts at which to prefetch: the ``prefetch_quantile`` of its
        latency fitted from the durations this engine's sessions reported; None (no prefetch)
        when prefetching is off or fewer than ``prefetch_min_samples`` were seen."""
        if self.prefetch_quantile is None:
            return None
        if self.tool_latency.n_observations(tool) < self.prefetch_min_samples:
            return None
        return self.tool_latency.latency(tool).quantile(self.prefetch_quantile)

    @property
    def sync_engine(self) -> SagaEngine | None:
        """The stepped in-process engine (None over ``AsyncLLM``)."""
        return self._sync

    def start_session(self, agent_type: str, tenant: str = "default",
                      deadline_s: float | None = None, *,
                      session_id: str | None = None) -> AsyncSession:
        """A new task of ``agent_type`` for ``tenant``; ``deadline_s`` is relative to now."""
        return AsyncSession(self, session_id or _new_session_id(agent_type), agent_type, tenant,
                            _deadline(self.clock, deadline_s))

    async def _run(self, request_id: str, prompt: Any, params: Any) -> CallResult:
        if self.async_llm is None and self._sync is None:
            raise SagaSessionError("the engine was shut down")
        if self.async_llm is not None:
            return await self._run_async_llm(f"{request_id}#{next(self._ids)}", prompt, params)
        assert self._sync is not None
        sync = self._sync
        rid = f"{request_id}#{next(self._ids)}"
        submitted = self.clock()
        sync.llm.llm_engine.add_request(rid, prompt, params)
        future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self._futures[rid] = future
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._pump_steps())
        try:
            result = await future
        except asyncio.CancelledError:
            self._futures.pop(rid, None)
            sync.llm.llm_engine.abort_request([rid])
            raise
        return CallResult(result.output_token_ids, result.num_cached_tokens,
                          result.prompt_tokens, self.clock() - submitted)

    async def _pump_steps(self) -> None:
        """Step the in-process engine while calls are outstanding, yielding between steps."""
        assert self._sync is not None
        engine = self._sync.llm.llm_engine
        while self._futures:
            try:
                outputs = engine.step()
            except Exception as exc:
                for fut in self._futures.values():
                    if not fut.done():
                        fut.set_exception(exc)
                self._futures.clear()
                return
            for out in outputs:
                if not out.finished:
                    continue
                waiter = self._futures.pop(out.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(_result(out, 0.0))
            await asyncio.sleep(0)

    async def _run_async_llm(self, rid: str, prompt: Any, params: Any) -> CallResult:
        assert self.async_llm is not None
        submitted = self.clock()
        final: Any = None
        async for out in self.async_llm.generate(prompt, params, request_id=rid):
            final = out
        if final is None:
            raise SagaSessionError(f"request {rid}: the engine returned no output")
        return _result(final, self.clock() - submitted)

    async def end_session(self, session_id: str, tenant: str = "default") -> bool:
        """Tell the scheduler ``session_id``'s task ended (see :meth:`SagaEngine.end_session`);
        over ``AsyncLLM`` the one-token ``final`` call is awaited."""
        if self._sync is not None:
            return self._sync.end_session(session_id, tenant)
        if self.async_llm is None:
            raise SagaSessionError("the engine was shut down")
        prompt, params = _end_request(session_id, tenant)
        await self._run_async_llm(f"{session_id}:end#{next(self._ids)}", prompt, params)
        return False

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix block (between benchmark phases); True when it did."""
        if self.async_llm is not None:
            return bool(await self.async_llm.reset_prefix_cache())
        assert self._sync is not None
        return bool(self._sync.llm.reset_prefix_cache())

    def saga_stats(self) -> dict[str, Any] | None:
        """SAGA scheduler stats when the scheduler runs in this process, else None."""
        return self._sync.saga_stats() if self._sync is not None else None

    def step_records(self) -> list[Any] | None:
        """The scheduler's step log when it runs in this process (see
        :meth:`SagaEngine.step_records`), else None."""
        return self._sync.step_records() if self._sync is not None else None

    def shutdown(self) -> None:
        """Stop the engine (and its engine-core process, if any)."""
        if self.async_llm is not None:
            # Drop the reference too: AsyncLLM.__del__ shuts down again, which fails noisily
            # when it runs at interpreter exit.
            llm, self.async_llm = self.async_llm, None
            llm.shutdown()
            del llm
        elif self._sync is not None:
            self._sync.shutdown()
