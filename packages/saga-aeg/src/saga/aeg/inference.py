"""Pattern inference: learn an AEG per agent type from observed tasks.

SAGA cannot assume every agent comes with a graph. It watches complete tasks (sequences of LLM
and tool steps), counts transitions between step kinds (`saga.aeg.steps` names the nodes), and
once it has seen `cold_start_tasks` tasks of a type and its confidence (`TransitionCounts.
confidence`: Good–Turing missing mass plus the sampling error of the transition frequencies,
weighted by departures) reaches `theta_conf`, it uses the inferred graph. Until then it uses a
prior — a framework hint, a configured prior AEG, or a generic loop — blended with whatever has
been observed so far, the prior counting as `prior_strength` pseudo-tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saga.aeg import _serde
from saga.aeg.counts import TransitionCounts
from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG
from saga.aeg.hints import DEFAULT_LLM_CALLS, WorkflowHint, hint_aeg
from saga.aeg.latency import LogNormalLatency, ToolLatencyModel
from saga.aeg.steps import TaskStep

__all__ = ["DEFAULT_COLD_START_TASKS", "DEFAULT_THETA_CONF", "PatternInference", "infer_aeg"]

DEFAULT_THETA_CONF = 0.7
DEFAULT_COLD_START_TASKS = 30


def infer_aeg(agent_type: str, tasks: Iterable[Sequence[TaskStep]]) -> AEG:
    """The AEG implied by a batch of complete tasks alone (no prior, no gating)."""
    counts = TransitionCounts()
    for steps in tasks:
        counts.add_task(steps)
    return counts.to_aeg(agent_type)


def _default_latency_prior() -> LogNormalLatency:
    return LogNormalLatency(0.0, 1.0)


@dataclass(eq=False)
class PatternInference:
    """Per-agent-type AEG inference with cold start, confidence gating and hint blending.

    `prior` is one AEG used for every agent type (renamed) or a mapping agent type → AEG.
    The prior for an agent type is, in order: its registered hint (`hint_aeg`), the configured
    `prior`, a generic loop of `default_llm_calls` LLM calls.
    """

    theta_conf: float = DEFAULT_THETA_CONF
    cold_start_tasks: int = DEFAULT_COLD_START_TASKS
    prior: AEG | Mapping[str, AEG] | None = None
    prior_strength: float = 5.0
    latency_prior: LogNormalLatency = field(default_factory=_default_latency_prior)
    latency_prior_weight: float = 1.0
    default_llm_calls: float = DEFAULT_LLM_CALLS
    _counts: dict[str, TransitionCounts] = field(init=False, default_factory=dict, repr=False)
    _hints: dict[str, WorkflowHint] = field(init=False, default_factory=dict, repr=False)
    _cache: dict[str, tuple[AEG, str]] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        t = self.theta_conf
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
            raise AEGError(f"PatternInference.theta_conf must lie in [0, 1], got {t!r}")
        c = self.cold_start_tasks
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise AEGError(f"PatternInference.cold_start_tasks must be an integer >= 0, got {c!r}")
        _serde.check_finite(self.prior_strength, "PatternInference.prior_strength")
        if self.prior_strength < 0:
            raise AEGError(
                f"PatternInference.prior_strength must be >= 0, got {self.prior_strength}"
            )
        _serde.check_finite(self.latency_prior_weight, "PatternInference.latency_prior_weight")
        if self.latency_prior_weight < 0:
            raise AEGError("PatternInference.latency_prior_weight must be >= 0")
        _serde.check_finite(self.default_llm_calls, "PatternInference.default_llm_calls")
        if self.default_llm_calls < 1:
            raise AEGError(
                f"PatternInference.default_llm_calls must be >= 1, got {self.default_llm_calls}"
            )
        if self.prior is not None and not isinstance(self.prior, AEG):
            if not isinstance(self.prior, Mapping):
                raise AEGError(
                    "PatternInference.prior must be an AEG, a mapping of agent type "
                    f"to AEG, or None; got {type(self.prior).__name__}"
                )
            for k, v in self.prior.items():
                if not isinstance(v, AEG):
                    raise AEGError(f"PatternInference.prior['{k}'] must be an AEG")

    # --- input --------------------------------------------------------------------------
    def observe(self, agent_type: str, steps: Sequence[TaskStep]) -> None:
        """Record one complete task of `agent_type` (validated before anything changes)."""
        _check_agent_type(agent_type)
        counts = self._counts.get(agent_type)
        if counts is None:
            counts = TransitionCounts(
                latency=ToolLatencyModel(self.latency_prior.copy(), self.latency_prior_weight)
            )
        counts.add_task(steps)
        self._counts[agent_type] = counts
        self._cache.pop(agent_type, None)

    def register_hint(self, hint: WorkflowHint) -> None:
        """Use `hint` as the prior of its agent type (replacing an earlier hint)."""
        if not isinstance(hint, WorkflowHint):
            raise AEGError(f"register_hint expects a WorkflowHint, got {type(hint).__name__}")
        self._hints[hint.agent_type] = hint
        self._cache.pop(hint.agent_type, None)

    # --- state --------------------------------------------------------------------------
    def hint(self, agent_type: str) -> WorkflowHint | None:
        """The registered hint of `agent_type`, if any."""
        return self._hints.get(agent_type)

    def counts(self, agent_type: str) -> TransitionCounts | None:
        """The observation statistics of `agent_type` (None before the first task)."""
        return self._counts.get(agent_type)

    def n_tasks(self, agent_type: str) -> int:
        """Tasks of `agent_type` observed so far."""
        counts = self._counts.get(agent_type)
        return 0 if counts is None else counts.n_tasks

    def confidence(self, agent_type: str) -> float:
        """Confidence in [0, 1] of the inferred AEG (see `TransitionCounts.confidence`)."""
        counts = self._counts.get(agent_type)
        return 0.0 if counts is None else counts.confidence()

    def is_confident(self, agent_type: str) -> bool:
        """Cold start over (`n_tasks >= cold_start_tasks`) and confidence >= `theta_conf`."""
        return (
            self.n_tasks(agent_type) >= max(self.cold_start_tasks, 1)
            and self.confidence(agent_type) >= self.theta_conf
        )

    # --- output -------------------------------------------------------------------------
    def _prior(self, agent_type: str) -> tuple[AEG, str]:
        _check_agent_type(agent_type)
        hint = self._hints.get(agent_type)
        if hint is not None:
            aeg = hint_aeg(
                hint, default_llm_calls=self.default_llm_calls, latency_prior=self.latency_prior
            )
            return aeg, "hint"
        if isinstance(self.prior, AEG):
            return self.prior.with_agent_type(agent_type), "prior"
        if self.prior is not None and agent_type in self.prior:
            return self.prior[agent_type].with_agent_type(agent_type), "prior"
        generic = WorkflowHint(agent_type, expected_llm_calls=self.default_llm_calls)
        return hint_aeg(generic, latency_prior=self.latency_prior), "generic"

    def inferred_aeg(self, agent_type: str) -> AEG | None:
        """The AEG from observations alone (None before the first task); tool latencies pool
        the prior's figures with observed durations, so unmeasured tools keep the prior's."""
        counts = self._counts.get(agent_type)
        if counts is None:
            return None
        prior, _ = self._prior(agent_type)
        return counts.to_aeg(agent_type, latency_priors=_tool_latencies(prior))

    def aeg_for(self, agent_type: str) -> AEG:
        """The AEG to schedule `agent_type` with now.

        The inferred AEG once `is_confident`; before, the prior blended with the observations
        so far (the prior alone if there are none, or if blending fails validation).
        """
        return self._resolve(agent_type)[0]

    def aeg_source(self, agent_type: str) -> str:
        """Where `aeg_for` comes from: "inferred", or "hint"/"prior"/"generic", with
        "+observed" when observations were blended in."""
        return self._resolve(agent_type)[1]

    def _resolve(self, agent_type: str) -> tuple[AEG, str]:
        cached = self._cache.get(agent_type)
        if cached is not None:
            return cached
        counts = self._counts.get(agent_type)
        result: tuple[AEG, str]
        if counts is not None and self.is_confident(agent_type):
            inferred = self.inferred_aeg(agent_type)
            assert inferred is not None
            result = (inferred, "inferred")
        else:
            prior, source = self._prior(agent_type)
            result = (prior, source)
            if counts is not None and counts.n_tasks > 0:
                try:
                    blended = counts.to_aeg(
                        agent_type, prior=prior, prior_strength=self.prior_strength
                    )
                    result = (blended, source + "+observed")
                except AEGError:
                    result = (prior, source)
        self._cache[agent_type] = result
        return result

    # --- serde --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the configuration and everything observed."""
        prior: Any
        if self.prior is None:
            prior = None
        elif isinstance(self.prior, AEG):
            prior = {"all": self.prior.to_dict()}
        else:
            prior = {"by_agent_type": {k: v.to_dict() for k, v in sorted(self.prior.items())}}
        return {
            "theta_conf": self.theta_conf,
            "cold_start_tasks": self.cold_start_tasks,
            "prior": prior,
            "prior_strength": self.prior_strength,
            "latency_prior": self.latency_prior.to_dict(),
            "latency_prior_weight": self.latency_prior_weight,
            "default_llm_calls": self.default_llm_calls,
            "hints": {k: v.to_dict() for k, v in sorted(self._hints.items())},
            "counts": {k: v.to_dict() for k, v in sorted(self._counts.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatternInference:
        """Inverse of `to_dict`."""
        what = "PatternInference"
        d = _serde.as_mapping(data, what)
        raw_prior = d.get("prior")
        prior: AEG | dict[str, AEG] | None = None
        if raw_prior is not None:
            rp = _serde.as_mapping(raw_prior, f"{what}.prior")
            if "all" in rp:
                prior = AEG.from_dict(rp["all"])
            else:
                by = _serde.as_mapping(
                    _serde.get(rp, "by_agent_type", f"{what}.prior"), f"{what}.prior.by_agent_type"
                )
                prior = {str(k): AEG.from_dict(v) for k, v in by.items()}
        out = cls(
            theta_conf=_serde.get_float(d, "theta_conf", what),
            cold_start_tasks=_serde.get_int(d, "cold_start_tasks", what),
            prior=prior,
            prior_strength=_serde.get_float(d, "prior_strength", what),
            latency_prior=LogNormalLatency.from_dict(_serde.get(d, "latency_prior", what)),
            latency_prior_weight=_serde.get_float(d, "latency_prior_weight", what),
            default_llm_calls=_serde.get_float(d, "default_llm_calls", what),
        )
        hints = _serde.as_mapping(_serde.get(d, "hints", what), f"{what}.hints")
        for h in hints.values():
            out.register_hint(WorkflowHint.from_dict(h))
        counts = _serde.as_mapping(_serde.get(d, "counts", what), f"{what}.counts")
        for k, v in counts.items():
            out._counts[_check_agent_type(k)] = TransitionCounts.from_dict(v)
        return out

    def to_json(self) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PatternInference:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _tool_latencies(aeg: AEG) -> dict[str, LogNormalLatency]:
    return {n.tool: n.latency for n in aeg.tool_nodes()}


def _check_agent_type(agent_type: object) -> str:
    if not isinstance(agent_type, str) or not agent_type:
        raise AEGError(f"agent_type must be a non-empty string, got {agent_type!r}")
    return agent_type
