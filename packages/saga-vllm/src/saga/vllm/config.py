"""`SagaSchedulerConfig`: which preset vLLM's scheduler runs, layer overrides and engine knobs.

The scheduler's policies come from a preset (:data:`saga.policy.presets.PRESETS`), the same data
the simulator and the coordinator are configured from, so an engine and its simulation run the
same policy objects. The default preset, ``vllm_apc``, is vLLM's own scheduler.

The scheduler is built by vLLM itself (in the engine-core process when multiprocessing is on),
so the config cannot be handed over as a Python object. It travels as plain data instead:
``vllm_config.additional_config["saga"]`` (a dict, or just a preset name; vLLM pickles the whole
config into the engine-core process), else the ``SAGA_VLLM_CONFIG`` environment variable (JSON),
else ``SAGA_PRESET`` (a preset name, e.g. for ``vllm serve --scheduler-cls
saga.vllm.scheduler.SagaScheduler``); child processes inherit both variables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from saga.policy import registry
from saga.policy.errors import SagaConfigError
from saga.policy.presets import PRESETS, PolicySpec, Preset, get_preset, policy
from saga.policy.ttl import TTL_MAX_S

ENV_VAR = "SAGA_VLLM_CONFIG"
"""Environment variable holding a whole config as JSON."""
PRESET_ENV_VAR = "SAGA_PRESET"
"""Environment variable holding just a preset name (used when no whole config is given)."""
CONFIG_KEY = "saga"
"""The key of ``vllm_config.additional_config`` SAGA's scheduler config travels under."""
STOCK_PRESET = "vllm_apc"
"""The default preset: vLLM v1 with prefix caching, i.e. vLLM's own scheduler."""
OFF = "off"
"""Layer override that turns an optional layer (``ttl``, ``fairness``) off."""
ENGINE_LAYERS: tuple[str, ...] = ("eviction", "ttl", "queue", "fairness")
"""The preset layers a single engine runs (router and stealing span engines: not the engine's)."""
_OPTIONAL_LAYERS: tuple[str, ...] = ("ttl", "fairness")
_ENGINE_TTL_KWARGS = {"ttl_max": "ttl_max_s", "default_p95_s": "default_tool_p95_s"}


