"""SAGA's KV connector: a session's prefix follows it to another engine through a node store.

A vLLM v1 KV connector (``KVConnectorBase_V1``, loaded out of tree through
``kv_connector_module_path``: no vLLM change) over :class:`~saga.vllm.kv_store.KVBlockStore`.

- **Save (write-through)**: each step, every block that becomes full is written once to the
  store, keyed by vLLM's prefix-cache block hash (the scheduler half plans it, the worker half
  copies the block after the forward pass). A session's blocks are therefore already in the
  store when the gateway decides to move it, even if its home engine has died since.
- **Load (on request)**: a request whose ``kv_transfer_params`` carry ``{"saga_load": true}``
  (the gateway sets it when a session lands on an engine other than its last one) has its
  longest stored prefix beyond the local prefix-cache hit loaded into its blocks before the
  forward pass. vLLM counts the loaded tokens as cached (``prompt_tokens_details``).
- **Faults**: a missing entry is never promised (the scheduler checks before it counts a
  token); one that fails its checksum or shape at load time is reported through
  ``get_block_ids_with_load_errors`` and vLLM recomputes those blocks
  (``kv_load_failure_policy="recompute"``). Loads, saves and errors are counted in
  ``vllm:saga_kv_store_*`` Prometheus counters (next to vLLM's own
  ``vllm:external_prefix_cache_hits``).
- **Size cap**: with ``kv_connector_extra_config.max_bytes`` the scheduler half runs a
  :class:`~saga.vllm.kv_store.StoreSweeper` thread that deletes the entries used longest ago
  once the store outgrows the cap (``--kv-store-max-gb``).

On GPUs this is the shape of vLLM's ``MooncakeStoreConnector`` (a content-addressed put/get
store keyed by block hash, independent of which engine wrote the block), not NIXL's
engine-to-engine pull, which needs the source alive.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from saga.vllm.kv_store import (
    CONNECTOR_MODULE,
    CONNECTOR_NAME,
    LOAD_PARAM,
    SAVE_PARAM,
    BlockEntry,
    KVBlockStore,
    StoreError,
    StoreSweeper,
    kv_transfer_config,
    namespace,
)
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
    PromMetric,
    PromMetricT,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

__all__ = ["CONNECTOR_MODULE", "CONNECTOR_NAME", "LOAD_PARAM", "SAVE_PARAM",
           "SagaKVStoreConnector", "StoreStats", "kv_transfer_config"]

log = logging.getLogger("saga.vllm.kv")

_COUNTERS = ("loaded_blocks", "saved_blocks", "load_errors", "save_errors")


@dataclass
class StoreStats(KVConnectorStats):  # type: ignore[misc]
    """Counts and seconds of one interval (sent from the worker, summed by vLLM's logger)."""

    def __post_init__(self) -> None:
        for k in (*_COUNTERS, "load_s", "save_s"):
            self.data.setdefault(k, 0)

    def reset(self) -> None:
        self.data: dict[str, Any] = {}
        self.__post_init__()

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for k, v in other.data.items():
            self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self) -> dict[str, int | float]:
        return dict(self.data)

    def is_empty(self) -> bool:
        return not any(self.data.get(k) for k in _COUNTERS)


