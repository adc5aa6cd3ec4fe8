"""How long a session's KV stays pinned in HBM while its tool call runs.

Two policies share one interface (:class:`TTLPolicy`):

- SAGA's :func:`tool_call_ttl`: the p95 of the tool's fitted latency, shortened under memory
  pressure, so that 95 % of calls find their cache on return while a busy cache is freed sooner.
- Continuum's (arXiv 2511.02230) cost/benefit TTL, :func:`continuum_ttl`: pin for the time that
  maximises the expected saving (reload cost plus the queueing delay a re-queued request pays)
  minus the time the memory is held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from saga.policy.errors import SagaConfigError, SagaError

FloatArray = npt.NDArray[np.float64]

TTL_MAX_S = 300.0
"""Spec default for TTL_max (seconds)."""

_M = TypeVar("_M")


class UnknownToolError(SagaError, KeyError):
    """A tool with no latency model; register one (or give a default model)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown tool"


@runtime_checkable
class HasP95(Protocol):
    """Any latency model with a 95th percentile (``saga.aeg`` LogNormalLatency fits)."""

    def p95(self) -> float: ...


@runtime_checkable
class HasCDF(Protocol):
    """Any latency model with a CDF ``F(x) = P(latency <= x)``."""

    def cdf(self, x: float) -> float: ...


class LatencyModel(HasP95, HasCDF, Protocol):
    """A latency distribution with both a p95 and a CDF."""


@runtime_checkable
class HasQuantile(HasCDF, Protocol):
    """A latency distribution with a CDF and its inverse (``saga.aeg`` LogNormalLatency fits)."""

    def quantile(self, q: float) -> float: ...


class LatencySource(Protocol):
    """A per-tool latency registry, e.g. ``saga.aeg.latency.ToolLatencyModel``."""

    def latency(self, tool: str) -> LatencyModel: ...

    def observe(self, tool: str, seconds: float) -> None: ...


def aeg_latency_source(default_p95_s: float | None = None) -> LatencySource:
    """A fresh ``saga.aeg`` per-tool log-normal registry (vague prior until tools are observed).

    ``default_p95_s`` shifts the prior of a tool never observed so that its p95 is that many
    seconds (the vague prior's shape kept); None keeps saga-aeg's own prior.
    """
    from saga.aeg.latency import LogNormalLatency, ToolLatencyModel

    if default_p95_s is None:
        return ToolLatencyModel()
    if not (default_p95_s > 0 and math.isfinite(default_p95_s)):
        raise SagaConfigError(f"default_p95_s must be a finite number > 0, got {default_p95_s}")
    unit = LogNormalLatency(mu=0.0, sigma=1.0)
    mu = math.log(default_p95_s) - math.log(unit.p95())
    return ToolLatencyModel(default_prior=LogNormalLatency(mu=mu, sigma=1.0))


class TTLPolicy(Protocol):
    """What the cache asks when a session enters a tool call: how long to pin its KV.

    ``reuse_prob`` (the AEG's probability the session comes back) and ``share`` (the share of
    the HBM pool its KV holds) are what a value-based policy prices; the others ignore them.
    ``observe`` feeds a measured tool duration (a policy without a latency model ignores it);
    ``return_eta`` is the median seconds until a session pinned for ``tool``, ``elapsed_s`` into
    it, comes back (None when the policy has no latency model): what the pin cap ranks by.
    """

    reads_hints: ClassVar[bool]
    """Whether ``ttl`` prices ``reuse_prob``: a deployment computes the AEG's hints for it."""

    def ttl(self, tool: str, pressure: float, *, queue_delay_s: float = 0.0,
            reload_s: float = 0.0, reuse_prob: float = 1.0,
            share: float | None = None) -> float: ...

    def observe(self, tool: str, seconds: float) -> None: ...

    def return_eta(self, tool: str, elapsed_s: float) -> float | None: ...


def _check_ttl_max(ttl_max: float) -> None:
    if not (ttl_max >= 0 and math.isfinite(ttl_max)):
        raise SagaConfigError(f"ttl_max must be a finite number >= 0, got {ttl_max}")


