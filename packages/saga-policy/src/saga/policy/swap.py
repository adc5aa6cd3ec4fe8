"""PCIe swap time between the HBM and DRAM tiers."""

from __future__ import annotations

from dataclasses import dataclass

from saga.policy.errors import SagaConfigError

PCIE_GEN4_X16_BYTES_PER_S = 32e9
"""PCIe Gen4 x16 theoretical bandwidth: 16 GT/s x 16 lanes x 128b/130b ~= 31.5 GB/s (32 GB/s)."""


def pcie_swap_time(nbytes: float, latency_s: float, bandwidth_bytes_per_s: float,
                   efficiency: float) -> float:
    """The spec's PCIe swap time: ``t = latency + bytes / (lanes_bandwidth * efficiency)``."""
    if nbytes < 0:
        raise SagaConfigError(f"nbytes must be >= 0, got {nbytes}")
    if nbytes == 0:
        return 0.0
    return latency_s + nbytes / (bandwidth_bytes_per_s * efficiency)


@dataclass(frozen=True)
class SwapTimeModel:
    """Time to move KV bytes over one PCIe link (one direction), per the spec's formula.

    Defaults: PCIe Gen4 x16 (32 GB/s theoretical), 80 % achievable efficiency (pinned-memory
    cudaMemcpyAsync reaches ~25 GB/s on A100 hosts), 10 us launch + DMA setup latency.
    """

    bandwidth_bytes_per_s: float = PCIE_GEN4_X16_BYTES_PER_S
    efficiency: float = 0.8
    latency_s: float = 10e-6

    def __post_init__(self) -> None:
        if not self.bandwidth_bytes_per_s > 0:
            raise SagaConfigError(
                "SwapTimeModel.bandwidth_bytes_per_s must be > 0, "
                f"got {self.bandwidth_bytes_per_s}")
        if not 0 < self.efficiency <= 1:
            raise SagaConfigError(
                f"SwapTimeModel.efficiency must be in (0, 1], got {self.efficiency}")
        if self.latency_s < 0:
            raise SagaConfigError(f"SwapTimeModel.latency_s must be >= 0, got {self.latency_s}")

    def seconds(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` one way (0 for nothing to move)."""
        return pcie_swap_time(nbytes, self.latency_s, self.bandwidth_bytes_per_s, self.efficiency)
