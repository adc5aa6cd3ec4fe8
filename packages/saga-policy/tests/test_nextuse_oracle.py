"""The oracle check of eviction by predicted next use: with exact next uses it is Bélády.

``ETAPolicy(estimator=None)`` ranks by the block table's ``next_use`` hints; fed the replay's
oracle hints (the index of each block's next request, on traces whose request ``i`` arrives at
``i`` seconds) it must miss exactly as often as Bélády on unit-block traces and within 1 % on
prefix-chain traces. Then log-normal noise on the predicted time until use shows how the gap
grows (`noise_table`; run with ``-s`` to see it).
"""

from __future__ import annotations

import math
import random

import pytest

from saga.policy.eviction import BeladyPolicy, ETAPolicy, next_use_positions
from saga.policy.replay import replay_trace
from saga.policy.traces import Trace, TraceRequest

SIGMAS = (0.0, 0.1, 0.3, 1.0)
BLOCK_TOKENS = 16


def _trace(chains: list[tuple[int, ...]]) -> Trace:
    reqs = tuple(TraceRequest(index=i, arrival_s=float(i), input_tokens=len(c) * BLOCK_TOKENS,
                              output_tokens=1, block_hashes=c, block_tokens=BLOCK_TOKENS)
                 for i, c in enumerate(chains))
    return Trace(name="synthetic", block_tokens=BLOCK_TOKENS, requests=reqs)


def unit_trace(seed: int, n: int = 3000, blocks: int = 80) -> Trace:
    """Each request one block, drawn from a skewed popularity (no prefix chains)."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** 0.8 for k in range(blocks)]
    return _trace([(rng.choices(range(blocks), weights)[0],) for _ in range(n)])


def prefix_trace(seed: int, n: int = 1500, convs: int = 40) -> Trace:
    """Conversations whose context grows each turn, over a shared system prompt of 4 blocks."""
    rng = random.Random(seed)
    lengths = [0] * convs
    chains = []
    for _ in range(n):
        c = min(int(rng.expovariate(1 / 8)), convs - 1)
        lengths[c] = min(lengths[c] + rng.randint(1, 3), 40)
        chains.append((*range(4), *(10_000 * (c + 1) + j for j in range(lengths[c]))))
    return _trace(chains)


def noisy(hints: list[list[float]], sigma: float, seed: int) -> list[list[float]]:
    """Each finite next use ``j`` of request ``i`` becomes ``i + (j − i)·exp(σ·Z)``."""
    if sigma == 0.0:
        return hints
    rng = random.Random(seed)
    return [[i + (j - i) * math.exp(sigma * rng.gauss(0.0, 1.0)) if math.isfinite(j) else j
             for j in row] for i, row in enumerate(hints)]


def ratio_to_belady(trace: Trace, capacity: int, sigma: float, seed: int = 0) -> float:
    """Misses of ETA on (noisy) exact next uses ÷ Bélády's misses."""
    hints = next_use_positions([r.block_hashes for r in trace.requests])
    oracle = replay_trace(trace, BeladyPolicy(), capacity, next_use=hints, workflow=False)
    eta = replay_trace(trace, ETAPolicy(estimator=None), capacity,
                       next_use=noisy(hints, sigma, seed), workflow=False)
    return eta.miss_blocks / oracle.miss_blocks


def noise_table(seed: int = 0) -> dict[str, dict[float, float]]:
    """Ratio to Bélády per noise level, on a unit-block and a prefix-chain trace."""
    unit, prefix = unit_trace(seed), prefix_trace(seed)
    return {"unit": {s: ratio_to_belady(unit, 20, s, seed) for s in SIGMAS},
            "prefix": {s: ratio_to_belady(prefix, 150, s, seed) for s in SIGMAS}}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_next_use_is_belady_on_unit_blocks(seed: int) -> None:
    trace = unit_trace(seed)
    hints = next_use_positions([r.block_hashes for r in trace.requests])
    for cap in (5, 20, 50):
        oracle = replay_trace(trace, BeladyPolicy(), cap, next_use=hints, workflow=False)
        eta = replay_trace(trace, ETAPolicy(estimator=None), cap, next_use=hints,
                           workflow=False)
        assert oracle.miss_blocks > 0
        assert eta.miss_blocks == oracle.miss_blocks


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_next_use_within_one_percent_of_belady_on_prefix_chains(seed: int) -> None:
    trace = prefix_trace(seed)
    for cap in (60, 150, 400):
        assert ratio_to_belady(trace, cap, 0.0) <= 1.01


def test_noise_widens_the_gap() -> None:
    table = noise_table()
    print("\nmisses / Bélády vs log-normal noise sigma on the time until next use")
    print("trace   " + "".join(f"{s:>8}" for s in SIGMAS))
    for kind, row in table.items():
        print(f"{kind:8s}" + "".join(f"{row[s]:8.3f}" for s in SIGMAS))
    for row in table.values():
        assert row[0.0] <= 1.01
        assert all(r >= 0.999 for r in row.values())  # nothing beats the optimum
        assert row[1.0] >= row[0.0]
        assert row[1.0] > 1.0  # noise this large must cost something