def tool_call_ttl(p95_latency_s: float, pressure: float, ttl_max: float = TTL_MAX_S) -> float:
    """The spec's tool-call TTL: ``clamp(p95 * (1 - 0.5 * pressure), 0, TTL_max)``.

    ``pressure`` is the HBM KV pool's occupancy in [0, 1]; at full pressure the pin is halved.
    """
    if not 0.0 <= pressure <= 1.0:
        raise SagaConfigError(f"pressure must be in [0, 1], got {pressure}")
    if not (p95_latency_s >= 0 and not math.isnan(p95_latency_s)):
        raise SagaConfigError(f"p95_latency_s must be >= 0, got {p95_latency_s}")
    _check_ttl_max(ttl_max)
    return min(max(p95_latency_s * (1.0 - 0.5 * pressure), 0.0), ttl_max)


def pin_return_eta(latency: HasQuantile, elapsed_s: float) -> float:
    """Median time until a pinned session's tool returns, given it has run ``elapsed_s``:
    ``F⁻¹(F(e) + (1 − F(e)) / 2) − e`` (the conditional median of ``T − e`` given ``T > e``).

    What the pin cap ranks by: the pin expected back last is the one to give up (Bélády's rule on
    predicted return times), and the ranking ages — a tool far past its usual latency (heavy tail,
    or a session that will not return) is expected back later, not sooner. ``inf`` when the model
    says the tool should long have returned.
    """
    if not (elapsed_s >= 0 and math.isfinite(elapsed_s)):
        raise SagaConfigError(f"elapsed_s must be a finite number >= 0, got {elapsed_s}")
    survived = 1.0 - latency.cdf(elapsed_s)
    if survived <= 1e-12:
        return math.inf
    return max(latency.quantile(1.0 - survived / 2.0) - elapsed_s, 0.0)


def continuum_ttl(cdf: Callable[[float], float], queue_delay_s: float, reload_s: float,
                  eta: float = 1.0, ttl_max: float = TTL_MAX_S, step_s: float = 0.1,
                  cost_per_s: float = 1.0,
                  cdf_array: Callable[[FloatArray], FloatArray] | None = None) -> float:
    """Continuum's TTL: ``argmax_{tau in [0, TTL_max]} F(tau) * (Tq * eta + C_reload) - c * tau``.

    ``F`` is the tool's latency CDF (the chance the tool returns within ``tau``, so the pin pays
    off), ``Tq`` the average queueing delay a request pays when its KV was dropped and it re-enters
    the waiting queue, ``eta`` the share of that delay the pin avoids, ``C_reload`` the seconds to
    reload or recompute the KV, and ``c`` the cost of holding the memory per second pinned
    (``c = 1``: a second of pinning costs a second of others' delay, the paper's unit-cost form).

    Evaluated on the grid ``0, step_s, 2 step_s, ..., TTL_max`` (and TTL_max itself); the smallest
    maximiser wins, so the result is deterministic. ``cdf_array``, when given, is ``F`` over the
    whole grid at once (the same function, vectorised).

    ``F`` is read only on the leading grid points that can still win: as ``F <= 1``, no point
    whose ``benefit - c * tau`` bound (in the same float arithmetic) is at most the best utility
    already found can beat it, so the grid is cut there; the argmax is the full grid's, bit for
    bit, and ``F`` is checked on the points read.
    """
    _check_ttl_max(ttl_max)
    for name, value in (("queue_delay_s", queue_delay_s), ("reload_s", reload_s),
                        ("eta", eta), ("cost_per_s", cost_per_s)):
        if not (value >= 0 and math.isfinite(value)):
            raise SagaConfigError(f"{name} must be a finite number >= 0, got {value}")
    if not step_s > 0:
        raise SagaConfigError(f"step_s must be > 0, got {step_s}")
    n = math.floor(ttl_max / step_s + 1e-9)
    grid = np.arange(n + 1, dtype=np.float64) * step_s
    if grid[-1] < ttl_max:
        grid = np.append(grid, ttl_max)
    benefit = queue_delay_s * eta + reload_s
    held = cost_per_s * grid
    # Utility can reach at most this at each point (F <= 1 + 1e-12); non-increasing in tau.
    bound = (1 + 1e-12) * benefit - held
    k = min(grid.size, int(np.count_nonzero(bound > 0.0)) + 1)
    while True:
        utility = _cdf_prefix(cdf, cdf_array, grid, k) * benefit - held[:k]
        best = int(np.argmax(utility))
        cut = int(np.searchsorted(-bound, -utility[best], side="left"))  # points that may beat it
        if cut <= k:
            return float(grid[best])
        k = cut


