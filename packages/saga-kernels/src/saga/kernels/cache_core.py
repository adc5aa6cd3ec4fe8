"""The native cache core: saga-policy's ``CacheManager`` state and operations in C++.

Its definition and twin is saga-policy's Python ``CacheManager`` (this package depends on NumPy
only, so the twin cannot live here): the C++ core keeps the block index, free list and tier
counts and works in place on the manager's own ``BlockTable`` columns, so everything that reads
the table sees the same numbers either way. saga-policy's stateful test runs the same random
operations on both and compares every observable after each one.

Victim selection runs natively for the orders named in `ORDERS` (each a fixed tuple of sort
keys); a policy with another order, or one that keeps state of its own, makes saga-policy use its
Python manager instead. ``SAGA_NATIVE=0`` or a build without the compiled module: `cache_core`
returns None and the Python manager runs.
"""

from __future__ import annotations

from typing import Any

from saga.kernels import _native

__all__ = ["ORDERS", "PolicySpec", "cache_core", "have_cache_core"]

ORDERS = ("access", "access_deep", "walru", "steps", "next_use")
"""Orders the core ranks natively, by their sort keys (primary first; smaller leaves first;
ties by candidate slot): ``access`` last access; ``access_deep`` last access, then deepest;
``walru`` highest WA-LRU score, then last access, then deepest; ``steps`` largest
steps-to-execution (NaN = +inf), then last access, then deepest; ``next_use`` farthest next use,
then deepest, then last access."""

PolicySpec = tuple[str, bool, float, float, float]
"""(order, leaves_only, alpha, beta, gamma): an order of `ORDERS`, whether victims go leaves
first, and WA-LRU's weights (ignored by the other orders)."""


def have_cache_core() -> bool:
    """True when the compiled module with the cache core is loaded (and not disabled)."""
    return _native.HAVE_EXT and hasattr(_native._ext, "CacheCore")


def cache_core(hbm_blocks: int, dram_blocks: int, block_tokens: int, policy: PolicySpec,
               dram_policy: PolicySpec, columns: dict[str, Any]) -> Any | None:
    """A native core over ``columns`` (the block table's arrays by field name, shared, not
    copied), or None when the core is unavailable or an order is not in `ORDERS`."""
    if not have_cache_core() or policy[0] not in ORDERS or dram_policy[0] not in ORDERS:
        return None
    return _native._ext.CacheCore(hbm_blocks, dram_blocks, block_tokens, policy, dram_policy,
                                  **columns)
