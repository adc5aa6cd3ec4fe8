"""Model and cluster specifications, and the reference deployment's computed invariants.

Every capacity SAGA reasons about (bytes of KV per token, blocks that fit an instance, sessions
of 32K tokens that fit) is *computed* here from a handful of hardware and model facts, so a reader
can check each constant against its source and change one fact without hunting for derived numbers.

Sources of the constants:
- Llama-3-70B: Meta's model card / ``config.json`` (80 layers, 64 attention heads, 8 KV heads,
  hidden 8192 -> head dim 128); 70.6 B parameters.
- A100-80GB SXM: 80 GiB HBM2e (``nvidia-smi`` reports 81920 MiB), NVLink 3 at 600 GB/s
  (bidirectional, through NVSwitch on HGX boards).
- HDR InfiniBand: 200 Gb/s = 25 GB/s per port.
- vLLM sizes its KV pool as ``gpu_memory_utilization x HBM - weights - peak activations -
  non-torch memory`` (``gpu_memory_utilization`` defaults to 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saga.policy.errors import SagaConfigError
from saga.policy.swap import SwapTimeModel, pcie_swap_time

GiB = 2**30
GB = 10**9


def _require_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise SagaConfigError(f"{owner}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, as far as its KV cache is concerned."""

    name: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    block_tokens: int
    params: float
    """Parameter count (e.g. 70.6e9); weights take ``params * dtype_bytes`` bytes."""

    def __post_init__(self) -> None:
        _require_positive(
            "ModelSpec", layers=self.layers, heads=self.heads, kv_heads=self.kv_heads,
            head_dim=self.head_dim, dtype_bytes=self.dtype_bytes,
            block_tokens=self.block_tokens, params=self.params)
        if self.heads % self.kv_heads != 0:
            raise SagaConfigError(
                f"ModelSpec.kv_heads ({self.kv_heads}) must divide heads ({self.heads}): "
                "grouped-query attention shares each KV head across heads/kv_heads query heads")

    @property
    def kv_bytes_per_token(self) -> int:
        """``2 (K and V) * layers * kv_heads * head_dim * dtype_bytes``."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_bytes_per_block(self) -> int:
        """KV bytes of one paged block of ``block_tokens`` tokens."""
        return self.kv_bytes_per_token * self.block_tokens

    @property
    def weight_bytes(self) -> float:
        """Bytes of the weights at the model's dtype."""
        return self.params * self.dtype_bytes

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks a session of ``n_tokens`` occupies (the last block may be partly filled)."""
        if n_tokens < 0:
            raise SagaConfigError(f"n_tokens must be >= 0, got {n_tokens}")
        return -(-n_tokens // self.block_tokens)

    def session_kv_bytes(self, n_tokens: int) -> int:
        """KV bytes of the ``n_tokens`` tokens of a session (exact, not rounded to blocks)."""
        if n_tokens < 0:
            raise SagaConfigError(f"n_tokens must be >= 0, got {n_tokens}")
        return n_tokens * self.kv_bytes_per_token


@dataclass(frozen=True)
class ClusterSpec:
    """A GPU cluster carved into tensor-parallel serving instances.

    ``gpu_memory_utilization`` is vLLM's knob (default 0.9): the share of each GPU's HBM the engine
    may use; the rest is left for the CUDA context, NCCL and fragmentation. From that share the
    engine subtracts the weights and ``activation_reserve_bytes_per_gpu`` (vLLM measures this with
    a profiling forward pass of ``max_num_batched_tokens`` tokens; ~2 GiB per GPU for a 70B model at
    TP4 with 8K batched tokens, plus CUDA graphs) and gives the remainder to the KV block pool.
    """

    nodes: int
    gpus_per_node: int
    gpu_name: str
    gpu_hbm_bytes: int
    tp: int
    instances: int
    nvlink_bytes_per_s: float
    ib_bytes_per_s: float
    dram_bytes_per_node: int
    cpus_per_node: int
    cpu_name: str = "unknown"
    ib_latency_s: float = 5e-6
    pcie: SwapTimeModel = field(default_factory=SwapTimeModel)
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes_per_gpu: int = 2 * GiB
    dram_kv_fraction: float = 0.8
    """Share of a node's DRAM given to the KV swap tier (the rest: OS, Ray object store, engine)."""

    def __post_init__(self) -> None:
        _require_positive(
            "ClusterSpec", nodes=self.nodes, gpus_per_node=self.gpus_per_node,
            gpu_hbm_bytes=self.gpu_hbm_bytes, tp=self.tp, instances=self.instances,
            nvlink_bytes_per_s=self.nvlink_bytes_per_s, ib_bytes_per_s=self.ib_bytes_per_s,
            dram_bytes_per_node=self.dram_bytes_per_node, cpus_per_node=self.cpus_per_node)
        if self.instances * self.tp != self.nodes * self.gpus_per_node:
            raise SagaConfigError(
                f"ClusterSpec: instances*tp ({self.instances}*{self.tp}="
                f"{self.instances * self.tp}) must equal nodes*gpus_per_node ({self.nodes}*"
                f"{self.gpus_per_node}={self.nodes * self.gpus_per_node}); every GPU serves "
                "exactly one instance")
        if self.gpus_per_node % self.tp != 0:
            raise SagaConfigError(
                f"ClusterSpec.tp ({self.tp}) must divide gpus_per_node ({self.gpus_per_node}): "
                "a tensor-parallel group stays inside one node's NVLink domain")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SagaConfigError(
                "ClusterSpec.gpu_memory_utilization must be in (0, 1], got "
                f"{self.gpu_memory_utilization}")
        if not 0 < self.dram_kv_fraction <= 1:
            raise SagaConfigError(
                f"ClusterSpec.dram_kv_fraction must be in (0, 1], got {self.dram_kv_fraction}")
        if self.activation_reserve_bytes_per_gpu < 0 or self.ib_latency_s < 0:
            raise SagaConfigError(
                "ClusterSpec.activation_reserve_bytes_per_gpu and ib_latency_s must be >= 0")

    @property
    def gpus(self) -> int:
        """All GPUs of the cluster."""
        return self.nodes * self.gpus_per_node

    @property
    def instances_per_node(self) -> int:
        """Serving instances that share one node (and its DRAM tier)."""
        return self.gpus_per_node // self.tp

    @property
    def hbm_bytes_per_instance(self) -> int:
        """Raw HBM of one instance's ``tp`` GPUs."""
        return self.gpu_hbm_bytes * self.tp

    def kv_hbm_bytes_per_instance(self, model: ModelSpec) -> float:
        """HBM left for KV: ``tp*HBM*util - weights - tp*activation_reserve``.

        Raises when the weights do not fit, or when ``tp`` exceeds ``kv_heads`` (vLLM would then
        replicate KV heads across GPUs, which this accounting does not model).
        """
        if model.kv_heads % self.tp != 0:
            raise SagaConfigError(
                f"tp ({self.tp}) must divide {model.name}.kv_heads ({model.kv_heads}); "
                "otherwise KV heads are replicated and per-token KV bytes grow")
        usable = self.hbm_bytes_per_instance * self.gpu_memory_utilization
        left = usable - model.weight_bytes - self.tp * self.activation_reserve_bytes_per_gpu
        if left <= 0:
            raise SagaConfigError(
                f"{model.name} does not fit an instance of {self.tp}x{self.gpu_name}: weights "
                f"{model.weight_bytes / GiB:.1f} GiB + reserve exceed {usable / GiB:.1f} GiB; "
                "raise tp or gpu_memory_utilization")
        return left

    def kv_blocks_per_instance(self, model: ModelSpec) -> int:
        """Whole KV blocks that fit the instance's KV pool."""
        return int(self.kv_hbm_bytes_per_instance(model) // model.kv_bytes_per_block)

    def dram_kv_bytes_per_node(self) -> float:
        """DRAM bytes the swap tier may use on one node."""
        return self.dram_bytes_per_node * self.dram_kv_fraction

    def dram_blocks_per_node(self, model: ModelSpec) -> int:
        """Whole KV blocks the node's DRAM tier holds (shared by its instances)."""
        return int(self.dram_kv_bytes_per_node() // model.kv_bytes_per_block)

    def sessions_per_instance(self, model: ModelSpec, n_tokens: int) -> int:
        """Sessions of ``n_tokens`` tokens whose KV blocks fit one instance at once."""
        per_session = model.blocks_for(n_tokens)
        if per_session == 0:
            raise SagaConfigError("n_tokens must be > 0 to count sessions")
        return self.kv_blocks_per_instance(model) // per_session

    def ib_transfer_time(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` between nodes: ``latency + bytes / IB bandwidth`` (the
        link-time formula of :func:`pcie_swap_time`, at efficiency 1)."""
        return pcie_swap_time(nbytes, self.ib_latency_s, self.ib_bytes_per_s, 1.0)


LLAMA3_70B = ModelSpec(
    name="Llama-3-70B-Instruct", layers=80, heads=64, kv_heads=8, head_dim=128, dtype_bytes=2,
    block_tokens=16, params=70.6e9)
"""Llama-3-70B-Instruct in FP16 with vLLM's default 16-token blocks."""

REFERENCE_CLUSTER = ClusterSpec(
    nodes=8, gpus_per_node=8, gpu_name="A100-SXM4-80GB", gpu_hbm_bytes=80 * GiB, tp=4,
    instances=16, nvlink_bytes_per_s=600 * GB, ib_bytes_per_s=200e9 / 8,
    dram_bytes_per_node=2**40,  # 16 x 64 GiB DIMMs, sold as "1 TB"
    cpus_per_node=128, cpu_name="2x AMD EPYC 7763 (64 cores each)",
    pcie=SwapTimeModel())
"""8 nodes x 8 A100-80GB, NVLink 600 GB/s, HDR IB 200 Gb/s, 1 TB DDR4-3200 per node, 16 x TP4."""


@dataclass(frozen=True)
class ReferenceReport:
    """Derived quantities of a deployment; every field is computed, none is typed in."""

    model: str
    cluster_gpus: int
    kv_bytes_per_token: int
    kv_bytes_per_block: int
    session_tokens: int
    session_kv_bytes: int
    session_kv_gb: float
    session_kv_gib: float
    weight_bytes: float
    kv_hbm_bytes_per_instance: float
    kv_blocks_per_instance: int
    sessions_per_instance: int
    sessions_per_cluster: int
    dram_blocks_per_node: int
    dram_sessions_per_node: int
    pcie_swap_s_per_session: float
    ib_transfer_s_per_session: float


def check_reference_invariants(
    model: ModelSpec = LLAMA3_70B, cluster: ClusterSpec = REFERENCE_CLUSTER,
    session_tokens: int = 32 * 1024,
) -> ReferenceReport:
    """Compute the deployment's capacities and check that a session fits an instance.

    Raises :class:`SagaConfigError` if one session of ``session_tokens`` does not fit an
    instance's KV pool (the deployment could not serve the workload at all).
    """
    session_bytes = model.session_kv_bytes(session_tokens)
    per_instance = cluster.sessions_per_instance(model, session_tokens)
    if per_instance < 1:
        raise SagaConfigError(
            f"a {session_tokens}-token session ({session_bytes / GiB:.1f} GiB) does not fit one "
            f"instance's KV pool ({cluster.kv_hbm_bytes_per_instance(model) / GiB:.1f} GiB)")
    dram_blocks = cluster.dram_blocks_per_node(model)
    return ReferenceReport(
        model=model.name,
        cluster_gpus=cluster.gpus,
        kv_bytes_per_token=model.kv_bytes_per_token,
        kv_bytes_per_block=model.kv_bytes_per_block,
        session_tokens=session_tokens,
        session_kv_bytes=session_bytes,
        session_kv_gb=session_bytes / GB,
        session_kv_gib=session_bytes / GiB,
        weight_bytes=model.weight_bytes,
        kv_hbm_bytes_per_instance=cluster.kv_hbm_bytes_per_instance(model),
        kv_blocks_per_instance=cluster.kv_blocks_per_instance(model),
        sessions_per_instance=per_instance,
        sessions_per_cluster=per_instance * cluster.instances,
        dram_blocks_per_node=dram_blocks,
        dram_sessions_per_node=dram_blocks // model.blocks_for(session_tokens),
        pcie_swap_s_per_session=cluster.pcie.seconds(session_bytes),
        ib_transfer_s_per_session=cluster.ib_transfer_time(session_bytes),
    )


__all__ = [
    "GB",
    "LLAMA3_70B",
    "REFERENCE_CLUSTER",
    "ClusterSpec",
    "GiB",
    "ModelSpec",
    "ReferenceReport",
    "check_reference_invariants",
]
