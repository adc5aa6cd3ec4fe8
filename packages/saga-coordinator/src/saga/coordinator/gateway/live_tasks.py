"""The tasks ``saga bench live`` replays: plain data, sized for a small real model, with tokens.

A task is what an agent does: LLM calls whose prompts grow (each prompt is the previous prompt,
the previous call's output and the call's new tokens: a tool's result), separated by tool calls
that take time. The tasks come from the simulator's workloads (saga-aeg templates, the bundled
trajectories, a trace) as :class:`LiveTask` plain data, so this package needs no simulator and
the simulator can replay exactly what ran. Those workloads describe a frontier model with
contexts of tens of thousands of tokens; :func:`fit_tasks` scales them to a model a CPU serves.

Prompts are token ids drawn from the model's vocabulary, deterministic in the seed: every task
with the same ``system_key`` starts with the same system prompt (as sessions of one agent type
do), everything else is the task's own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from saga.policy.errors import SagaConfigError

__all__ = [
    "FIRST_TOKEN",
    "LiveCall",
    "LiveTask",
    "TaskTokens",
    "fit_tasks",
    "rotated",
    "tasks_from_json",
    "tasks_to_json",
]

FIRST_TOKEN = 16
"""Token ids below this are left out of prompts (special tokens of most vocabularies)."""


@dataclass(frozen=True)
class LiveCall:
    """One LLM call: ``new_tokens`` appended to the context, ``max_tokens`` generated, then
    ``tool`` runs for ``tool_s`` seconds (None and 0 after the task's last call)."""

    new_tokens: int
    max_tokens: int
    tool: str | None
    tool_s: float


@dataclass(frozen=True)
class LiveTask:
    """One agent task: its calls, when it starts, and the system prompt it shares."""

    task_id: str
    agent_type: str
    arrival_s: float
    calls: tuple[LiveCall, ...]
    system_key: str = ""
    system_tokens: int = 0
    tenant: str = "default"

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the last call's prompt (the task's longest context)."""
        return sum(c.new_tokens for c in self.calls) + sum(c.max_tokens for c in self.calls[:-1])


def tasks_to_json(tasks: Sequence[LiveTask]) -> list[dict[str, Any]]:
    """The tasks as JSON-ready dicts (:func:`tasks_from_json` reads them back)."""
    return [{**asdict(t), "calls": [asdict(c) for c in t.calls]} for t in tasks]


def tasks_from_json(data: Sequence[Mapping[str, Any]]) -> list[LiveTask]:
    """Tasks from :func:`tasks_to_json`'s dicts."""
    return [LiveTask(str(d["task_id"]), str(d["agent_type"]), float(d["arrival_s"]),
                     tuple(LiveCall(int(c["new_tokens"]), int(c["max_tokens"]), c["tool"],
                                    float(c["tool_s"])) for c in d["calls"]),
                     str(d.get("system_key", "")), int(d.get("system_tokens", 0)),
                     str(d.get("tenant", "default"))) for d in data]


def _scaled(n: int, scale: float, low: int, high: int | None = None) -> int:
    out = max(low, round(n * scale))
    return out if high is None else min(high, out)


def fit_tasks(tasks: Sequence[LiveTask], *, token_scale: float, output_scale: float,
              max_context: int, max_calls: int, tool_scale: float, max_tool_s: float,
              max_output: int = 32) -> list[LiveTask]:
    """The tasks sized for a small model: token counts times ``token_scale`` (outputs times
    ``output_scale``, at most ``max_output``), each task cut after ``max_calls`` calls or where
    its context would pass ``max_context``, tool times ``tool_scale`` (at most ``max_tool_s``).
    A task keeps at least one call; its last call has no tool after it."""
    for name, value in (("token_scale", token_scale), ("output_scale", output_scale),
                        ("tool_scale", tool_scale)):
        if not (value > 0 and math.isfinite(value)):
            raise SagaConfigError(f"--{name.replace('_', '-')} must be a finite number > 0, "
                                  f"got {value}")
    if max_calls < 1 or max_context < 64 or max_output < 1 or max_tool_s < 0:
        raise SagaConfigError("--max-calls must be >= 1, --max-context >= 64, max_output >= 1 "
                              f"and max_tool_s >= 0; got {max_calls}, {max_context}, "
                              f"{max_output}, {max_tool_s}")
    out = []
    for t in tasks:
        calls: list[LiveCall] = []
        ctx = 0
        for c in t.calls[:max_calls]:
            new = _scaled(c.new_tokens, token_scale, 1)
            gen = _scaled(c.max_tokens, output_scale, 1, max_output)
            if calls and ctx + new + gen > max_context:
                break
            new = min(new, max(1, max_context - gen - ctx))
            calls.append(LiveCall(new, gen, c.tool, min(max_tool_s, c.tool_s * tool_scale)))
            ctx += new + gen
        calls[-1] = replace(calls[-1], tool=None, tool_s=0.0)
        system = min(_scaled(t.system_tokens, token_scale, 0), calls[0].new_tokens - 1)
        out.append(replace(t, calls=tuple(calls), system_tokens=max(0, system)))
    return out


def rotated(systems: Sequence[str], seed: int) -> list[str]:
    """The order the systems run in for ``seed``: seed k starts with system k (mod n), so over
    n seeds each system goes first once and the machine's drift is shared out."""
    k = seed % len(systems) if systems else 0
    return [*systems[k:], *systems[:k]]


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


class TaskTokens:
    """The token ids of one task's prompts for one seed (the same on every system).

    ``new(k)`` is what call ``k`` appends after the previous prompt and output: for call 0 the
    shared system prompt then the task's own first tokens."""

    def __init__(self, task: LiveTask, seed: int, vocab_size: int) -> None:
        if vocab_size <= FIRST_TOKEN + 1:
            raise SagaConfigError(f"the model's vocabulary ({vocab_size} tokens) is too small "
                                  f"for prompts of token ids >= {FIRST_TOKEN}")
        self.task, self.seed, self.vocab = task, seed, vocab_size

    def _draw(self, n: int, *key: object) -> list[int]:
        ids = _rng(self.seed, *key).integers(FIRST_TOKEN, self.vocab, size=n)
        return [int(x) for x in ids]

    def new(self, k: int) -> list[int]:
        """Token ids call ``k`` adds to the context."""
        call = self.task.calls[k]
        if k > 0 or not self.task.system_tokens:
            return self._draw(call.new_tokens, self.task.task_id, k)
        system = self._draw(self.task.system_tokens, "system", self.task.system_key)
        return system + self._draw(call.new_tokens - len(system), self.task.task_id, 0)

    def stand_in_output(self, k: int) -> list[int]:
        """Output ids for call ``k`` when an engine does not return its own (used in their
        place so the next prompt has the planned length)."""
        return self._draw(self.task.calls[k].max_tokens, self.task.task_id, k, "out")