def _cdf_prefix(cdf: Callable[[float], float], cdf_array: Callable[[FloatArray], FloatArray] | None,
                grid: FloatArray, k: int) -> FloatArray:
    """``F`` at the first ``k`` grid points, checked to be probabilities."""
    head = grid[:k]
    if cdf_array is not None:
        f = np.asarray(cdf_array(head), dtype=np.float64)
    else:
        f = np.fromiter((cdf(float(x)) for x in head), dtype=np.float64, count=head.size)
    if np.any(np.isnan(f)) or np.any(f < -1e-12) or np.any(f > 1 + 1e-12):
        raise SagaConfigError("cdf must return probabilities in [0, 1]")
    return f


class _PerTool(Generic[_M]):
    """Latency models per tool: explicit ones first, then a registry, then a default."""

    reads_hints: ClassVar[bool] = False

    def __init__(self, models: Mapping[str, _M] | None, source: LatencySource | None,
                 default: _M | None) -> None:
        self._models: dict[str, _M] = dict(models or {})
        self.source = source
        self.default = default

    def register(self, tool: str, model: _M) -> None:
        """Use ``model`` for ``tool`` from now on."""
        self._models[tool] = model

    def observe(self, tool: str, seconds: float) -> None:
        """Feed one measured tool duration to the registry."""
        if self.source is None:
            raise SagaConfigError("observe() needs a latency source (pass source=...)")
        self.source.observe(tool, seconds)

    def return_eta(self, tool: str, elapsed_s: float) -> float | None:
        """``pin_return_eta`` of the tool's model (None if the model has no quantiles)."""
        model = self._lookup(tool)
        if isinstance(model, HasQuantile):
            return pin_return_eta(model, elapsed_s)
        return None

    def _lookup(self, tool: str) -> _M | LatencyModel:
        found = self._models.get(tool)
        if found is not None:
            return found
        if self.source is not None:
            return self.source.latency(tool)
        if self.default is not None:
            return self.default
        raise UnknownToolError(
            f"no latency model for tool {tool!r}; known: {sorted(self._models)}; "
            "register() one, or pass source= or default=")


class ToolCallTTL(_PerTool[HasP95]):
    """SAGA's TTL policy: one latency model per tool, composed with :func:`tool_call_ttl`.

    Models are read at call time, so a model updated online is reflected in the next TTL. Lookup
    order: models given or registered, then ``source`` (a per-tool registry such as
    ``saga.aeg``'s ``ToolLatencyModel``), then ``default``; else :class:`UnknownToolError`.
    """

    def __init__(self, models: Mapping[str, HasP95] | None = None, *,
                 source: LatencySource | None = None, ttl_max: float = TTL_MAX_S,
                 default: HasP95 | None = None) -> None:
        _check_ttl_max(ttl_max)
        super().__init__(models, source, default)
        self.ttl_max = ttl_max

    @classmethod
    def with_aeg_registry(cls, ttl_max: float = TTL_MAX_S,
                          default_p95_s: float | None = None) -> ToolCallTTL:
        """A policy backed by a fresh ``saga.aeg`` log-normal registry (what presets build);
        ``default_p95_s``: see :func:`aeg_latency_source`."""
        return cls(source=aeg_latency_source(default_p95_s), ttl_max=ttl_max)

    def model(self, tool: str) -> HasP95:
        """The latency model of ``tool``."""
        return self._lookup(tool)

    def ttl(self, tool: str, pressure: float, *, queue_delay_s: float = 0.0,
            reload_s: float = 0.0, reuse_prob: float = 1.0,
            share: float | None = None) -> float:
        """TTL in seconds for a session entering ``tool`` at HBM ``pressure``.

        ``queue_delay_s`` and ``reload_s`` are part of the shared interface; SAGA's rule ignores
        them (its p95 already targets a 95 % hit rate).
        """
        return tool_call_ttl(self.model(tool).p95(), pressure, self.ttl_max)


