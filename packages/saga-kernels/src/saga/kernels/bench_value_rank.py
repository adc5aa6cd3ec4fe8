"""What ``eta`` victim selection costs against WA-LRU's at 16K candidates, measured in one run.

Builds one saga-policy `CacheManager` per policy holding ``sessions × depth`` blocks under a
shared system prompt (each session waiting on a tool, every tenth ended), then times
``select_victims`` over every evictable block, as the cache calls it, and the parts of the eta
path: the estimator's prediction and the values with their ranking (NumPy, and this package's
native value ranking when built; leaves-first selection not included), and the policy's
selection without this package (``eta_select_python``). Best of ``repeats`` loops of
``loops`` calls. Needs saga-policy:

    uv run --no-sync python -m saga.kernels.bench_value_rank
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from saga.kernels import value_rank


def _build(policy: Any, sessions: int, depth: int, shared: int) -> tuple[Any, float]:
    from saga.policy.cache import CacheManager
    from saga.policy.cache_types import BlockHints

    rng = np.random.default_rng(0)
    cache = CacheManager(sessions * depth + shared, policy)
    est = policy.next_use_model()
    prompt = list(range(1, shared + 1))
    now = 0.0
    for s in range(sessions):
        now += 0.01
        hashes = prompt + [10_000 + s * 1000 + j for j in range(depth)]
        p = float(rng.uniform(0.2, 1.0))
        cache.allocate(hashes, now, hints=BlockHints(reuse_prob=p))
        cache.release(hashes, now)
        if est is not None:
            est.observe_request(hashes, now, session_id=f"s{s}", reuse_prob=p,
                                pending_tool=("search", "edit", "test", "browse")[s % 4],
                                final=s % 10 == 0)
    return cache, now + 1.0


def _best(fn: Callable[[], object], loops: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def measure(sessions: int = 256, depth: int = 64, shared: int = 8, k: int = 32,
            loops: int = 20, repeats: int = 5) -> dict[str, float]:
    """Seconds per call of each path (see the module docstring)."""
    from saga.policy.eviction.eta import ETAPolicy
    from saga.policy.eviction.walru import WALRUPolicy
    from saga.policy.nextuse import MIN_UNTIL_S

    out: dict[str, float] = {}
    walru = WALRUPolicy()
    cache, now = _build(walru, sessions, depth, shared)
    t = cache.table
    cands = np.flatnonzero((t.tier == 1) & (t.ref_count == 0)).astype(np.int64)
    out["candidates"] = float(cands.size)
    out["walru_select"] = _best(lambda: walru.select_victims(t, cands, k, now), loops, repeats)
    out["walru_select_numpy"] = _best(
        lambda: super(WALRUPolicy, walru).select_victims(t, cands, k, now), loops, repeats)
    eta = ETAPolicy()
    cache, now = _build(eta, sessions, depth, shared)
    t = cache.table
    est = eta.estimator
    assert est is not None
    out["eta_select"] = _best(lambda: eta.select_victims(t, cands, k, now), loops, repeats)
    out["eta_select_python"] = _best(
        lambda: super(ETAPolicy, eta).select_victims(t, cands, k, now), loops, repeats)
    out["eta_predict"] = _best(lambda: est.predict(cands, now), loops, repeats)
    nu, p = est.predict(cands, now)
    m = eta.model
    model = {"block_tokens": float(t.block_tokens), "dense_flops": 2.0 * m.params,
             "attn_flops": 4.0 * m.layers * m.heads * m.head_dim,
             "size_bytes": float(m.kv_bytes_per_token * t.block_tokens), "min_until": MIN_UNTIL_S}
    d, la = t.depth[cands], t.last_access[cands]
    head = min(cands.size, 2 * k + 64)

    def rank(backend: str) -> object:
        return value_rank.eta_select(nu, p, d, la, now, head, backend=backend,  # type: ignore[arg-type]
                                     **model)

    out["eta_rank_numpy"] = _best(lambda: rank("numpy"), loops, repeats)
    if value_rank.HAVE_VALUE_RANK:
        out["eta_rank_native"] = _best(lambda: rank("native"), loops, repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the figures and the ratio to WA-LRU."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sessions", type=int, default=256)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args(argv)
    r = measure(args.sessions, args.depth, k=args.k)
    base = r["walru_select"]
    print(f"candidates: {int(r['candidates'])}, k = {args.k}; native value ranking: "
          f"{value_rank.VALUE_RANK_REASON}")
    for key, value in r.items():
        if key != "candidates":
            print(f"{key:<20} {value * 1e3:8.3f} ms   {value / base:6.1f}x walru_select")


if __name__ == "__main__":
    main()
