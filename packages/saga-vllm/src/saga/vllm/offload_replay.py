"""Replay a request trace through vLLM's own DRAM-tier manager to compare cache policies.

The simulator's replay (``saga.policy.replay``) models SAGA's cache; this one drives the real
``CPUOffloadingManager`` of vLLM 0.32 — the code that decides what the DRAM tier holds in the
engine — so LRU, ARC and WA-LRU are compared on exactly the calls the OffloadingConnector makes:
per request, ``lookup`` of the prefix (stopping at the first miss, as the connector does),
``prepare_load``/``complete_load`` of the hits, ``prepare_store``/``complete_store`` of the rest
in step-sized batches, then ``on_request_finished``. The tier is modelled alone (every block
reaches it), which is what it sees when the device pool is much smaller than the working set.

On agent traces WA-LRU gets the workflow hints the scheduler would give it: after each call the
session's blocks get the reuse probability that saga-policy's ``SessionHinter`` predicts from the
AEG learned so far (0 after the session's last call), written to an :class:`OffloadReuseHints`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from saga.policy.errors import SagaConfigError
from saga.policy.traces import Trace
from saga.policy.workflow import SessionHinter
from saga.vllm.offload import POLICY_CLASS, SAGA_WALRU, OffloadReuseHints, WALRUCachePolicy
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager


@dataclass(frozen=True)
class OffloadReplayResult:
    """What one DRAM-tier policy did on one trace at one capacity (in chunks)."""

    policy: str
    capacity_chunks: int
    requests: int
    block_refs: int
    hit_blocks: int
    stored_blocks: int
    evicted_blocks: int

    @property
    def hit_ratio(self) -> float:
        return self.hit_blocks / self.block_refs if self.block_refs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_ratio": self.hit_ratio}


def block_hash_bytes(block_id: int) -> bytes:
    """A trace's integer block id as the bytes vLLM uses for a ``BlockHash``."""
    return int(block_id).to_bytes(8, "little", signed=False)


def _make_manager(policy: str, capacity_chunks: int,
                  hints: OffloadReuseHints | None) -> CPUOffloadingManager:
    if policy == SAGA_WALRU:
        mgr = CPUOffloadingManager(num_chunks=capacity_chunks, cache_policy=POLICY_CLASS,
                                   cache_policy_module_path="saga.vllm.offload")
        # The manager builds the policy from its capacity alone; point it at this run's table.
        mgr._policy = WALRUCachePolicy(capacity_chunks, hints=hints)
        return mgr
    return CPUOffloadingManager(num_chunks=capacity_chunks, cache_policy=policy)


def replay_offload_tier(trace: Trace, policy: str, capacity_chunks: int, *,
                        workflow: bool = True, store_batch: int = 16) -> OffloadReplayResult:
    """Replay ``trace`` through a fresh DRAM tier of ``capacity_chunks`` under ``policy``.

    ``policy`` is ``"lru"``, ``"arc"`` or ``"saga_walru"``; ``workflow`` gives WA-LRU the
    session hints (off: WA-LRU ranks by recency and prefix size only). ``store_batch`` is how many
    blocks one scheduler step offers for storing (chunked prefill stores a prompt in pieces).
    """
    if capacity_chunks < 1:
        raise SagaConfigError(f"capacity_chunks must be >= 1, got {capacity_chunks}")
    if store_batch < 1:
        raise SagaConfigError(f"store_batch must be >= 1, got {store_batch}")
    hints = OffloadReuseHints() if policy == SAGA_WALRU else None
    mgr = _make_manager(policy, capacity_chunks, hints)
    hinter = SessionHinter() if workflow and hints is not None else None
    last_call = {r.session_id: r.index for r in trace.requests if r.session_id is not None}
    hit = stored = evicted = 0
    for req in trace.requests:
        hashes = [block_hash_bytes(b) for b in req.block_hashes]
        keys = [make_offload_key(h, 0) for h in hashes]
        ctx = ReqContext(req_id=str(req.index))
        for j, key in enumerate(keys):
            ctx.set_offload_key_position(key, (j + 1) * trace.block_tokens)
        mgr.on_new_request(ctx)
        n_hit = 0
        while n_hit < len(keys) and mgr.lookup(keys[n_hit], ctx) == LookupResult.HIT:
            n_hit += 1
        if n_hit:
            mgr.prepare_load(keys[:n_hit], ctx)
            mgr.complete_load(keys[:n_hit], ctx)
        hit += n_hit
        for start in range(n_hit, len(keys), store_batch):
            out = mgr.prepare_store(keys[start:start + store_batch], ctx)
            if out is None:
                continue
            stored += len(out.keys_to_store)
            evicted += len(out.evicted_keys)
            mgr.complete_store(out.keys_to_store, ctx)
        if hinter is not None and hints is not None and req.session_id is not None:
            agent = req.agent_type or "agent"
            hinter.observe_call(req.session_id, req.input_tokens, req.output_tokens,
                                req.pending_tool)
            hints.set(hashes, hinter.hint(agent, req.pending_tool).reuse_prob)
            if last_call.get(req.session_id) == req.index:
                hinter.finish(req.session_id, agent)
        mgr.on_request_finished(ctx)
    name = policy if policy != SAGA_WALRU or workflow else f"{SAGA_WALRU}(no hints)"
    return OffloadReplayResult(policy=name, capacity_chunks=capacity_chunks,
                               requests=len(trace.requests), block_refs=trace.block_refs,
                               hit_blocks=hit, stored_blocks=stored, evicted_blocks=evicted)


__all__ = ["OffloadReplayResult", "block_hash_bytes", "replay_offload_tier"]
