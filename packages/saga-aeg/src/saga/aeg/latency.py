"""Tool-call latency: a log-normal distribution fitted per tool, updated online.

Tool latencies are positive and right-skewed (most `grep`s take a fraction of a second, a test
suite takes a minute), which is why SAGA models them as log-normal: the log of a latency is
normal, so the maximum-likelihood fit is the mean and (population) standard deviation of the
logs, and it can be updated one observation at a time with Welford's algorithm. The tool-call
TTL of `saga.policy` reads `p95()` of these fits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from saga.aeg import _serde
from saga.aeg.errors import AEGError

__all__ = ["LogNormalLatency", "ToolLatencyModel", "pool_log_moments"]

_STD_NORMAL = NormalDist()
_ERF = np.frompyfunc(math.erf, 1, 1)
_SQRT2 = math.sqrt(2.0)


def _log_of_sample(x: float, what: str) -> float:
    """Log of one latency observation; rejects what a log-normal cannot have produced."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise AEGError(f"{what}: latency sample must be a number of seconds, got {x!r}")
    if math.isnan(x) or math.isinf(x) or x <= 0.0:
        raise AEGError(
            f"{what}: latency sample must be a positive finite number of seconds, got {x!r}; "
            "drop zero/unknown durations instead of passing them"
        )
    return math.log(x)


def pool_log_moments(
    mu_a: float, sigma_a: float, w_a: float, mu_b: float, sigma_b: float, w_b: float
) -> tuple[float, float]:
    """Pool two sets of log-moments weighted by (pseudo-)counts (Chan et al.'s parallel Welford).

    `μ = (w_a·μ_a + w_b·μ_b)/(w_a + w_b)`,
    `M2 = w_a·σ_a² + w_b·σ_b² + (μ_a − μ_b)²·w_a·w_b/(w_a + w_b)`,
    `σ = sqrt(M2/(w_a + w_b))`. Used to blend a prior fit (weight = pseudo-observations) with
    observed data, so a prior is forgotten as real observations accumulate.
    """
    if w_a < 0 or w_b < 0:
        raise AEGError(f"pool weights must be >= 0, got {w_a!r} and {w_b!r}")
    total = w_a + w_b
    if total == 0.0:
        return mu_a, sigma_a
    mu = (w_a * mu_a + w_b * mu_b) / total
    m2 = w_a * sigma_a**2 + w_b * sigma_b**2 + (mu_a - mu_b) ** 2 * w_a * w_b / total
    return mu, math.sqrt(max(m2, 0.0) / total)


