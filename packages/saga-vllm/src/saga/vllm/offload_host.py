"""A host-memory KV transfer worker so vLLM's OffloadingConnector also runs on the CPU build.

vLLM 0.32's ``CPUOffloadingSpec`` keeps the scheduler half of the DRAM tier (the
``CPUOffloadingManager`` with its cache policy) platform-neutral, but its worker half moves
blocks with CUDA/XPU streams and batched ``cudaMemcpy`` kernels, and
``CPUOffloadingSpec.get_worker`` (``vllm/v1/kv_offload/cpu/spec.py``) refuses any other
platform with "CPU Offloading is currently only supported on CUDA-alike and XPU GPUs". On the
CPU build the "device" KV cache is itself in DRAM, so the tier's transfers are plain memory
copies: :class:`HostOffloadingSpec` is the stock spec with only the worker swapped for
:class:`HostOffloadingWorker`, loaded through vLLM's out-of-tree spec hook
(``kv_connector_extra_config = {"spec_name": "HostOffloadingSpec", "spec_module_path":
"saga.vllm.offload_host"}``). On CUDA/XPU it defers to the stock worker, so the same config runs
unchanged there; :func:`saga.vllm.offload.offload_engine_kwargs` picks the stock spec on those
platforms anyway.

Copies are synchronous: the connector submits stores for the previous step's KV and loads for
this step before the forward pass, on the same thread, so a finished copy is always ordered
correctly. Only the direct (worker-private) layout is supported — the canonical cross-rank
layout needs the shared mmap region, which is a multi-GPU feature.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from vllm.platforms import current_platform
from vllm.v1.kv_offload.base import (
    BlockIDsLoadStoreSpec,
    GPULoadStoreSpec,
    OffloadingWorker,
    TransferResult,
)
from vllm.v1.kv_offload.cpu.spec import CPUOffloadingSpec

HOST_SPEC_NAME = "HostOffloadingSpec"
HOST_SPEC_MODULE = "saga.vllm.offload_host"


def chunk_sub_blocks(chunk_ids: Any, blocks_per_chunk: int, skip: int, count: int) -> Any:
    """Device-block-sized slots inside DRAM chunks: ``count`` of them, skipping ``skip`` first.

    Chunk ``c`` holds slots ``c·bpc … c·bpc + bpc − 1``; a transfer may start mid-chunk when the
    request's first block is not chunk-aligned (vLLM passes that offset as ``block_indices``).
    """
    ids = np.asarray(chunk_ids, dtype=np.int64)
    slots = (ids[:, None] * blocks_per_chunk + np.arange(blocks_per_chunk)[None, :]).ravel()
    return slots[skip:skip + count]


class HostOffloadingWorker(OffloadingWorker):  # type: ignore[misc]
    """Moves KV blocks between the engine's KV cache and a DRAM buffer with ``index_copy``.

    The DRAM buffer mirrors vLLM's layout: per KV tensor, ``num_chunks`` rows of
    ``blocks_per_chunk`` device pages, viewed here as one row per device page.
    """

    def __init__(self, kv_caches: Any, blocks_per_chunk: int, num_chunks: int) -> None:
        self._bpc = blocks_per_chunk
        self._device: list[torch.Tensor] = []
        self._host: list[torch.Tensor] = []
        for t in kv_caches.tensors:
            dev = t.tensor.view(torch.int8).view(-1, t.page_size_bytes)
            self._device.append(dev)
            self._host.append(torch.zeros((num_chunks * blocks_per_chunk, t.page_size_bytes),
                                          dtype=torch.int8))
        # Tensors each KV-cache group reads; layers aliasing one tensor are copied once.
        self._group_tensors: list[list[int]] = [
            sorted({ref.tensor_idx for ref in refs}) for refs in kv_caches.group_data_refs]
        self._finished: list[TransferResult] = []

    def _transfer(self, job_id: int, device_spec: Any, host_spec: Any, to_host: bool) -> bool:
        if not isinstance(device_spec, GPULoadStoreSpec) or not isinstance(
                host_spec, BlockIDsLoadStoreSpec):
            raise TypeError(f"unexpected load/store specs {type(device_spec).__name__}, "
                            f"{type(host_spec).__name__}")
        t0 = time.perf_counter()
        dev_ids = np.asarray(device_spec.block_ids, dtype=np.int64)
        host_chunks = np.asarray(host_spec.block_ids, dtype=np.int64)
        dev_off = host_off = 0
        nbytes = 0
        for g, (size, first) in enumerate(zip(device_spec.group_sizes,
                                              device_spec.block_indices, strict=True)):
            if size == 0:
                continue
            skip = int(first) % self._bpc
            n_chunks = -(-(size + skip) // self._bpc)
            dev = torch.from_numpy(dev_ids[dev_off:dev_off + size])
            host = torch.from_numpy(chunk_sub_blocks(
                host_chunks[host_off:host_off + n_chunks], self._bpc, skip, size))
            for t_idx in self._group_tensors[g]:
                if to_host:
                    self._host[t_idx].index_copy_(0, host, self._device[t_idx].index_select(0, dev))
                else:
                    self._device[t_idx].index_copy_(0, dev, self._host[t_idx].index_select(0, host))
                nbytes += size * self._device[t_idx].shape[1]
            dev_off += size
            host_off += n_chunks
        self._finished.append(TransferResult(job_id=job_id, success=True, transfer_size=nbytes,
                                             transfer_time=time.perf_counter() - t0))
        return True

    def submit_store(self, job_id: int, src_spec: Any, dst_spec: Any) -> bool:
        """Device → DRAM (completes before returning)."""
        return self._transfer(job_id, src_spec, dst_spec, to_host=True)

    def submit_load(self, job_id: int, src_spec: Any, dst_spec: Any) -> bool:
        """DRAM → device (completes before returning)."""
        return self._transfer(job_id, dst_spec, src_spec, to_host=False)

    def get_finished(self) -> list[TransferResult]:
        done, self._finished = self._finished, []
        return done

    def wait(self, job_ids: set[int]) -> None:
        """Nothing to wait for: every copy finished when it was submitted."""


class HostOffloadingSpec(CPUOffloadingSpec):  # type: ignore[misc]
    """vLLM's CPU offloading spec with a host-copy worker where no GPU stream exists.

    Scheduler side (``get_manager``: chunk pool, cache policy, ``cpu_bytes_to_use`` sizing) is
    the stock one, so hits, evictions and policies behave exactly as on the CUDA build.
    """

    def get_worker(self, kv_caches: Any) -> Any:
        if current_platform.is_cuda_alike() or current_platform.is_xpu():
            return super().get_worker(kv_caches)
        worker: HostOffloadingWorker | None = getattr(self, "_worker", None)
        if worker is None:
            if getattr(self.config, "canonical_layout", False):
                raise ValueError("HostOffloadingSpec supports the direct KV layout only; "
                                 "drop the canonical layout option from "
                                 "kv_connector_extra_config")
            worker = HostOffloadingWorker(kv_caches, self.blocks_per_chunk, self.num_chunks)
            self._worker = worker
        return worker


__all__ = ["HOST_SPEC_MODULE", "HOST_SPEC_NAME", "HostOffloadingSpec", "HostOffloadingWorker",
           "chunk_sub_blocks"]
