"""What the KV cache takes and hands back: chained block hashes, prefix matches, hints,
allocation results and running totals (`saga.policy.cache` re-exports every name)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from saga.policy.errors import CacheError, SagaConfigError

__all__ = ["Allocation", "BlockHints", "CacheStats", "HintValue", "PrefixMatch", "chain_hashes",
           "hint_arrays"]

HintValue = float | Sequence[float] | None

_HASH_MASK = (1 << 63) - 1
_ROOT = b"saga-kv-root"


def chain_hashes(token_ids: Sequence[int], block_tokens: int,
                 parent: int | None = None) -> list[int]:
    """Prefix-hash chain over the full blocks of ``token_ids`` (a partial last block is skipped).

    ``hash_i = blake2b(hash_{i-1} ‖ tokens of block i)``, truncated to 63 bits so it fits an int64;
    ``parent`` continues a chain whose earlier blocks were hashed before. Deterministic across
    processes (no salted ``hash()``).
    """
    if block_tokens < 1:
        raise SagaConfigError(f"block_tokens must be >= 1, got {block_tokens}")
    tokens = np.asarray(token_ids, dtype=np.int64)
    prev = _ROOT if parent is None else str(int(parent)).encode()
    out: list[int] = []
    for start in range(0, tokens.size - block_tokens + 1, block_tokens):
        h = hashlib.blake2b(prev, digest_size=8)
        h.update(tokens[start:start + block_tokens].tobytes())
        value = int.from_bytes(h.digest(), "little") & _HASH_MASK
        out.append(value)
        prev = str(value).encode()
    return out


@dataclass(frozen=True)
class PrefixMatch:
    """How much of a chain is cached: leading HBM run, and the resident run across both tiers.

    ``hbm_blocks`` leading blocks are in HBM; ``cached_blocks`` leading blocks are resident in
    either tier (the chain stops at the first missing block); ``dram_blocks`` of those are in
    DRAM and would be loaded back.
    """

    hbm_blocks: int
    dram_blocks: int
    cached_blocks: int


@dataclass(frozen=True)
class BlockHints:
    """Caller hints for `CacheManager.allocate`: a scalar for every block or one value each.

    ``None`` leaves a field as it is (new blocks start unknown: NaN, next_use +inf).
    """

    reuse_prob: HintValue = None
    steps_to_exec: HintValue = None
    next_use: HintValue = None
    size_tokens: HintValue = None


@dataclass(frozen=True)
class Allocation:
    """What `CacheManager.allocate` did for one sequence (counts in blocks).

    ``resident_blocks`` leading blocks are now in HBM and referenced: release exactly
    ``hashes[:resident_blocks]``. Blocks past a gap in the cached prefix are recomputed and so
    count in ``new_blocks`` even when a stale copy was resident. ``uncached_blocks`` (only with
    ``partial=True``) did not fit and are misses that stay uncached. ``swap_seconds`` adds the
    load-back and swap-out transfers (a conservative serial sum; PCIe is full duplex).
    """

    hit_blocks_hbm: int = 0
    hit_blocks_dram: int = 0
    new_blocks: int = 0
    uncached_blocks: int = 0
    evicted: int = 0
    swapped_out: int = 0
    dropped: int = 0
    pin_breaks: int = 0
    swap_seconds: float = 0.0
    resident_blocks: int = 0

    @property
    def miss_blocks(self) -> int:
        """Blocks that must be prefilled: recomputed plus uncached."""
        return self.new_blocks + self.uncached_blocks


@dataclass
class CacheStats:
    """Running totals since the manager was built (blocks, except ``swap_seconds``)."""

    hit_blocks_hbm: int = 0
    hit_blocks_dram: int = 0
    miss_blocks: int = 0
    evictions: int = 0
    swapped_out: int = 0
    swapped_in: int = 0
    dropped: int = 0
    pin_breaks: int = 0
    pins_expired: int = 0
    swap_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Share of looked-up blocks served from cache (either tier); 0 before any lookup."""
        total = self.hit_blocks_hbm + self.hit_blocks_dram + self.miss_blocks
        return (self.hit_blocks_hbm + self.hit_blocks_dram) / total if total else 0.0


def hint_arrays(hints: BlockHints, n: int) -> dict[str, npt.NDArray[np.float64]]:
    """The hints as one float64 column per field set, checked (one value per block)."""
    cols: dict[str, npt.NDArray[np.float64]] = {}
    for name in ("reuse_prob", "steps_to_exec", "next_use", "size_tokens"):
        value = getattr(hints, name)
        if value is None:
            continue
        arr = np.asarray(value, np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        if arr.shape != (n,):
            raise CacheError(f"hint {name} has {arr.size} values for {n} blocks; pass one "
                             f"per block or a single number")
        if name == "reuse_prob" and ((arr < 0) | (arr > 1)).any():
            raise CacheError(f"hint reuse_prob must lie in [0, 1] (NaN = unknown), got "
                             f"{arr[(arr < 0) | (arr > 1)][:3].tolist()}")
        cols[name] = arr
    return cols
