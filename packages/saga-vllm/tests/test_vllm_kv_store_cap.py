"""The KV store's size cap: a sweep deletes the entries used longest ago (a load counts as a
use), down to the low-water mark; the background sweeper does it on its own; the cap reaches
the engine's connector configuration from ``--kv-store-max-gb``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.kv_store import (
    DEFAULT_MAX_BYTES,
    BlockEntry,
    KVBlockStore,
    StoreSweeper,
    sweep_store,
)
from saga.vllm.models import TINY_LLAMA, ModelShape
from saga.vllm.serve import api_server_argv

PAYLOAD = 1000


def _fill(store: KVBlockStore, n: int) -> list[bytes]:
    """``n`` entries, the i-th last used ``n - i`` hours ago."""
    keys = [bytes([i]) * 32 for i in range(n)]
    now = time.time()
    for i, key in enumerate(keys):
        store.save(key, BlockEntry((PAYLOAD,), "torch.uint8", bytes([i]) * PAYLOAD))
        t = now - 3600 * (n - i)
        os.utime(store.path(key), (t, t))
    return keys


def test_sweep_deletes_the_least_recently_used_down_to_the_low_water(tmp_path: Path) -> None:
    store = KVBlockStore(tmp_path, "ns")
    keys = _fill(store, 10)
    size = store.path(keys[0]).stat().st_size
    store.load(keys[0])  # the oldest is used now: it must survive
    swept = sweep_store(tmp_path, max_bytes=6 * size, low_water=0.9)
    # 10 entries over a cap of 6: down to 0.9 x 6 = 5.4 entries' bytes, so 5 remain.
    assert (swept.removed, swept.kept) == (5, 5)
    assert [store.has(k) for k in keys] == [True] + [False] * 5 + [True] * 4
    assert swept.kept_bytes == sum(store.path(k).stat().st_size for k in keys if store.has(k))
    assert store.load(keys[9]).payload == bytes([9]) * PAYLOAD


def test_sweep_under_the_cap_deletes_nothing_and_clears_stale_temporaries(
        tmp_path: Path) -> None:
    store = KVBlockStore(tmp_path, "ns")
    keys = _fill(store, 3)
    stale = store.dir / "ab" / ".x.kv.1.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half")
    os.utime(stale, (1.0, 1.0))
    fresh = store.dir / "ab" / ".y.kv.1.tmp"
    fresh.write_bytes(b"being written")
    swept = sweep_store(tmp_path, max_bytes=10**9)
    assert swept.removed == 0 and all(store.has(k) for k in keys)
    assert not stale.exists() and fresh.exists()


def test_sweeper_thread_keeps_the_store_under_its_cap(tmp_path: Path) -> None:
    store = KVBlockStore(tmp_path, "ns")
    keys = _fill(store, 8)
    size = store.path(keys[0]).stat().st_size
    sweeper = StoreSweeper(tmp_path, 4 * size, period_s=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while sweeper.sweeps == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sweeper.stop()
    assert sweeper.sweeps >= 1 and sweeper.removed == 5
    assert [store.has(k) for k in keys] == [False] * 5 + [True] * 3


def test_the_cap_reaches_the_connector_config() -> None:
    shape = ModelShape.from_config(TINY_LLAMA)

    def extra(gb: float | None = None) -> object:
        if gb is None:
            argv = api_server_argv("/m", shape, port=1, served_model_name="tiny",
                                   kv_store="/node/kv")
        else:
            argv = api_server_argv("/m", shape, port=1, served_model_name="tiny",
                                   kv_store="/node/kv", kv_store_max_gb=gb)
        cfg = json.loads(argv[argv.index("--kv-transfer-config") + 1])
        return cfg["kv_connector_extra_config"]["max_bytes"]

    assert extra() == DEFAULT_MAX_BYTES
    assert extra(0.5) == 2**29
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(SagaConfigError, match="--kv-store-max-gb"):
            extra(bad)
