"""What a worker hosts: an engine behind a small protocol, and a simulated engine for large counts.

A worker does not care whether its engine is vLLM or a model of one: it submits a call with the
session's metadata and gets back the tokens and how many prompt tokens came from the prefix cache.
The protocol and its plain types live in :mod:`saga.policy.engine` (re-exported here), so the real
vLLM adapter (``saga.vllm.worker``) implements it without this package importing ``saga.vllm``
or the other way round. :class:`SimulatedEngine` models an engine's slots, waiting queue and
per-session prefix cache with sleeps; its numbers are simulated and reported as such.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from saga.policy.engine import CallMoved, Engine, EngineCall, EngineReport, EngineResult
from saga.policy.errors import SagaConfigError

__all__ = [
    "CallMoved",
    "Engine",
    "EngineCall",
    "EngineReport",
    "EngineResult",
    "SimulatedEngine",
]


@dataclass
class _Waiter:
    session_id: str
    kv_bytes: float
    future: asyncio.Future[None] = field(repr=False)


class SimulatedEngine:
    """A model of one serving instance: ``slots`` concurrent calls, a FIFO (or AFS-ordered)
    waiting queue, and an LRU prefix cache of ``cache_tokens`` tokens over sessions.

    A call costs ``(prompt - cached) * prefill_s + max_tokens * decode_s`` seconds of sleep
    (``speed`` divides it: a slow worker has ``speed < 1``). Output tokens are deterministic
    functions of the prompt so tests can compare runs.
    """

    def __init__(self, slots: int = 4, *, cache_tokens: int = 65_536, prefill_s: float = 2e-6,
                 decode_s: float = 2e-4, speed: float = 1.0, kv_bytes_per_token: float = 1.0
                 ) -> None:
        if slots < 1 or cache_tokens < 0 or prefill_s < 0 or decode_s < 0 or not speed > 0:
            raise SagaConfigError(
                "SimulatedEngine needs slots >= 1, cache_tokens/prefill_s/decode_s >= 0 and "
                f"speed > 0; got {slots}, {cache_tokens}, {prefill_s}, {decode_s}, {speed}")
        self.slots = slots
        self.cache_tokens = cache_tokens
        self.prefill_s = prefill_s
        self.decode_s = decode_s
        self.speed = speed
        self.kv_bytes_per_token = kv_bytes_per_token
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._running = 0
        self._waiting: list[_Waiter] = []
        self._order: dict[str, int] = {}
        self._idle_since: float | None = time.monotonic()
        self._step_time = 0.0
        self.calls = 0

    async def call(self, call: EngineCall) -> EngineResult:
        """Wait for a slot, then 'run' the call."""
        t0 = time.monotonic()
        if self._running >= self.slots or self._waiting:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            held = self._cache.get(call.session_id, 0) * self.kv_bytes_per_token
            self._waiting.append(_Waiter(call.session_id, held, fut))
            await fut  # raises CallMoved when stolen
        self._running += 1
        self._idle_since = None
        try:
            tokens = len(call.prompt_token_ids)
            cached = min(self._cache.get(call.session_id, 0), tokens)
            cost = ((tokens - cached) * self.prefill_s + call.max_tokens * self.decode_s)
            await asyncio.sleep(cost / self.speed)
            self._cache[call.session_id] = tokens + call.max_tokens
            self._cache.move_to_end(call.session_id)
            if call.final:
                self._cache.pop(call.session_id, None)
            self._evict()
            base = sum(call.prompt_token_ids[-4:]) if tokens else 0
            out = [(base + i) % 1024 for i in range(call.max_tokens)]
            self.calls += 1
            self._step_time = 0.8 * self._step_time + 0.2 * (cost / self.speed)
            return EngineResult(out, cached, tokens, time.monotonic() - t0)
        finally:
            self._running -= 1
            self._admit()

    def _evict(self) -> None:
        while sum(self._cache.values()) > self.cache_tokens and self._cache:
            self._cache.popitem(last=False)

    def _admit(self) -> None:
        if self._waiting and self._running < self.slots:
            rank = self._order
            best = min(range(len(self._waiting)),
                       key=lambda i: (rank.get(self._waiting[i].session_id, len(rank)), i))
            w = self._waiting.pop(best)
            if not w.future.done():
                w.future.set_result(None)
        elif self._running == 0 and not self._waiting:
            self._idle_since = time.monotonic()

    def report(self) -> EngineReport:
        """Load (running + waiting over slots), idle time, waiting sessions."""
        idle = -1.0 if self._idle_since is None else time.monotonic() - self._idle_since
        load = (self._running + len(self._waiting)) / self.slots
        waiting = tuple((w.session_id, w.kv_bytes) for w in self._waiting)
        used = sum(self._cache.values())
        pressure = min(1.0, used / self.cache_tokens) if self.cache_tokens else 1.0
        return EngineReport(load, idle, waiting, self._step_time, pressure)

    def cancel_waiting(self, session_id: str) -> bool:
        """Hand a waiting call back (it raises :class:`CallMoved`); False if not waiting."""
        for i, w in enumerate(self._waiting):
            if w.session_id == session_id:
                del self._waiting[i]
                if not w.future.done():
                    w.future.set_exception(CallMoved(f"session {session_id} was stolen"))
                self._cache.pop(session_id, None)
                return True
        return False

    def set_order(self, order: Sequence[str]) -> None:
        """Serve waiting sessions in this order (AFS) from now on."""
        self._order = {s: i for i, s in enumerate(order)}

    def shutdown(self) -> None:
        """Fail every waiting call."""
        for w in self._waiting:
            if not w.future.done():
                w.future.set_exception(CallMoved("engine shut down"))
        self._waiting.clear()
