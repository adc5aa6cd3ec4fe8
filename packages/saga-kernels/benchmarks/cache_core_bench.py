"""Native cache core vs the Python `CacheManager` on an allocate-heavy agent workload.

Sessions grow a chain turn by turn (shared system-prompt head, then the session's own blocks);
each call allocates the whole chain, pins it through a tool call and releases it, so the cache
is full and every allocation evicts. Both managers run the same operations; the script checks
they end in the same state and prints operations per CPU second and the ratio.

    uv run --no-sync python packages/saga-kernels/benchmarks/cache_core_bench.py [--policy walru]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from saga.policy import registry
from saga.policy.cache import CacheManager


def workload(seed: int, calls: int, sessions: int) -> list[tuple[list[int], float]]:
    """(chain, now) per call: 32 shared head blocks, then 8-40 new blocks per turn."""
    rng = np.random.default_rng(seed)
    own: list[list[int]] = [[] for _ in range(sessions)]
    out: list[tuple[list[int], float]] = []
    next_hash = 1_000
    for i in range(calls):
        s = int(rng.integers(0, sessions))
        grow = int(rng.integers(8, 40))
        own[s].extend(range(next_hash, next_hash + grow))
        next_hash += grow
        if len(own[s]) > 400:
            own[s] = own[s][-200:]
        out.append((list(range(32)) + own[s], i * 0.05))
    return out


def run(cache: CacheManager, calls: list[tuple[list[int], float]]) -> tuple[float, int]:
    ops = 0
    held: list[list[int]] = []
    start = time.process_time()
    for chain, now in calls:
        alloc = cache.allocate(chain, now, partial=True)
        ops += 1
        held.append(chain[: alloc.resident_blocks])
        if len(held) > 6:
            seq = held.pop(0)
            cache.release(seq, now)
            cache.pin(seq[-16:], now + 1.0)
            ops += 2
        cache.longest_prefix(chain)
        cache.tick(now)
        ops += 2
    return time.process_time() - start, ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="radix_lru")
    ap.add_argument("--hbm", type=int, default=4096)
    ap.add_argument("--dram", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--sessions", type=int, default=64)
    args = ap.parse_args()
    calls = workload(0, args.calls, args.sessions)
    results = []
    for native in (False, True):
        cache = CacheManager(args.hbm, registry.replay_eviction(args.policy),
                             dram_blocks=args.dram, native=native)
        cpu, ops = run(cache, calls)
        results.append((cache, cpu, ops))
        print(f"{'native' if native else 'python'}: {ops} operations in {cpu:.3f} CPU-s, "
              f"{ops / cpu:,.0f} ops per CPU-s")
    (py, py_cpu, _), (nat, nat_cpu, _) = results
    same = repr(py.stats) == repr(nat.stats) and all(
        getattr(py.table, col).tobytes() == getattr(nat.table, col).tobytes()
        for col in ("tier", "last_access", "ref_count", "pinned_until", "parent"))
    print(f"policy {args.policy}: native is {py_cpu / nat_cpu:.1f}x the Python manager; "
          f"same final state: {same}")


if __name__ == "__main__":
    main()
