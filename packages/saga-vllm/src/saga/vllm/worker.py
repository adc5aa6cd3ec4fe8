"""A real vLLM engine behind the engine protocol a coordinator's workers host.

:class:`VllmEngine` implements :class:`saga.policy.engine.Engine` with SAGA's scheduler inside an
in-process vLLM engine stepped by asyncio; :class:`VllmEngineFactory` builds one where it runs
(in a Ray worker actor: it is pickled there, so it holds only a path and numbers);
:func:`vllm_engine_factory` checks the model (``tiny``, ``small`` or a local directory) before
any worker starts. vLLM is imported only when an engine is built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.policy.engine import EngineCall, EngineReport, EngineResult
from saga.policy.errors import SagaConfigError
from saga.vllm.models import (
    TINY_LLAMA,
    ModelShape,
    kv_bytes_for_blocks,
    resolve_model,
    scoped_env,
    vllm_engine_kwargs,
)

__all__ = ["ENGINE_PRESET", "VllmEngine", "VllmEngineFactory", "vllm_engine_factory"]

ENGINE_PRESET = "saga_no_afs"
"""The preset each worker's scheduler runs, as ``saga vllm compare``'s SAGA engine: WA-LRU,
tool-call TTL pins and the hybrid queue inside the engine; AFS is opt-in."""


class VllmEngine:
    """A real vLLM engine (in-process, stepped by asyncio) behind the worker's engine protocol.

    Each coordinator session becomes an ``AsyncSession`` of
    :class:`~saga.vllm.engine.AsyncSagaEngine`, so the request metadata SAGA's scheduler reads
    (session, tenant, AEG node, pending tool, tool latency, deadline) is filled by the same code
    as everywhere else. The tool clock runs between a call that ends in a tool and the session's
    next call on this worker.
    """

    def __init__(self, engine_kwargs: dict[str, Any]) -> None:
        from saga.vllm.engine import AsyncSagaEngine

        with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
            self.engine = AsyncSagaEngine.from_engine_args(engine_kwargs, in_process=True)
        self.slots = int(engine_kwargs.get("max_num_seqs", 16))
        self._sessions: dict[str, Any] = {}
        self._in_tool: set[str] = set()
        self._running = 0
        self._idle_since: float | None = time.monotonic()
        self._step_time = 0.0

    async def call(self, call: EngineCall) -> EngineResult:
        """Run one call of the session (started on its first call here)."""
        session = self._sessions.get(call.session_id)
        if session is None:
            session = self.engine.start_session(call.agent_type, call.tenant_id,
                                                call.deadline_s, session_id=call.session_id)
            self._sessions[call.session_id] = session
        if call.session_id in self._in_tool:
            self._in_tool.discard(call.session_id)
            session.tool_finished()
        self._running += 1
        self._idle_since = None
        try:
            res = await session.call(list(call.prompt_token_ids), call.max_tokens,
                                     pending_tool=call.pending_tool, final=call.final)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle_since = time.monotonic()
        self._step_time = 0.8 * self._step_time + 0.2 * res.latency_s
        if call.final:
            self._sessions.pop(call.session_id, None)
        elif call.pending_tool:
            session.tool_started(call.pending_tool)
            self._in_tool.add(call.session_id)
        return EngineResult(list(res.output_token_ids), res.num_cached_tokens,
                            res.prompt_tokens, res.latency_s)

    def report(self) -> EngineReport:
        """Load and KV pressure from vLLM's own scheduler (in this process); waiting sessions
        are not offered to the stealer, since a call queued inside vLLM cannot be handed back."""
        idle = -1.0 if self._idle_since is None else time.monotonic() - self._idle_since
        load, pressure = self._running / self.slots, 0.0
        sync = self.engine.sync_engine
        sched = sync.scheduler if sync is not None else None
        if sched is not None:
            running, waiting = sched.get_request_counts()
            load = (running + waiting) / self.slots
            pressure = min(max(float(sched.get_kv_cache_usage()), 0.0), 1.0)
        return EngineReport(load, idle, (), self._step_time, pressure)

    def cancel_waiting(self, session_id: str) -> bool:
        """vLLM's queue is the engine's own; a stolen session moves on its next call."""
        return False

    def set_order(self, order: Sequence[str]) -> None:
        """SAGA's scheduler orders vLLM's queue itself; an order from outside is not taken."""

    def shutdown(self) -> None:
        """Stop the engine and free its KV pool."""
        self.engine.shutdown()


@dataclass(frozen=True)
class VllmEngineFactory:
    """Builds a :class:`VllmEngine` inside the worker actor (picklable: a path and numbers).

    ``model_dir`` must be readable at that path wherever the factory runs (on every node of a
    Ray cluster); ``shape`` sizes the KV pool of ``kv_blocks`` blocks.
    """

    model_dir: str
    kv_blocks: int = 256
    max_num_seqs: int = 8
    shape: ModelShape = field(default_factory=lambda: ModelShape.from_config(TINY_LLAMA))
    preset: str = ENGINE_PRESET
    """The preset the engine's ``SagaScheduler`` runs (any name of ``PRESETS``)."""

    def __call__(self) -> VllmEngine:
        from saga.vllm.config import SagaSchedulerConfig

        kwargs = vllm_engine_kwargs(
            self.model_dir, kv_bytes_for_blocks(self.kv_blocks, shape=self.shape),
            saga=SagaSchedulerConfig.from_preset(self.preset),
            max_num_seqs=self.max_num_seqs, shape=self.shape)
        return VllmEngine(kwargs)


def vllm_engine_factory(model: str | os.PathLike[str], cache_dir: str | os.PathLike[str],
                        kv_blocks: int = 256, *, max_num_seqs: int = 8,
                        seed: int = 0, preset: str = ENGINE_PRESET) -> VllmEngineFactory:
    """The factory of SAGA vLLM engines serving ``model`` (``tiny``, ``small`` or a local
    Hugging Face directory), checked here: a random model is built under ``cache_dir`` now, a bad
    path is a :class:`SagaConfigError` before any worker starts."""
    if kv_blocks < 1:
        raise SagaConfigError(f"--kv-blocks must be >= 1, got {kv_blocks}")
    from saga.vllm.config import SagaSchedulerConfig

    SagaSchedulerConfig.from_preset(preset)  # an unknown name fails here, not in a worker
    source = resolve_model(model)
    model_dir = source.local_dir(cache_dir, seed=seed)
    return VllmEngineFactory(str(model_dir), kv_blocks, max_num_seqs, source.shape, preset)
