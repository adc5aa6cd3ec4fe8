"""Llumnix's rescheduler: live migration of running requests, with their KV, between instances.

Llumnix (OSDI '24) pairs overloaded instances with underloaded ones on a timer and moves
running requests there with their KV cache (a pipelined copy, so the request keeps decoding on
its source while most of its KV moves). The current Llumnix (``llumnix-project/llumnix``,
``docs/source/user_manual/scheduler_conf.md``, ``pkg/consts/consts.go``) documents the defaults
used here:

- every ``--rescheduling-interval-ms`` = 500 ms, each instance's load is
  ``kv_cache_usage_ratio_projected``: (used KV tokens + tokens still to allocate for waiting and
  running prefills) / KV pool tokens -- the simulator's ``utilisation`` signal;
- sources are instances at or above ``--rescheduling-decode-load-threshold`` (1.0),
  destinations those below it; ``metricBalanceSelector`` pairs the highest-loaded source with
  the lowest-loaded destination, the next with the next, and a pair needs a load gap above
  ``--rescheduling-load-balance-threshold`` (0.0);
- on each pair the source gives up running decode requests in ``SR`` order (shortest sequence
  first) until ``--rescheduling-req-select-value`` = 1024 tokens have moved (rule ``TOKEN``).

The paper's artifact (``AlibabaPAI/llumnix`` v0, ``llumnix/config/default.py``) ran the same
loop every 50 ms over "freeness" (free KV blocks per running request, threshold 3 blocks); the
current version's documented defaults are the ones modelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from saga.policy.errors import SagaConfigError

RESCHEDULE_INTERVAL_S = 0.5
"""Llumnix ``--rescheduling-interval-ms`` default (500)."""
LOAD_THRESHOLD = 1.0
"""Llumnix ``--rescheduling-decode-load-threshold`` / ``--rescheduling-neutral-load-threshold``
default: projected KV usage at which an instance becomes a migration source."""
BALANCE_GAP = 0.0
"""Llumnix ``--rescheduling-load-balance-threshold`` default: least load gap of a pair."""
SELECT_TOKENS = 1024
"""Llumnix ``--rescheduling-req-select-value`` default under rule ``TOKEN``."""


@dataclass(frozen=True)
class Rescheduler:
    """Which instances exchange requests and which running requests move (Llumnix defaults)."""

    interval_s: float = RESCHEDULE_INTERVAL_S
    threshold: float = LOAD_THRESHOLD
    min_gap: float = BALANCE_GAP
    select_tokens: int = SELECT_TOKENS

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise SagaConfigError(f"Rescheduler.interval_s must be > 0, got {self.interval_s}")
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise SagaConfigError(f"Rescheduler.threshold must be > 0, got {self.threshold}")
        if self.min_gap < 0 or self.select_tokens < 1:
            raise SagaConfigError("Rescheduler needs min_gap >= 0 and select_tokens >= 1, got "
                                  f"{self.min_gap} and {self.select_tokens}")

    def pairs(self, loads: Mapping[str, float]) -> list[tuple[str, str]]:
        """``(source, destination)`` pairs: sources at or above the threshold, most loaded
        first, each with the least loaded destination below it not yet taken."""
        src = sorted((w for w, x in loads.items() if x >= self.threshold),
                     key=lambda w: (-loads[w], w))
        dst = sorted((w for w, x in loads.items() if x < self.threshold),
                     key=lambda w: (loads[w], w))
        return [(s, d) for s, d in zip(src, dst, strict=False)
                if loads[s] - loads[d] > self.min_gap]

    def select(self, running: Sequence[tuple[str, int]]) -> list[str]:
        """Of ``(request id, sequence tokens)`` running on a source, the ones to move: shortest
        first (``SR``) until ``select_tokens`` tokens are chosen (at least one request)."""
        out: list[str] = []
        total = 0
        for rid, tokens in sorted(running, key=lambda r: (r[1], r[0])):
            if total >= self.select_tokens:
                break
            out.append(rid)
            total += tokens
        return out


__all__ = ["BALANCE_GAP", "LOAD_THRESHOLD", "RESCHEDULE_INTERVAL_S", "SELECT_TOKENS",
           "Rescheduler"]