class ContinuumTTL(_PerTool[HasCDF]):
    """Continuum's TTL policy (arXiv 2511.02230), at its best.

    Continuum pins a tool-calling request's KV for a TTL chosen by weighing the expected benefit
    (the tool returns in time, so the reload or re-prefill and the extra queueing behind newer
    requests are avoided) against the memory the pin holds; the TTL expires automatically so a
    slow tool cannot hold memory forever. Continuum fits tool durations per tool from history.

    Unclear in the paper: whether the memory cost is charged for the full TTL or only for the
    expected time actually held, ``E[min(T, tau)]``, and how ``eta`` is estimated. We charge the
    full ``tau`` with ``cost_per_s = 1`` (the formula as published), take ``eta = 1`` (a pin saves
    the whole average queueing delay, the reading most favourable to Continuum), and let the
    caller pass the measured queueing delay and the real reload time (PCIe reload when the DRAM
    tier holds the KV, re-prefill otherwise) on every call, so the TTL adapts as the paper's does.
    """

    def __init__(self, models: Mapping[str, HasCDF] | None = None, *,
                 source: LatencySource | None = None, eta: float = 1.0,
                 ttl_max: float = TTL_MAX_S, step_s: float = 0.1, cost_per_s: float = 1.0,
                 default: HasCDF | None = None) -> None:
        _check_ttl_max(ttl_max)
        super().__init__(models, source, default)
        self.eta = eta
        self.ttl_max = ttl_max
        self.step_s = step_s
        self.cost_per_s = cost_per_s

    @classmethod
    def with_aeg_registry(cls, ttl_max: float = TTL_MAX_S,
                          default_p95_s: float | None = None) -> ContinuumTTL:
        """A policy backed by a fresh ``saga.aeg`` log-normal registry (what presets build);
        ``default_p95_s``: see :func:`aeg_latency_source`."""
        return cls(source=aeg_latency_source(default_p95_s), ttl_max=ttl_max)

    def model(self, tool: str) -> HasCDF:
        """The latency model of ``tool``."""
        return self._lookup(tool)

    def ttl(self, tool: str, pressure: float, *, queue_delay_s: float = 0.0,
            reload_s: float = 0.0, reuse_prob: float = 1.0,
            share: float | None = None) -> float:
        """TTL in seconds; ``pressure`` is validated but Continuum's rule does not use it."""
        if not 0.0 <= pressure <= 1.0:
            raise SagaConfigError(f"pressure must be in [0, 1], got {pressure}")
        model = self.model(tool)
        return continuum_ttl(model.cdf, queue_delay_s, reload_s, eta=self.eta,
                             ttl_max=self.ttl_max, step_s=self.step_s,
                             cost_per_s=self.cost_per_s,
                             cdf_array=getattr(model, "cdf_array", None))


@dataclass(frozen=True)
class FixedTTL:
    """Pin every tool call for the same time (a user-set retention duration, as TensorRT-LLM's
    ``KvCacheRetentionConfig`` allows); a baseline, not a SAGA policy."""

    seconds: float = TTL_MAX_S
    reads_hints: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_ttl_max(self.seconds)

    def ttl(self, tool: str, pressure: float, *, queue_delay_s: float = 0.0,
            reload_s: float = 0.0, reuse_prob: float = 1.0,
            share: float | None = None) -> float:
        """Always ``seconds``."""
        return self.seconds

    @classmethod
    def retention(cls, ttl_max: float = TTL_MAX_S, default_p95_s: float | None = None) -> FixedTTL:
        """Pin every tool call for ``ttl_max`` (the retention knobs every TTL policy takes;
        a fixed pin has no latency model, so ``default_p95_s`` is ignored)."""
        return cls(seconds=ttl_max)

    def observe(self, tool: str, seconds: float) -> None:
        """A fixed pin learns nothing from tool durations."""

    def return_eta(self, tool: str, elapsed_s: float) -> float | None:
        """No latency model: None."""
        return None


__all__ = [
    "TTL_MAX_S",
    "ContinuumTTL",
    "FixedTTL",
    "HasCDF",
    "HasP95",
    "HasQuantile",
    "LatencyModel",
    "LatencySource",
    "TTLPolicy",
    "ToolCallTTL",
    "UnknownToolError",
    "aeg_latency_source",
    "continuum_ttl",
    "pin_return_eta",
    "tool_call_ttl",
]