@dataclass
class LogNormalLatency:
    """Log-normal latency in seconds: `log(X) ~ Normal(mu, sigma)`.

    `n` is the number of observations the fit rests on (0 for a distribution stated by hand,
    e.g. a template). `update` is Welford's online step on `log(x)`, so `(mu, sigma)` is always
    the MLE of all observations seen so far. The object is mutable on purpose (an online model
    that is updated in place); `update` also returns `self` so `lat = lat.update(x)` works.
    """

    mu: float
    sigma: float
    n: int = 0

    def __post_init__(self) -> None:
        _serde.check_finite(self.mu, "LogNormalLatency.mu (mean of log-seconds)")
        _serde.check_finite(self.sigma, "LogNormalLatency.sigma (std of log-seconds)")
        if self.sigma < 0:
            raise AEGError(f"LogNormalLatency.sigma must be >= 0, got {self.sigma!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise AEGError(f"LogNormalLatency.n must be a non-negative integer, got {self.n!r}")
        self.mu = float(self.mu)
        self.sigma = float(self.sigma)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def fit(cls, samples: Iterable[float]) -> LogNormalLatency:
        """MLE fit: mu = mean(log x), sigma = population std(log x); needs >= 1 sample."""
        logs = np.array(
            [_log_of_sample(x, f"LogNormalLatency.fit sample #{i}") for i, x in enumerate(samples)],
            dtype=np.float64,
        )
        if logs.size == 0:
            raise AEGError("LogNormalLatency.fit needs at least one positive latency sample")
        return cls(mu=float(logs.mean()), sigma=float(logs.std()), n=int(logs.size))

    @classmethod
    def from_median(cls, median_s: float, sigma: float) -> LogNormalLatency:
        """A stated distribution by its median (= exp(mu)) and log-space spread."""
        return cls(
            mu=_log_of_sample(median_s, "LogNormalLatency.from_median median_s"), sigma=sigma
        )

    @classmethod
    def from_mean_cv(cls, mean_s: float, cv: float) -> LogNormalLatency:
        """A stated distribution by mean and coefficient of variation (for CV sweeps).

        `sigma² = ln(1 + cv²)`, `mu = ln(mean) − sigma²/2`.
        """
        _serde.check_finite(cv, "LogNormalLatency.from_mean_cv cv")
        if cv < 0:
            raise AEGError(f"LogNormalLatency.from_mean_cv: cv must be >= 0, got {cv!r}")
        s2 = math.log1p(cv * cv)
        mu = _log_of_sample(mean_s, "LogNormalLatency.from_mean_cv mean_s") - s2 / 2.0
        return cls(mu=mu, sigma=math.sqrt(s2))

    def copy(self) -> LogNormalLatency:
        """An independent copy (the object is mutable)."""
        return LogNormalLatency(self.mu, self.sigma, self.n)

    # --- online update ------------------------------------------------------------------
    def update(self, x: float) -> LogNormalLatency:
        """Welford step on log(x): n += 1, mu += δ/n, M2 += δ·(log x − mu_new); returns self.

        With `n == 0` the stated (mu, sigma) are replaced by the data.
        """
        lx = _log_of_sample(x, "LogNormalLatency.update")
        m2 = self.sigma**2 * self.n
        self.n += 1
        delta = lx - self.mu
        self.mu += delta / self.n
        m2 += delta * (lx - self.mu)
        self.sigma = math.sqrt(max(m2, 0.0) / self.n)
        return self

    def update_many(self, xs: Iterable[float]) -> LogNormalLatency:
        """`update` for each observation in order; returns self."""
        for x in xs:
            self.update(x)
        return self

    def merge(self, other: LogNormalLatency) -> LogNormalLatency:
        """A new fit of both observation sets (parallel Welford), weighted by their `n`."""
        mu, sigma = pool_log_moments(self.mu, self.sigma, self.n, other.mu, other.sigma, other.n)
        return LogNormalLatency(mu, sigma, self.n + other.n)

    # --- distribution -------------------------------------------------------------------
    def quantile(self, q: float) -> float:
        """Seconds below which a fraction `q` of calls finish: exp(mu + sigma·Φ⁻¹(q))."""
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0:
            raise AEGError(f"quantile level must lie in (0, 1), got {q!r}")
        if self.sigma == 0.0:
            return math.exp(self.mu)
        return math.exp(self.mu + self.sigma * _STD_NORMAL.inv_cdf(float(q)))

    def p95(self) -> float:
        """95th percentile in seconds (what the tool-call TTL pins a session's KV for)."""
        return self.quantile(0.95)

    def median(self) -> float:
        """Median in seconds: exp(mu)."""
        return math.exp(self.mu)

    def mean(self) -> float:
        """Mean in seconds: exp(mu + sigma²/2)."""
        return math.exp(self.mu + self.sigma**2 / 2.0)

    def variance(self) -> float:
        """Variance in seconds²: (exp(sigma²) − 1)·exp(2mu + sigma²)."""
        return math.expm1(self.sigma**2) * math.exp(2.0 * self.mu + self.sigma**2)

    def cv(self) -> float:
        """Coefficient of variation: sqrt(exp(sigma²) − 1), independent of mu."""
        return math.sqrt(math.expm1(self.sigma**2))

    def cdf(self, x: float) -> float:
        """P(latency <= x): Φ((log x − mu)/sigma); 0 for x <= 0."""
        if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
            raise AEGError(f"cdf argument must be a number of seconds, got {x!r}")
        if x <= 0.0:
            return 0.0
        if math.isinf(x):
            return 1.0
        lx = math.log(x)
        if self.sigma == 0.0:
            return 1.0 if lx >= self.mu else 0.0
        return _STD_NORMAL.cdf((lx - self.mu) / self.sigma)

    def cdf_array(self, xs: np.ndarray[Any, np.dtype[np.float64]]
                  ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """`cdf` at every point of ``xs`` at once (a TTL search scans thousands of points)."""
        x = np.asarray(xs, dtype=np.float64)
        if np.isnan(x).any():
            raise AEGError("cdf arguments must be numbers of seconds, got NaN")
        out = np.zeros(x.shape, np.float64)
        pos = x > 0.0
        lx = np.log(x[pos])
        if self.sigma == 0.0:
            out[pos] = lx >= self.mu
        else:
            z = (lx - self.mu) / self.sigma
            out[pos] = 0.5 * (1.0 + np.asarray(_ERF(z / _SQRT2), dtype=np.float64))
        return out

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray[Any, np.dtype[np.float64]]:
        """`n` latencies in seconds drawn with `rng` (deterministic given the generator)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise AEGError(f"sample size must be a non-negative integer, got {n!r}")
        return np.asarray(rng.lognormal(self.mu, self.sigma, size=n), dtype=np.float64)

    # --- serde --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"mu": self.mu, "sigma": self.sigma, "n": self.n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogNormalLatency:
        """Inverse of `to_dict`."""
        what = "LogNormalLatency"
        d = _serde.as_mapping(data, what)
        return cls(
            mu=_serde.get_float(d, "mu", what),
            sigma=_serde.get_float(d, "sigma", what),
            n=_serde.get_int(d, "n", what) if "n" in d else 0,
        )

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LogNormalLatency:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _default_prior() -> LogNormalLatency:
    # Median 1 s, sigma 1 (p95 ≈ 5.2 s): a deliberately vague prior for a tool never seen.
    return LogNormalLatency(mu=0.0, sigma=1.0)


@dataclass
class ToolLatencyModel:
    """Per-tool log-normal latency fits, updated online, with a prior for unseen tools.

    `latency(tool)` pools the tool's prior (its own if set with `set_prior`, else
    `default_prior`) weighted as `prior_weight` pseudo-observations with the observed fit, so a
    tool seen once is not trusted as if its single duration were the whole distribution, and the
    prior fades as observations accumulate. The returned objects are copies.
    """

    default_prior: LogNormalLatency = field(default_factory=_default_prior)
    prior_weight: float = 1.0
    priors: dict[str, LogNormalLatency] = field(default_factory=dict)
    observed: dict[str, LogNormalLatency] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _serde.check_finite(self.prior_weight, "ToolLatencyModel.prior_weight")
        if self.prior_weight < 0:
            raise AEGError(f"ToolLatencyModel.prior_weight must be >= 0, got {self.prior_weight}")
        for tool in [*self.priors, *self.observed]:
            _check_tool_name(tool)

    def set_prior(self, tool: str, latency: LogNormalLatency) -> None:
        """Declare what is believed about `tool` before it is observed (e.g. from a template)."""
        _check_tool_name(tool)
        self.priors[tool] = latency.copy()

    def prior_for(self, tool: str) -> LogNormalLatency:
        """The prior used for `tool` (a copy)."""
        return self.priors.get(tool, self.default_prior).copy()

    def observe(self, tool: str, seconds: float) -> None:
        """Record one measured duration of `tool`."""
        _check_tool_name(tool)
        fit = self.observed.get(tool)
        if fit is None:
            fit = LogNormalLatency(0.0, 0.0, 0)
        fit.update(seconds)
        self.observed[tool] = fit

    def n_observations(self, tool: str) -> int:
        """How many durations of `tool` were observed."""
        fit = self.observed.get(tool)
        return 0 if fit is None else fit.n

    def latency(self, tool: str, prior: LogNormalLatency | None = None) -> LogNormalLatency:
        """The current belief about `tool`: prior pooled with observations (a new object).

        `prior` overrides the stored prior for this call (used when a hinted AEG states one).
        """
        base = prior.copy() if prior is not None else self.prior_for(tool)
        fit = self.observed.get(tool)
        if fit is None or fit.n == 0:
            return base
        mu, sigma = pool_log_moments(
            base.mu, base.sigma, self.prior_weight, fit.mu, fit.sigma, float(fit.n)
        )
        return LogNormalLatency(mu, sigma, fit.n)

    def p95(self, tool: str) -> float:
        """95th percentile of `tool`'s latency in seconds."""
        return self.latency(tool).p95()

    def tools(self) -> list[str]:
        """Tools with a prior or observations, sorted."""
        return sorted({*self.priors, *self.observed})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "default_prior": self.default_prior.to_dict(),
            "prior_weight": self.prior_weight,
            "priors": {k: v.to_dict() for k, v in sorted(self.priors.items())},
            "observed": {k: v.to_dict() for k, v in sorted(self.observed.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolLatencyModel:
        """Inverse of `to_dict`."""
        what = "ToolLatencyModel"
        d = _serde.as_mapping(data, what)
        priors = _serde.as_mapping(_serde.get(d, "priors", what), f"{what}.priors")
        observed = _serde.as_mapping(_serde.get(d, "observed", what), f"{what}.observed")
        return cls(
            default_prior=LogNormalLatency.from_dict(_serde.get(d, "default_prior", what)),
            prior_weight=_serde.get_float(d, "prior_weight", what),
            priors={str(k): LogNormalLatency.from_dict(v) for k, v in priors.items()},
            observed={str(k): LogNormalLatency.from_dict(v) for k, v in observed.items()},
        )

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ToolLatencyModel:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _check_tool_name(tool: object) -> None:
    if not isinstance(tool, str) or not tool:
        raise AEGError(f"tool name must be a non-empty string, got {tool!r}")
