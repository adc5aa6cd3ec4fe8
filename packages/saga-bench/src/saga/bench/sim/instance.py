"""One serving instance: saga-policy's cache and queue, continuous batching with chunked prefill.

Between two events the batch is fixed, so every iteration costs the same (``StepCost``) and the
instance advances many iterations in one jump: each decoding call gains one token per iteration,
the prefill FIFO gains ``chunk`` tokens (the iteration's token budget left after the decodes).
The next event is the earliest prefill or decode completion, so the simulator handles a few
events per call instead of one per token. Since every decoding call gains the same tokens, they
are kept in a heap keyed by the iteration count at which each finishes (a virtual clock), and a
jump costs O(log n) per finished call instead of a pass over the batch.

Admission pops the queue in its own order (saga-policy's ``RequestQueue``), asks the
``CacheManager`` for the call's whole chain (prompt and the output it will write: vLLM reserves
blocks as it goes, we reserve them up front so no call is ever preempted) and prefills only what
missed. A call that does not fit waits at the head, as in vLLM. A call whose prefix is partly in
host DRAM loads it back asynchronously before its prefill starts, delaying only that call (as
vLLM's ``OffloadingConnector`` does: the request waits for its KV while the batch runs on);
swapping evicted blocks out to DRAM is asynchronous too and delays no one.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from saga.bench.costmodel import StepCost
from saga.bench.sim.entities import Request
from saga.policy.afs import AFS
from saga.policy.cache import CacheManager
from saga.policy.errors import CacheError, UnknownSessionError
from saga.policy.queueing import RequestQueue

_EPS = 1e-9


@dataclass(eq=False)
class Instance:
    """A TP instance: its cache, waiting queue, the calls in prefill and in decode."""

    index: int
    node: int
    cache: CacheManager
    queue: RequestQueue
    cost: StepCost
    block_tokens: int
    fairness: AFS | None = None
    waiting: dict[str, Request] = field(default_factory=dict)
    """Queued calls by request id (the queue holds their ``QueuedRequest``)."""
    prefilling: deque[Request] = field(default_factory=deque)
    loading: list[tuple[float, int, Request]] = field(default_factory=list)
    """Admitted calls loading their prefix back from DRAM: a heap of (ready time, seq, call)."""
    t: float = 0.0
    version: int = 0
    idle_since: float | None = 0.0
    steal_armed: bool = False
    """A ``steal`` event of this instance is pending."""
    demand_tokens: int = 0
    busy_s: float = 0.0
    ref_block_s: float = 0.0
    step_time_ema: float = 0.0
    queue_delay_ema: float = 0.0
    """Average seconds a call waits here between arrival and admission (EMA)."""
    _tau: float = 0.0
    _chunk: float = 0.0
    _ref_blocks: int = 0
    _last_epoch: float = 0.0
    _blocked: bool = False
    """The head call did not fit; nothing fits until a running call releases its blocks."""
    _iters: float = 0.0
    """Iterations run so far: the virtual clock decoding calls finish by."""
    _dec: list[tuple[float, int, Request]] = field(default_factory=list)
    """Decoding calls as a heap of (iteration at which the last token is out, seq, call)."""
    _dec_seq: itertools.count[int] = field(default_factory=itertools.count)
    _dec_finish_sum: float = 0.0
    _dec_full_tokens: int = 0
    """Sum over decoding calls of prompt plus all output tokens (context when done)."""
    _held_blocks: int = 0
    """KV blocks referenced by the calls in prefill and in decode."""

    # ------------------------------------------------------------------ state

    @property
    def decoding(self) -> list[Request]:
        """The calls in decode (in no particular order)."""
        return [r for _, _, r in self._dec]

    @property
    def running(self) -> int:
        return len(self.loading) + len(self.prefilling) + len(self._dec)

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def head_blocked(self) -> bool:
        """The head waiting call cannot be admitted now (KV pool or batch full)."""
        return bool(self.waiting) and (self._blocked or self.running >= self.cost.max_num_seqs)

    def load(self, kind: str) -> float:
        """``utilisation``: KV demand of running and waiting calls over the pool's tokens;
        ``requests``: running plus waiting calls."""
        if kind == "requests":
            return float(self.running + len(self.waiting))
        return self.demand_tokens / (self.cache.hbm_blocks * self.block_tokens)

    def pressure(self, now: float) -> float:
        """Share of the HBM pool that cannot be evicted now (in use or pinned), in [0, 1]."""
        t = self.cache.table
        hbm = t.tier == 1
        busy = hbm & ((t.ref_count > 0) | (t.pinned_until > now))
        return min(1.0, float(np.count_nonzero(busy)) / self.cache.hbm_blocks)

    # ------------------------------------------------------------------ progress

    def advance(self, now: float) -> tuple[list[Request], list[Request]]:
        """Account the iterations run since ``self.t``; returns (prefills done, decodes done).
        Calls whose DRAM load is done by ``now`` then join the prefill FIFO."""
        dt = now - self.t
        done: tuple[list[Request], list[Request]] = ([], [])
        if dt > 0:
            self.t = now
            if self._tau > 0:
                done = self._run(dt)
        while self.loading and self.loading[0][0] <= now + _EPS:
            self.prefilling.append(heapq.heappop(self.loading)[2])
        return done

    def _run(self, dt: float) -> tuple[list[Request], list[Request]]:
        """``dt`` seconds of iterations with the batch fixed by :meth:`plan`."""
        self.busy_s += dt
        self.ref_block_s += self._ref_blocks * dt
        iters = dt / self._tau
        self._iters += iters
        dec = self._dec
        prefilled: list[Request] = []
        budget = iters * self._chunk
        while self.prefilling and budget > 0:
            head = self.prefilling[0]
            take = min(budget, head.prefill_left)
            head.prefill_left -= take
            budget -= take
            if head.prefill_left <= 1e-6 * max(1.0, head.prompt_tokens):
                prefilled.append(self.prefilling.popleft())
            else:
                break
        for r in prefilled:
            r.prefill_left = 0.0
            # The iteration that ends the prefill samples the first output token (as in vLLM).
            finish = self._iters + r.output_tokens - 1
            heapq.heappush(dec, (finish, next(self._dec_seq), r))
            self._dec_finish_sum += finish
            self._dec_full_tokens += r.prompt_tokens + r.output_tokens
        decoded: list[Request] = []
        while dec and dec[0][0] - self._iters <= _EPS * max(1.0, dec[0][2].output_tokens):
            finish, _, r = heapq.heappop(dec)
            self._dec_finish_sum -= finish
            self._dec_full_tokens -= r.prompt_tokens + r.output_tokens
            self._held_blocks -= len(r.resident)
            decoded.append(r)
        return prefilled, decoded

    def plan(self, now: float) -> float | None:
        """Fix the batch's step time and return when the next completion happens (None: idle)."""
        self.version += 1
        n_dec = len(self._dec)
        backlog = sum(r.prefill_left for r in self.prefilling)
        chunk = min(max(self.cost.max_batched_tokens - n_dec, 0), backlog)
        self._chunk = chunk
        self._ref_blocks = self._held_blocks
        ready = self.loading[0][0] if self.loading else np.inf
        if n_dec == 0 and chunk <= 0:
            self._tau = 0.0
            return None if not self.loading else float(ready)
        head_ctx = (self.prefilling[0].prompt_tokens - int(self.prefilling[0].prefill_left)
                    if self.prefilling else 0)
        # Context held by decoding calls: all their tokens minus those still to generate.
        left = self._dec_finish_sum - n_dec * self._iters
        dec_ctx = max(0, round(self._dec_full_tokens - left))
        self._tau = self.cost.step_time(round(chunk), head_ctx, n_dec, dec_ctx)
        iters = np.inf
        if self._dec:
            iters = self._dec[0][0] - self._iters
        if chunk > 0:
            iters = min(iters, self.prefilling[0].prefill_left / chunk)
        return float(min(now + max(float(iters), 0.0) * self._tau, ready))

    # ------------------------------------------------------------------ admission

    def enqueue(self, req: Request) -> None:
        """Put a call in the waiting queue."""
        assert req.queued is not None
        self.waiting[req.queued.request_id] = req
        self.queue.push(req.queued)
        self.demand_tokens += req.prompt_tokens + req.output_tokens
        if self.fairness is not None:
            self._afs_add(req)
        self.idle_since = None

    def _afs_knows(self, req: Request) -> bool:
        assert self.fairness is not None
        try:
            self.fairness.task(req.state.task_id)
        except UnknownSessionError:
            return False
        return True

    def _afs_add(self, req: Request) -> None:
        assert self.fairness is not None
        if self._afs_knows(req):
            return
        task = req.state.task
        work = float(task.prompt_tokens + sum(c.output_tokens for c in task.calls))
        self.fairness.add_task(task.task_id, task.tenant, work, task.deadline_s)

    def remove_waiting(self, task_id: str) -> list[Request]:
        """Take a session's waiting calls out of the queue (stealing, migration)."""
        gone = self.queue.remove(task_id)
        out = [self.waiting.pop(q.request_id) for q in gone]
        for r in out:
            self.demand_tokens -= r.prompt_tokens + r.output_tokens
        return out

    def _next(self, now: float) -> Request:
        """The next call by the queue's order, or by AFS when several tenants wait."""
        if self.fairness is not None:
            tenants = {r.state.task.tenant for r in self.waiting.values()}
            if len(tenants) > 1:
                if now - self._last_epoch >= self.fairness.epoch_s:
                    self.fairness.step_epoch(now)
                    self._last_epoch = now
                sessions = {r.state.task_id for r in self.waiting.values()}
                pick = self.fairness.pick(sorted(sessions), now)
                reqs = self.queue.remove(pick)
                for q in reqs[1:]:
                    self.queue.push(q)
                return self.waiting.pop(reqs[0].request_id)
        q = self.queue.pop(now)
        return self.waiting.pop(q.request_id)

    def admit(self, now: float) -> list[Request]:
        """Admit waiting calls while sequences and KV allow; returns the admitted calls."""
        admitted: list[Request] = []
        while not self._blocked and self.waiting and self.running < self.cost.max_num_seqs:
            req = self._next(now)
            try:
                alloc = self.cache.allocate(req.hashes, now)
            except CacheError:
                assert req.queued is not None
                self.waiting[req.queued.request_id] = req
                self.queue.push(req.queued)
                self._blocked = True
                break
            b = self.block_tokens
            hits = alloc.hit_blocks_hbm + alloc.hit_blocks_dram
            req.hit_tokens = min(hits * b, req.prompt_tokens - 1)
            req.hbm_hit_tokens = min(alloc.hit_blocks_hbm * b, req.hit_tokens)
            req.resident = req.hashes[:alloc.resident_blocks]
            req.prefill_left = float(req.prompt_tokens - req.hit_tokens)
            req.admitted_s = now
            req.instance = self.index
            self._held_blocks += len(req.resident)
            load_s = self._load_seconds(alloc.hit_blocks_dram)
            if load_s > 0:
                heapq.heappush(self.loading, (now + load_s, next(self._dec_seq), req))
            else:
                self.prefilling.append(req)
            admitted.append(req)
        return admitted

    def _load_seconds(self, blocks: int) -> float:
        """PCIe time to load ``blocks`` from DRAM back into HBM."""
        swap = self.cache.swap
        assert swap is not None
        return swap.seconds(blocks * self.cache.block_bytes)

    # ------------------------------------------------------------------ migration

    def decoding_left(self) -> list[tuple[Request, float]]:
        """Each call in decode with the output tokens it has still to generate."""
        return [(r, finish - self._iters) for finish, _, r in self._dec]

    def migrate_out(self, req: Request, now: float) -> float:
        """Take a decoding call out (live migration; its KV is already on the destination):
        its blocks are released here; returns the output tokens it has left."""
        i = next(i for i, (_, _, r) in enumerate(self._dec) if r is req)
        finish = self._dec[i][0]
        self._dec[i] = self._dec[-1]
        self._dec.pop()
        heapq.heapify(self._dec)
        self._dec_finish_sum -= finish
        self._dec_full_tokens -= req.prompt_tokens + req.output_tokens
        self._held_blocks -= len(req.resident)
        self.demand_tokens -= req.prompt_tokens + req.output_tokens
        self.cache.release(req.resident, now)
        self._blocked = False
        if not self.busy:
            self.idle_since = now
        return finish - self._iters

    def migrate_in(self, req: Request, left: float) -> None:
        """Resume a migrated call in decode here (its blocks were allocated by the caller)."""
        finish = self._iters + left
        heapq.heappush(self._dec, (finish, next(self._dec_seq), req))
        self._dec_finish_sum += finish
        self._dec_full_tokens += req.prompt_tokens + req.output_tokens
        self._held_blocks += len(req.resident)
        self.demand_tokens += req.prompt_tokens + req.output_tokens
        req.instance = self.index
        self.idle_since = None

    def finish(self, req: Request, now: float) -> None:
        """A call's last token is out: its blocks become evictable (or stay pinned)."""
        self.cache.release(req.resident, now)
        self._blocked = False
        self.demand_tokens -= req.prompt_tokens + req.output_tokens
        if not self.busy:
            self.idle_since = now


__all__ = ["Instance"]