class _Prom(KVConnectorPromMetrics):  # type: ignore[misc]
    """``vllm:saga_kv_store_*`` counters per engine (vLLM's metrics reader lists only ``vllm:``)."""

    def __init__(self, vllm_config: VllmConfig,
                 metric_types: dict[type[PromMetric], type[PromMetricT]],
                 labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self.counters: dict[str, dict[int, Any]] = {}
        for k in (*_COUNTERS, "load_s", "save_s"):
            c = self._counter_cls(name=f"vllm:saga_kv_store_{k}",
                                  documentation=f"SAGA KV store: {k.replace('_', ' ')}",
                                  labelnames=labelnames)
            self.counters[k] = {i: c.labels(*v) for i, v in per_engine_labelvalues.items()}

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for k, per_engine in self.counters.items():
            v = transfer_stats_data.get(k, 0)
            if v and engine_idx in per_engine:
                per_engine[engine_idx].inc(v)


@dataclass
class StoreMeta(KVConnectorMetadata):  # type: ignore[misc]
    """One step's work for the worker: (block hash, block id) to load and to save."""

    loads: list[tuple[bytes, int]] = field(default_factory=list)
    saves: list[tuple[bytes, int]] = field(default_factory=list)


def _layout(config: VllmConfig) -> str:
    m = config.model_config
    return namespace(m.model, m.dtype, config.cache_config.block_size, m.get_head_size(),
                     m.get_total_num_kv_heads(), m.get_num_layers(config.parallel_config))


class SagaKVStoreConnector(KVConnectorBase_V1):  # type: ignore[misc]
    """Write-through saves of full blocks, loads of a moved session's prefix (see module)."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        if vllm_config.parallel_config.world_size > 1:
            raise ValueError(f"{CONNECTOR_NAME} supports one worker per engine (no tensor or "
                             "pipeline parallelism)")
        root = self._kv_transfer_config.get_from_extra_config("store_dir", None)
        if not root:
            raise ValueError(f"{CONNECTOR_NAME} needs kv_connector_extra_config.store_dir")
        self.store = KVBlockStore(root, _layout(vllm_config))
        self._sweeper: StoreSweeper | None = None
        cap = self._kv_transfer_config.get_from_extra_config("max_bytes", None)
        if cap is not None and role == KVConnectorRole.SCHEDULER:
            self._sweeper = StoreSweeper(root, int(cap)).start()
        self.block_size = vllm_config.cache_config.block_size
        # scheduler half
        self._requests: dict[str, Request] = {}
        self._saved_upto: dict[str, int] = {}
        self._pending: dict[str, tuple[int, int]] = {}
        self._load_plan: list[tuple[bytes, int]] = []
        self._manager: KVCacheManager | None = None
        # worker half
        self._kv: list[torch.Tensor] = []
        self._failed: set[int] = set()
        self._stats = StoreStats()

    # -- scheduler half ------------------------------------------------------------------------
    def bind_kv_cache_manager(self, kv_cache_manager: KVCacheManager) -> None:
        self._manager = kv_cache_manager

    def on_new_request(self, request: Request) -> None:
        params = request.kv_transfer_params or {}
        if params.get(SAVE_PARAM) is not False:
            self._requests[request.request_id] = request

    def get_num_new_matched_tokens(self, request: Request,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        """Stored blocks right after the local hit, if the request asks for a load."""
        self._pending.pop(request.request_id, None)
        params = request.kv_transfer_params or {}
        if params.get(LOAD_PARAM) is not True:
            return 0, False
        hashes = request.block_hashes
        last = min(len(hashes), (request.num_tokens - 1) // self.block_size)
        start = end = num_computed_tokens // self.block_size
        while end < last and self.store.has(hashes[end]):
            end += 1
        if end == start:
            return 0, False
        self._pending[request.request_id] = (start, end)
        return end * self.block_size - num_computed_tokens, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        span = self._pending.pop(request.request_id, None)
        if span is None or num_external_tokens <= 0:
            return
        ids = blocks.get_block_ids()[0]
        hashes = request.block_hashes
        start = span[0]
        end = start + num_external_tokens // self.block_size
        self._load_plan += [(hashes[i], ids[i]) for i in range(start, end)]
        self._saved_upto[request.request_id] = end  # loaded blocks are in the store already

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = StoreMeta(loads=self._load_plan)
        self._load_plan = []
        computed = {r.req_id: r.num_computed_tokens
                    for r in scheduler_output.scheduled_new_reqs}
        cached = scheduler_output.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
        planned: set[bytes] = set()
        for req_id, n in scheduler_output.num_scheduled_tokens.items():
            request = self._requests.get(req_id)
            if request is None or self._manager is None or req_id not in computed:
                continue
            full = min(len(request.block_hashes), (computed[req_id] + n) // self.block_size)
            start = self._saved_upto.get(req_id, 0)
            if full <= start:
                continue
            ids = self._manager.get_blocks(req_id).get_block_ids()[0]
            for i in range(start, min(full, len(ids))):
                h = request.block_hashes[i]
                if h not in planned and not self.store.has(h):
                    planned.add(h)
                    meta.saves.append((h, ids[i]))
            self._saved_upto[req_id] = full
        return meta

    def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()

    def request_finished(self, request: Request,
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._requests.pop(request.request_id, None)
        self._saved_upto.pop(request.request_id, None)
        self._pending.pop(request.request_id, None)
        return False, None

    # -- worker half ---------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._kv = [kv_caches[name] for name in sorted(kv_caches)]

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, StoreMeta)
        t0 = time.perf_counter()
        for key, block_id in meta.loads:
            try:
                self._load_block(key, block_id)
                self._stats.data["loaded_blocks"] += 1
            except StoreError as exc:
                log.warning("KV store: recomputing block %d: %s", block_id, exc)
                self._failed.add(block_id)
                self._stats.data["load_errors"] += 1
        self._stats.data["load_s"] += time.perf_counter() - t0

    def _load_block(self, key: bytes, block_id: int) -> None:
        entry = self.store.load(key)
        like = self._kv[0][block_id]
        want = (len(self._kv), *like.shape)
        if entry.shape != want or entry.dtype != str(like.dtype):
            raise StoreError(f"entry {entry.shape} {entry.dtype} does not fit this engine's "
                             f"blocks {want} {like.dtype}")
        flat = torch.frombuffer(bytearray(entry.payload), dtype=torch.uint8)
        data = flat.view(like.dtype).view(want)
        for layer, kv in enumerate(self._kv):
            kv[block_id].copy_(data[layer])

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        return  # whole blocks are saved after the forward pass (wait_for_save)

    def wait_for_save(self) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, StoreMeta)
        t0 = time.perf_counter()
        for key, block_id in meta.saves:
            block = torch.stack([kv[block_id] for kv in self._kv]).contiguous()
            entry = BlockEntry(tuple(block.shape), str(block.dtype),
                               block.view(torch.uint8).numpy().tobytes())
            try:
                if self.store.save(key, entry):
                    self._stats.data["saved_blocks"] += 1
            except OSError as exc:
                log.warning("KV store: block %d not saved: %s", block_id, exc)
                self._stats.data["save_errors"] += 1
        self._stats.data["save_s"] += time.perf_counter() - t0

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed = self._failed, set()
        return failed

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        if self._stats.is_empty():
            return None
        out, self._stats = self._stats, StoreStats()
        return out

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None
                                 ) -> KVConnectorStats | None:
        return StoreStats(data=dict(data or {}))

    @classmethod
    def build_prom_metrics(cls, vllm_config: VllmConfig,
                           metric_types: dict[type[PromMetric], type[PromMetricT]],
                           labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]
                           ) -> KVConnectorPromMetrics | None:
        return _Prom(vllm_config, metric_types, labelnames, per_engine_labelvalues)