@dataclass(frozen=True)
class SagaSchedulerConfig:
    """The preset :class:`~saga.vllm.scheduler.SagaScheduler` runs, and the engine's knobs.

    - ``preset``: a name of :data:`~saga.policy.presets.PRESETS` (default ``vllm_apc``: stock).
    - ``eviction``, ``ttl``, ``queue``, ``fairness``: replace that layer of the preset by the
      registry entry of this name (``saga.policy.registry.names(layer)``); ``"off"`` turns
      ``ttl`` or ``fairness`` off; None keeps the preset's.
    - ``policy_kwargs``: per layer, keyword arguments over the layer's spec, e.g.
      ``{"eviction": {"alpha": 0.4}, "queue": {"max_active": 8}}``.
    - ``ttl_max_s``, ``default_tool_p95_s``: every TTL policy's cap and the p95 it assumes for
      a tool never observed (passed to the TTL factory as ``ttl_max`` / ``default_p95_s``;
      None: saga-aeg's vague prior, what the simulator and the coordinator assume too).
    - ``pin_cap_fraction``: pins may hold at most this share of the pool.
    - ``pending_tool_reuse``: reuse probability given to the blocks of a call that ends in a
      tool when no AEG knows better; used unless the request carries ``reuse_prob``.
    - ``afs_capacity_tokens_per_s``: the instance capacity the fairness layer shares.
    - ``marker_path``: if set, the scheduler writes its pid and class there when built (lets a
      test prove it runs in the engine-core process).
    """

    preset: str = STOCK_PRESET
    eviction: str | None = None
    ttl: str | None = None
    queue: str | None = None
    fairness: str | None = None
    policy_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ttl_max_s: float = TTL_MAX_S
    default_tool_p95_s: float | None = None
    pin_cap_fraction: float = 0.5
    pending_tool_reuse: float = 0.95
    afs_capacity_tokens_per_s: float = 2000.0
    marker_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.preset, str):
            raise SagaConfigError(f"SagaSchedulerConfig.preset must be a preset name, got "
                                  f"{self.preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
        get_preset(self.preset)
        self._check_layer_names()
        self._check_policy_kwargs()
        self._check_numbers()
        self._check_builds()

    def _check_layer_names(self) -> None:
        for layer in ENGINE_LAYERS:
            name = getattr(self, layer)
            if name is None:
                continue
            valid = registry.names(layer) + ((OFF,) if layer in _OPTIONAL_LAYERS else ())
            if not isinstance(name, str) or name not in valid:
                raise SagaConfigError(
                    f"SagaSchedulerConfig.{layer} must be one of {', '.join(valid)} (or null "
                    f"for the preset's), got {name!r}")

    def _check_policy_kwargs(self) -> None:
        kw = self.policy_kwargs
        if not isinstance(kw, Mapping) or not all(
                isinstance(v, Mapping) and all(isinstance(k, str) for k in v) for v in kw.values()):
            raise SagaConfigError("SagaSchedulerConfig.policy_kwargs must map a layer to a dict "
                                  f"of keyword arguments, got {kw!r}")
        unknown = sorted(str(layer) for layer in kw if layer not in ENGINE_LAYERS)
        if unknown:
            raise SagaConfigError(f"SagaSchedulerConfig.policy_kwargs: unknown layer(s) "
                                  f"{unknown}; valid: {', '.join(ENGINE_LAYERS)}")
        for key, knob in _ENGINE_TTL_KWARGS.items():
            if key in kw.get("ttl", {}):
                raise SagaConfigError(f"SagaSchedulerConfig.policy_kwargs['ttl'][{key!r}]: "
                                      f"set the engine knob {knob} instead")
        # A plain copy: the config must stay plain data (dataclasses.asdict, JSON, pickle).
        object.__setattr__(self, "policy_kwargs", {k: dict(v) for k, v in kw.items()})

    def _check_numbers(self) -> None:
        if not (self.ttl_max_s >= 0 and math.isfinite(self.ttl_max_s)):
            raise SagaConfigError(
                f"SagaSchedulerConfig.ttl_max_s must be finite and >= 0, got {self.ttl_max_s}")
        p95 = self.default_tool_p95_s
        if p95 is not None and not (p95 > 0 and math.isfinite(p95)):
            raise SagaConfigError("SagaSchedulerConfig.default_tool_p95_s must be finite and > 0, "
                                  f"got {self.default_tool_p95_s}")
        if not 0.0 <= self.pin_cap_fraction <= 1.0:
            raise SagaConfigError("SagaSchedulerConfig.pin_cap_fraction must be in [0, 1], "
                                  f"got {self.pin_cap_fraction}")
        if not (self.afs_capacity_tokens_per_s > 0 and math.isfinite(
                self.afs_capacity_tokens_per_s)):
            raise SagaConfigError("SagaSchedulerConfig.afs_capacity_tokens_per_s must be finite "
                                  f"and > 0, got {self.afs_capacity_tokens_per_s}")
        if not 0.0 <= self.pending_tool_reuse <= 1.0:
            raise SagaConfigError("SagaSchedulerConfig.pending_tool_reuse must be in [0, 1], "
                                  f"got {self.pending_tool_reuse}")

    def _check_builds(self) -> None:
        """Build every engine layer once, so bad keyword arguments fail here, by layer, and not
        inside vLLM's engine-core process."""
        preset = self.effective_preset()
        for layer in ENGINE_LAYERS:
            spec: PolicySpec[Any] | None = getattr(preset, layer)
            if spec is None:
                continue
            extra = {"capacity_per_s": self.afs_capacity_tokens_per_s} if (
                layer == "fairness") else {}
            try:
                spec.build(**extra)
            except SagaConfigError:
                raise
            except (TypeError, ValueError) as exc:
                raise SagaConfigError(f"SagaSchedulerConfig: the {layer} policy "
                                      f"{spec.describe()} cannot be built: {exc}") from None

    # -- the preset ------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SagaSchedulerConfig:
        """The preset called ``name`` with ``overrides`` (any field, e.g. ``ttl="off"``,
        ``queue="bfs"``, ``pin_cap_fraction=0.3``); unknown names or fields are rejected with
        the valid ones listed."""
        return cls.from_dict({**overrides, "preset": name})

    def _layer_spec(self, base: Preset, layer: str) -> PolicySpec[Any] | None:
        spec: PolicySpec[Any] | None = getattr(base, layer)
        name = getattr(self, layer)
        if name == OFF:
            spec = None
        elif name is not None and (spec is None or spec.name != name):
            spec = policy(layer, name)  # another policy: the preset's kwargs were for its own
        extra = self.policy_kwargs.get(layer)
        if extra:
            if spec is None:
                raise SagaConfigError(f"SagaSchedulerConfig.policy_kwargs[{layer!r}] is set but "
                                      f"the {layer} layer is off in this config")
            spec = spec.with_kwargs(**extra)
        if layer == "ttl" and spec is not None:
            spec = spec.with_kwargs(ttl_max=self.ttl_max_s, default_p95_s=self.default_tool_p95_s)
        return spec

    def effective_preset(self) -> Preset:
        """The named preset with this config's layer overrides, policy kwargs and TTL knobs
        applied: what the scheduler builds its policies from (``.build()``), and what a
        simulation of this engine should run."""
        base = get_preset(self.preset)
        changes: dict[str, Any] = {layer: self._layer_spec(base, layer)
                                   for layer in ENGINE_LAYERS}
        tweaks = [f"{layer}={getattr(self, layer)}" for layer in ENGINE_LAYERS
                  if getattr(self, layer) is not None]
        tweaks += [f"{layer}_kwargs" for layer in sorted(self.policy_kwargs)
                   if self.policy_kwargs[layer]]
        if not tweaks:
            return replace(base, **changes)
        return base.derive(f"{base.name}[{','.join(tweaks)}]",
                           f"{base.description} Engine overrides: {', '.join(tweaks)}.",
                           **changes)

    @property
    def stock(self) -> bool:
        """True when the scheduler behaves exactly as vLLM's own: no TTL pins, no fairness,
        FCFS order and an eviction policy vLLM's free-block queue enacts natively."""
        from saga.policy.queueing import FCFSQueue
        from saga.vllm.policies import eviction_enactment

        p = self.effective_preset()
        return (p.ttl is None and p.fairness is None and p.queue.factory is FCFSQueue
                and eviction_enactment(p.eviction.build()).native)

    # -- plain data ------------------------------------------------------------------------------
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
        """The config for a scheduler: ``additional_config["saga"]`` (a dict or a preset name),
        else ``$SAGA_VLLM_CONFIG`` (JSON), else ``$SAGA_PRESET`` (a preset name), else the
        stock preset."""
        additional = getattr(vllm_config, "additional_config", None)
        if isinstance(additional, Mapping) and additional.get(CONFIG_KEY) is not None:
            raw = additional[CONFIG_KEY]
            if isinstance(raw, SagaSchedulerConfig):
                return raw
            if isinstance(raw, str):
                return cls.from_preset(raw)
            return cls.from_dict(raw)
        env = os.environ.get(ENV_VAR)
        if env:
            try:
                data = json.loads(env)
            except ValueError as exc:
                raise SagaConfigError(f"${ENV_VAR} is not valid JSON: {exc}") from exc
            return cls.from_dict(data)
        name = os.environ.get(PRESET_ENV_VAR)
        if name:
            return cls.from_preset(name.strip())
        return cls()


__all__ = ["CONFIG_KEY", "ENGINE_LAYERS", "ENV_VAR", "OFF", "PRESET_ENV_VAR", "STOCK_PRESET",
           "SagaSchedulerConfig"]
