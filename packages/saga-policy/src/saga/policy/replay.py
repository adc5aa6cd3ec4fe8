"""Replay a request trace through `CacheManager` under several eviction policies.

Each request, in arrival order: look up the longest cached prefix (HBM, then DRAM), make the whole
prompt resident (hits are touched, DRAM blocks loaded back, missing blocks prefilled and cached,
evicting through the policy), then release it — the request's KV becomes evictable, as in vLLM
when a request finishes. Prompt blocks beyond the pool's capacity are prefilled but not cached.
Bélády gets each block's next use from the whole trace before every request (it is the offline
oracle); online policies see only the past. A policy with a next-use estimator
(`EvictionPolicy.next_use_model`, e.g. ``eta``) is told each request after it is served: its
blocks, and for a session its pending tool, reuse probability and whether it was the last call.
On agent traces (requests carry a session and a
pending tool) a `SessionHinter` sets each session's reuse probability and steps to its next call
from the AEG learned so far — the workflow knowledge WA-LRU and KVFlow use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from saga.policy import registry
from saga.policy.cache import CacheManager
from saga.policy.errors import SagaConfigError
from saga.policy.eviction import EvictionPolicy, next_use_positions
from saga.policy.traces import Trace
from saga.policy.workflow import SessionHinter

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class ReplayResult:
    """What one policy did on one trace at one capacity (blocks and tokens)."""

    policy: str
    capacity_blocks: int
    dram_blocks: int
    requests: int
    block_refs: int
    hit_blocks: int
    dram_hit_blocks: int
    miss_blocks: int
    input_tokens: int
    hit_tokens: int
    recomputed_tokens: int
    evictions: int
    ratio_to_belady: float | None = None

    @property
    def hit_ratio(self) -> float:
        """Share of prompt tokens served from cache (either tier)."""
        return self.hit_tokens / self.input_tokens if self.input_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hit_ratio"] = self.hit_ratio
        return d


def make_policy(name: str) -> EvictionPolicy:
    """A fresh eviction policy by its replay name; unknown names list the valid ones."""
    return registry.replay_eviction(name)


def replay_trace(trace: Trace, policy: EvictionPolicy, capacity_blocks: int, *,
                 policy_name: str | None = None, dram_blocks: int = 0,
                 next_use: Sequence[Sequence[float]] | None = None,
                 workflow: bool = True,
                 on_progress: ProgressFn | None = None) -> ReplayResult:
    """Replay ``trace`` through a fresh cache of ``capacity_blocks`` HBM blocks under ``policy``.

    ``next_use`` (per request, per block: index of the next request using it, inf if none) is
    required by the oracle and ignored by online policies that do not read it. With
    ``workflow``, requests that belong to a session get AEG-derived hints after each call.
    """
    if capacity_blocks < 1:
        raise SagaConfigError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
    if dram_blocks < 0:
        raise SagaConfigError(f"dram_blocks must be >= 0, got {dram_blocks}")
    cache = CacheManager(capacity_blocks, policy, dram_blocks=dram_blocks,
                         block_tokens=trace.block_tokens)
    hinter = SessionHinter() if workflow else None
    estimator = policy.next_use_model()
    last_call = _last_call_of_sessions(trace) if workflow or estimator is not None else {}
    hit = dram_hit = miss = hit_tok = in_tok = 0
    for i, req in enumerate(trace.requests):
        # Arrival order inside a quantised timestamp bucket is kept by a microsecond offset.
        now = req.arrival_s + i * 1e-6
        hashes = list(req.block_hashes)
        if next_use is not None:
            cache.set_hints(hashes, next_use=list(next_use[i]))
        if estimator is not None and req.session_id is not None:
            estimator.call_started(req.session_id, now)
        alloc = cache.allocate(hashes, now, partial=True)
        counts = req.block_token_counts()
        n_hit = alloc.hit_blocks_hbm + alloc.hit_blocks_dram
        hit += alloc.hit_blocks_hbm
        dram_hit += alloc.hit_blocks_dram
        miss += len(hashes) - n_hit
        hit_tok += sum(counts[:n_hit])
        in_tok += req.input_tokens
        resident = hashes[: alloc.resident_blocks]
        cache.release(resident, now)
        final = req.session_id is not None and last_call.get(req.session_id) == i
        reuse_prob = 1.0
        if hinter is not None and req.session_id is not None:
            agent = req.agent_type or "agent"
            hinter.observe_call(req.session_id, req.input_tokens, req.output_tokens,
                                req.pending_tool)
            h = hinter.hint(agent, req.pending_tool)
            reuse_prob = h.reuse_prob
            cache.set_hints(resident, reuse_prob=h.reuse_prob, steps_to_exec=h.steps_to_exec)
            if final:  # the framework closes the finished task
                hinter.finish(req.session_id, agent)
        if estimator is not None:  # what was served, after the fact: the past only
            estimator.observe_request(hashes, now, session_id=req.session_id,
                                      pending_tool=req.pending_tool, reuse_prob=reuse_prob,
                                      final=final)
        if on_progress is not None:
            on_progress(1)
    return ReplayResult(
        policy=policy_name or policy.name, capacity_blocks=capacity_blocks,
        dram_blocks=dram_blocks, requests=len(trace.requests), block_refs=trace.block_refs,
        hit_blocks=hit, dram_hit_blocks=dram_hit, miss_blocks=miss, input_tokens=in_tok,
        hit_tokens=hit_tok, recomputed_tokens=in_tok - hit_tok,
        evictions=cache.stats.evictions)


def _last_call_of_sessions(trace: Trace) -> dict[str, int]:
    """Index of each session's last request (when its task completes)."""
    return {r.session_id: r.index for r in trace.requests if r.session_id is not None}


def replay_policies(trace: Trace, policies: Sequence[str], capacity_blocks: int, *,
                    dram_blocks: int = 0,
                    on_progress: ProgressFn | None = None) -> list[ReplayResult]:
    """Replay the trace once per named policy; when Bélády is among them, add each ratio to it.

    The ratio is misses / Bélády's misses (the competitive ratio of the spec's table 4).
    """
    if not policies:
        raise SagaConfigError("policies must name at least one eviction policy")
    built = [make_policy(name) for name in policies]  # validate every name before any work
    oracle_hints = None
    if any(p.needs_next_use for p in built):
        oracle_hints = next_use_positions([r.block_hashes for r in trace.requests])
    results = [replay_trace(trace, make_policy(name), capacity_blocks, policy_name=name,
                            dram_blocks=dram_blocks, next_use=oracle_hints,
                            on_progress=on_progress)
               for name in policies]
    return with_belady_ratios(results)


def with_belady_ratios(results: Sequence[ReplayResult]) -> list[ReplayResult]:
    """Attach ``misses / misses(belady)`` to every result when a Bélády run is present."""
    by_name: Mapping[str, ReplayResult] = {r.policy: r for r in results}
    oracle = by_name.get("belady")
    if oracle is None:
        return list(results)
    out = []
    for r in results:
        ratio = r.miss_blocks / oracle.miss_blocks if oracle.miss_blocks else (
            1.0 if r.miss_blocks == 0 else math.inf)
        out.append(ReplayResult(**{**asdict(r), "ratio_to_belady": ratio}))
    return out
