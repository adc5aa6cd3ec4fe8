"""What each compared system really ships, with sources: the mechanisms a preset models.

Every :class:`~saga.policy.presets.Preset` carries a tuple of :class:`Mechanism` (its
``mechanisms`` field), taken from this module, so the parity table that ``saga show presets
--mechanisms`` prints and ``docs/peers.md`` holds is data next to the switches it explains. A
mechanism names the preset field that models it (``field``), or ``None`` when it is left out,
with the reason in ``note``. ``saga.policy.parity`` checks the claims against the switches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mechanism:
    """One mechanism of the system a preset models.

    ``field``: the preset field that models it (``eviction``, ``ttl``, ``dram_tier``,
    ``prefetch``, ``router``, ``stealing``, ``queue``, ``fairness``, ``migration``,
    ``rehome_kv``, ``prefix_caching``), ``None`` when it is left out. ``source``: where the
    system documents it (paper section, docs page or code path). ``note``: the reading taken, or
    why it is left out.
    """

    name: str
    source: str
    field: str | None
    note: str = ""


VLLM_DOCS = "vLLM 0.32: vllm/v1/core/block_pool.py, vllm/v1/core/sched/scheduler.py"
OFFLOAD = ("vLLM 0.32: --kv-offloading-backend native --kv-offloading-size; "
           "vllm/config/vllm.py _post_init_kv_transfer_config, vllm/v1/kv_offload/cpu/"
           "manager.py, cpu/policies/lru.py, kv_connector/v1/offloading/scheduler.py")
LLM_D = ("llm-d/llm-d-inference-scheduler: pkg/epp/config/loader/defaults.go; "
         "pkg/epp/framework/plugins/scheduling/scorer/{queuedepth,kvcacheutilization,prefix}")
LLUMNIX = ("llumnix-project/llumnix: docs/source/design/scheduler/rescheduler.md, "
           "docs/source/user_manual/scheduler_conf.md, pkg/consts/consts.go; "
           "OSDI '24 paper (arXiv 2406.03243) §4")

_APC = Mechanism("automatic prefix caching: hashed full blocks, LRU free-block queue",
                 VLLM_DOCS, "eviction")
_OFFLOAD = Mechanism(
    "CPU KV offloading (OffloadingConnector, CPUOffloadingManager, LRU policy)", OFFLOAD,
    "dram_tier",
    "DRAM as large as SAGA's; loads are async and delay only their request (load_kv_async); "
    "ARC policy and store_threshold gating not modelled (LRU, no gating: the defaults)")
_FCFS = Mechanism("FCFS scheduling, chunked prefill", VLLM_DOCS, "queue",
                  "preemption by recompute not modelled: output blocks are reserved at admission")
_LLM_D = Mechanism(
    "llm-d EPP default profile: queue-scorer 2 (waiting queue, min-max), "
    "kv-cache-utilization-scorer 2, prefix-cache-scorer 3, max-score picker", LLM_D, "router",
    "approximate prefix index (routed blocks); the precise scorer and session-affinity "
    "scorer are not in the default profile")
_LEAST = Mechanism("a load balancer in front of the engines: least loaded instance",
                   "deployment choice (vLLM ships no multi-instance router)", "router")
_NO_MOVE = Mechanism(
    "KV moving between instances", "-", None,
    "not shipped: a request routed elsewhere is prefilled again there")

VLLM: tuple[Mechanism, ...] = (
    Mechanism("paged KV blocks freed when a request ends (prefix caching off)", VLLM_DOCS,
              "prefix_caching", "the no-reuse baseline; LRU over the block pool"),
    _FCFS, _LEAST,
    Mechanism("CPU KV offloading", OFFLOAD, None,
              "left out: without prefix caching nothing offloaded is ever reused"),
)

VLLM_APC: tuple[Mechanism, ...] = (_APC, _OFFLOAD, _FCFS, _LLM_D, _NO_MOVE)

SGLANG: tuple[Mechanism, ...] = (
    Mechanism("RadixAttention: radix-tree prefix cache, LRU over leaves",
              "sglang python/sglang/srt/mem_cache/radix_cache.py", "eviction"),
    Mechanism("HiCache: host-memory KV tier (--enable-hierarchical-cache, write-through)",
              "docs.sglang.ai advanced_features/hicache; sglang srt/mem_cache/hiradix_cache.py",
              "dram_tier",
              "host-to-GPU loads overlap layer by layer; modelled as delaying only the request"),
    Mechanism("HiCache storage tier (L3) with prefetch into host memory",
              "docs.sglang.ai advanced_features/hicache", None,
              "left out: no storage tier is modelled; host memory already holds what is evicted"),
    Mechanism("sgl-router cache_aware: cache_threshold 0.3, balance_abs 64, balance_rel 1.5",
              "docs.sglang.ai advanced_features/router; sgl-router src/policies/cache_aware.rs",
              "router"),
    Mechanism("FCFS schedule policy", "sglang --schedule-policy (server_args.py)", "queue"),
    _NO_MOVE,
)

LLUMNIX_MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism("live migration of running requests with their KV: every 500 ms, sources "
              "at projected KV usage >= 1.0 paired with the least loaded below it, SR order, "
              "1024 tokens per pair", LLUMNIX, "migration",
              "v1 defaults (saga.policy.migration); pipelined copy modelled as instant "
              "(downtime of ms not charged); the v0 artifact's 50 ms freeness rule left out"),
    Mechanism("dispatch by kv_cache_usage_ratio_projected (least loaded)",
              "llumnix-project/llumnix pkg/scheduler/policy/metrics.go", "router"),
    Mechanism("vLLM engine (v0.18) with prefix caching and CPU offloading",
              f"llumnix README (vLLM v0.18); {OFFLOAD}", "dram_tier",
              "stronger reading: the engine it runs ships offloading"),
    _APC, _FCFS,
    Mechanism("cache-aware dispatch, adaptive PD, SLO-aware scheduling, failover",
              "llumnix-project/llumnix docs/source/user_manual/scheduler_conf.md", None,
              "left out: cache-aware needs a global KV store and is off by default; the rest "
              "target PD or SLO deployments"),
)

TRT_LLM: tuple[Mechanism, ...] = (
    Mechanism("KV cache block reuse (radix tree, LRU)",
              "TensorRT-LLM docs: advanced/kv-cache-reuse", "eviction"),
    Mechanism("host-memory offloading of reusable blocks (KvCacheConfig.host_cache_size)",
              "TensorRT-LLM docs: advanced/kv-cache-reuse (offloading to host memory)",
              "dram_tier"),
    Mechanism("KvCacheRetentionConfig: priority and duration keep a request's blocks",
              "TensorRT-LLM docs: kv-cache retention (tensorrt_llm.llmapi)", "ttl",
              "modelled as a fixed pin of TTL_max through each tool call (most generous)"),
    Mechanism("scaffolding controller drives a request's multi-step generation",
              "TensorRT-LLM tensorrt_llm/scaffolding, examples/scaffolding", None,
              "the workload's calls already run in sequence per task"),
    Mechanism("capacity scheduler, FCFS", "TensorRT-LLM docs: batch manager", "queue"),
    _LEAST, _NO_MOVE,
)

KVFLOW: tuple[Mechanism, ...] = (
    Mechanism("eviction by steps-to-execution over the agent step graph",
              "KVFlow, arXiv 2507.07400 §3", "eviction"),
    Mechanism("CPU tier (SGLang HiCache underneath)", "KVFlow, arXiv 2507.07400 §4",
              "dram_tier"),
    Mechanism("overlapped KV prefetch from CPU before the next agent runs",
              "KVFlow, arXiv 2507.07400 §4", "prefetch",
              "starts when the tool returns"),
    Mechanism("FCFS", "KVFlow, arXiv 2507.07400 (SGLang scheduler)", "queue"),
    Mechanism("multi-instance routing: llm-d default profile", LLM_D, "router",
              "the paper serves one instance; the strongest shipped router is added"),
    _NO_MOVE,
)

CONTINUUM: tuple[Mechanism, ...] = (
    Mechanism("TTL pin of a tool-calling request's KV from reload cost and queueing delay",
              "Continuum / CacheTTL, arXiv 2511.02230 v4 §4", "ttl"),
    Mechanism("program-level FCFS", "arXiv 2511.02230 v4 §4", "queue"),
    Mechanism("works with CPU offloading", "arXiv 2511.02230 v4; vLLM offloading", "dram_tier"),
    _APC,
    Mechanism("multi-instance routing: llm-d default profile", LLM_D, "router"),
    _NO_MOVE,
)

AUTELLIX: tuple[Mechanism, ...] = (
    Mechanism("program-level least attained service: PLAS / ATLAS, multi-level queues, "
              "anti-starvation", "Autellix, arXiv 2502.13965 §4", "queue"),
    Mechanism("data-locality-aware load balancing (short calls least loaded, long ones "
              "to their program's engine)", "Autellix, arXiv 2502.13965 §5", "router"),
    _APC,
    Mechanism("CPU KV offloading of the vLLM underneath", OFFLOAD, "dram_tier",
              "stronger reading: the paper is silent; the engine ships it"),
    _NO_MOVE,
)

_SAGA_KV = Mechanism(
    "KV follows a moved session", "saga-coordinator worker.py (_on_steal: the call is "
    "routed again and prefilled)", None,
    "not done by the real SAGA: the coordinator re-homes and the new engine prefills")

SAGA: tuple[Mechanism, ...] = (
    Mechanism("WA-LRU eviction from AEG reuse predictions",
              "saga-policy eviction/walru.py; saga-vllm offload.py, block_queue.py", "eviction"),
    Mechanism("tool-call TTL pins from per-tool p95 latency",
              "saga-policy ttl.py ToolCallTTL; saga-vllm pinning.py", "ttl"),
    Mechanism("DRAM tier (vLLM OffloadingConnector with SAGA's policy)",
              "saga-vllm offload.py, offload_host.py", "dram_tier"),
    Mechanism("prefetch of a session's KV before its next call",
              "saga-vllm engine.py (tool_started prefetch)", "prefetch"),
    Mechanism("session affinity with load headroom", "saga-coordinator core.py; "
              "saga-policy routing.py AffinityRouter", "router"),
    Mechanism("work stealing by idle instances", "saga-coordinator core.py, worker.py; "
              "saga-policy stealing.py", "stealing",
              "a stolen call is prefilled again on the thief (no KV copy)"),
    Mechanism("hybrid BFS/DFS queueing", "saga-vllm request_queue.py; saga-policy "
              "queueing.py", "queue"),
    Mechanism("AFS task-level fairness", "saga-policy afs.py; saga-vllm request_queue.py",
              "fairness"),
    _SAGA_KV,
)

SAGA_KVMOVE: tuple[Mechanism, ...] = (
    *SAGA[:-1],
    Mechanism("KV follows a moved session (re-homing, stealing) over NVLink / InfiniBand",
              "simulator only (saga-bench sim/simulator.py _move_kv)", "rehome_kv",
              "not in the real SAGA yet: a labelled what-if variant"),
)

SAGA_ETA: tuple[Mechanism, ...] = (
    Mechanism("eviction by predicted next use: lowest value per byte and second first",
              "saga-policy eviction/eta.py, nextuse.py; saga-vllm block_queue.py, offload.py",
              "eviction",
              "fed only what the scheduler sees: a call's arrival, and at its end the pending "
              "tool, the AEG's reuse probability and the final flag"),
    Mechanism("value TTL: a tool call's pin lasts while its KV's value exceeds the "
              "pressure-dependent price of holding HBM",
              "saga-policy ttl_value.py ValueTTL; saga-vllm pinning.py", "ttl"),
    *(m for m in SAGA if m.field not in ("eviction", "ttl")),
)

__all__ = ["AUTELLIX", "CONTINUUM", "KVFLOW", "LLUMNIX_MECHANISMS", "SAGA", "SAGA_ETA",
           "SAGA_KVMOVE", "SGLANG", "TRT_LLM", "VLLM", "VLLM_APC", "Mechanism"]
