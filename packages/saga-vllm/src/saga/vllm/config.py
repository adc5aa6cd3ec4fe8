"""`SagaSchedulerConfig`: which SAGA parts run inside vLLM's scheduler, and their knobs.

The scheduler is built by vLLM itself (in the engine-core process when multiprocessing is on),
so the config cannot be handed over as a Python object. It travels as plain data instead:
``vllm_config.additional_config["saga"]`` (a dict; vLLM pickles the whole config into the
engine-core process) or, failing that, the ``SAGA_VLLM_CONFIG`` environment variable (JSON),
which child processes inherit. With every part off the scheduler is vLLM's stock one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from saga.policy.errors import SagaConfigError
from saga.policy.eviction.walru import WALRU_ALPHA, WALRU_BETA, WALRU_GAMMA, check_walru_weights
from saga.policy.ttl import TTL_MAX_S

ENV_VAR = "SAGA_VLLM_CONFIG"
QueueKind = Literal["fcfs", "bfs", "dfs", "hybrid"]
_QUEUES: tuple[str, ...] = ("fcfs", "bfs", "dfs", "hybrid")


@dataclass(frozen=True)
class SagaSchedulerConfig:
    """Switches and knobs of :class:`~saga.vllm.scheduler.SagaScheduler`.

    - ``walru``: evict free cached blocks by ``walru_score`` (``alpha``/``beta``/``gamma``)
      instead of vLLM's LRU order.
    - ``ttl``: pin a session's blocks through its pending tool call for ``ToolCallTTL``
      (at most ``ttl_max_s``); pins may hold at most ``pin_cap_fraction`` of the pool.
      ``default_tool_p95_s`` is the p95 assumed for a tool before any latency was observed.
    - ``queue``: waiting-queue order; ``hybrid_max_active`` bounds the hybrid's active tasks.
    - ``afs``: order sessions by AFS (tenant credit, then urgency from ``deadline_s``) instead
      of the queue order; ``afs_capacity_tokens_per_s`` is the instance capacity AFS shares.
    - ``pending_tool_reuse``: reuse probability given to the blocks of a call that ends in a
      tool (the session comes back); used unless the request carries ``reuse_prob``.
    - ``marker_path``: if set, the scheduler writes its pid and class there when built (lets a
      test prove it runs in the engine-core process).
    """

    walru: bool = False
    alpha: float = WALRU_ALPHA
    beta: float = WALRU_BETA
    gamma: float = WALRU_GAMMA
    ttl: bool = False
    ttl_max_s: float = TTL_MAX_S
    default_tool_p95_s: float = 30.0
    pin_cap_fraction: float = 0.5
    queue: QueueKind = "fcfs"
    hybrid_max_active: int = 32
    afs: bool = False
    afs_capacity_tokens_per_s: float = 2000.0
    pending_tool_reuse: float = 0.95
    marker_path: str | None = None

    def __post_init__(self) -> None:
        for name in ("walru", "ttl", "afs"):
            if not isinstance(getattr(self, name), bool):
                raise SagaConfigError(
                    f"SagaSchedulerConfig.{name} must be a bool, got {getattr(self, name)!r}")
        check_walru_weights(self.alpha, self.beta, self.gamma)
        if not (self.ttl_max_s >= 0 and math.isfinite(self.ttl_max_s)):
            raise SagaConfigError(
                f"SagaSchedulerConfig.ttl_max_s must be finite and >= 0, got {self.ttl_max_s}")
        if not (self.default_tool_p95_s > 0 and math.isfinite(self.default_tool_p95_s)):
            raise SagaConfigError("SagaSchedulerConfig.default_tool_p95_s must be finite and > 0, "
                                  f"got {self.default_tool_p95_s}")
        if not 0.0 <= self.pin_cap_fraction <= 1.0:
            raise SagaConfigError("SagaSchedulerConfig.pin_cap_fraction must be in [0, 1], "
                                  f"got {self.pin_cap_fraction}")
        if self.queue not in _QUEUES:
            raise SagaConfigError(
                f"SagaSchedulerConfig.queue must be one of {_QUEUES}, got {self.queue!r}")
        if self.hybrid_max_active < 1:
            raise SagaConfigError("SagaSchedulerConfig.hybrid_max_active must be >= 1, "
                                  f"got {self.hybrid_max_active}")
        if not (self.afs_capacity_tokens_per_s > 0 and math.isfinite(
                self.afs_capacity_tokens_per_s)):
            raise SagaConfigError("SagaSchedulerConfig.afs_capacity_tokens_per_s must be finite "
                                  f"and > 0, got {self.afs_capacity_tokens_per_s}")
        if not 0.0 <= self.pending_tool_reuse <= 1.0:
            raise SagaConfigError("SagaSchedulerConfig.pending_tool_reuse must be in [0, 1], "
                                  f"got {self.pending_tool_reuse}")

    @classmethod
    def all_on(cls, **overrides: Any) -> SagaSchedulerConfig:
        """Every SAGA part on (WA-LRU, TTL pins, hybrid queue); AFS stays opt-in."""
        base: dict[str, Any] = {"walru": True, "ttl": True, "queue": "hybrid"}
        base.update(overrides)
        return cls(**base)

    @property
    def stock(self) -> bool:
        """True when nothing differs from vLLM's own scheduler."""
        return not (self.walru or self.ttl or self.afs or self.queue != "fcfs")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what travels in ``additional_config["saga"]``)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON for the ``SAGA_VLLM_CONFIG`` environment variable."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SagaSchedulerConfig:
        """Build from plain data, rejecting unknown keys by name."""
        if not isinstance(data, Mapping):
            raise SagaConfigError(
                f"SAGA scheduler config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise SagaConfigError(
                f"unknown SagaSchedulerConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def resolve(cls, vllm_config: Any = None) -> SagaSchedulerConfig:
        """The config for a scheduler: ``additional_config["saga"]``, else ``$SAGA_VLLM_CONFIG``,
        else all off (stock behaviour)."""
        additional = getattr(vllm_config, "additional_config", None)
        if isinstance(additional, Mapping) and additional.get("saga") is not None:
            raw = additional["saga"]
            if isinstance(raw, SagaSchedulerConfig):
                return raw
            return cls.from_dict(raw)
        env = os.environ.get(ENV_VAR)
        if env:
            try:
                data = json.loads(env)
            except ValueError as exc:
                raise SagaConfigError(f"${ENV_VAR} is not valid JSON: {exc}") from exc
            return cls.from_dict(data)
        return cls()


__all__ = ["ENV_VAR", "QueueKind", "SagaSchedulerConfig"]
