"""SAGA's KV store and connector: entries round-trip and refuse corruption; a real engine saves
every full block, loads a stored prefix only when a request asks, with the same greedy output as
computing it, and recomputes (never fails) when an entry is corrupted."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.kv_store import (
    CONNECTOR_NAME,
    BlockEntry,
    KVBlockStore,
    StoreError,
    kv_transfer_config,
)
from saga.vllm.models import TINY_LLAMA, ModelShape
from saga.vllm.serve import api_server_argv, build_command

# -- the store -----------------------------------------------------------------------------------


def test_entry_round_trips_and_is_written_once(tmp_path: Path) -> None:
    store = KVBlockStore(tmp_path, "ns")
    key, entry = b"\x01" * 32, BlockEntry((2, 3), "torch.float32", bytes(range(24)))
    assert not store.has(key)
    assert store.save(key, entry) and store.has(key)
    assert not store.save(key, BlockEntry((2, 3), "torch.float32", bytes(24)))
    assert store.load(key) == entry
    assert not list(store.dir.rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_a_damaged_entry_is_refused_and_removed(tmp_path: Path, damage: str) -> None:
    store = KVBlockStore(tmp_path, "ns")
    key = b"\x02" * 32
    store.save(key, BlockEntry((4,), "torch.float32", bytes(16) + b"abcd"))
    path = store.path(key)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-1] ^= 0xFF
    elif damage == "truncate":
        raw = raw[:-3]
    elif damage == "garbage":
        raw = bytearray(b"not a block at all")
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError):
        store.load(key)
    assert not store.has(key)


def test_missing_entries_and_store(tmp_path: Path) -> None:
    store = KVBlockStore(tmp_path / "nowhere", "ns")
    assert not store.has(b"\x03" * 32)
    with pytest.raises(StoreError):
        store.load(b"\x03" * 32)


# -- the engine command --------------------------------------------------------------------------


def test_kv_store_option_adds_the_connector(tmp_path: Path) -> None:
    shape = ModelShape.from_config(TINY_LLAMA)
    argv = api_server_argv("/m", shape, port=8000, served_model_name="tiny",
                           kv_store=tmp_path / "kv")
    cfg = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert cfg == kv_transfer_config(str(tmp_path / "kv"), 4 * 2**30)  # the default cap
    assert cfg["kv_connector"] == CONNECTOR_NAME
    assert "--kv-transfer-config" not in api_server_argv("/m", shape, port=8000,
                                                         served_model_name="tiny")
    with pytest.raises(SagaConfigError, match="--kv-store"):
        api_server_argv("/m", shape, port=8000, served_model_name="tiny", kv_store=" ")


def test_an_unwritable_kv_store_is_refused_before_vllm(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SagaConfigError, match="--kv-store"):
        build_command(["--model", "tiny", "--port", "1", "--cache-dir", str(tmp_path),
                       "--kv-store", str(blocker / "kv")])


# -- a real engine -------------------------------------------------------------------------------

PROMPT, OUT, MORE = 600, 8, 16
BLOCK = 32


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Any, Path]]:
    from vllm import LLM
    from vllm.config import KVTransferConfig

    store = tmp_path_factory.mktemp("kvstore")
    llm = LLM(model=str(tiny_model_dir), dtype="float32", enforce_eager=True,
              block_size=BLOCK, max_model_len=1024, enable_prefix_caching=True,
              kv_cache_memory_bytes=64 * BLOCK * 32 * 1024, max_num_seqs=2, seed=0,
              compilation_config={"mode": 0}, disable_log_stats=False,
              kv_transfer_config=KVTransferConfig(**kv_transfer_config(str(store))))
    yield llm, store
    del llm


def _run(llm: Any, prompt: list[int], load: bool = False) -> tuple[list[int], int]:
    from vllm import SamplingParams

    extra = {"kv_transfer_params": {"saga_load": True}} if load else None
    sp = SamplingParams(max_tokens=OUT, temperature=0.0, extra_args=extra)
    out = llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)[0]
    return list(out.outputs[0].token_ids), int(out.num_cached_tokens or 0)


def _counter(llm: Any, name: str) -> float:
    return sum(float(m.value) for m in llm.get_metrics() if m.name == name)


def _turns(seed: int, llm: Any) -> list[int]:
    rng = random.Random(seed)
    p1 = [rng.randrange(5, 1000) for _ in range(PROMPT)]
    first, _ = _run(llm, p1)
    return p1 + first + [rng.randrange(5, 1000) for _ in range(MORE)]


def test_stored_prefix_loads_with_identical_output(engine: tuple[Any, Path]) -> None:
    llm, store = engine
    p2 = _turns(1, llm)
    saved = len(list(store.rglob("*.kv")))
    assert saved >= PROMPT // BLOCK  # every full block of the first turn, written through
    llm.reset_prefix_cache()
    recomputed, cached = _run(llm, p2)  # no load asked: the store is not read
    assert cached == 0
    llm.reset_prefix_cache()
    loaded_before = _counter(llm, "vllm:saga_kv_store_loaded_blocks")
    moved, cached = _run(llm, p2, load=True)
    assert moved == recomputed
    assert cached >= 0.9 * len(p2)
    assert _counter(llm, "vllm:saga_kv_store_loaded_blocks") - loaded_before >= cached // BLOCK


def test_corrupted_entries_fall_back_to_recompute(engine: tuple[Any, Path]) -> None:
    llm, store = engine
    p2 = _turns(2, llm)
    llm.reset_prefix_cache()
    reference, _ = _run(llm, p2)
    llm.reset_prefix_cache()
    entries = sorted(store.rglob("*.kv"))
    for path in entries:  # damage every entry; loads must fail, the engine must not
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    errors_before = _counter(llm, "vllm:saga_kv_store_load_errors")
    out, _ = _run(llm, p2, load=True)
    assert out == reference
    assert _counter(llm, "vllm:saga_kv_store_load_errors") > errors_before
    shutil.rmtree(store)  # a store that vanished: nothing is promised, nothing breaks
    llm.reset_prefix_cache()
    out, cached = _run(llm, p2, load=True)
    assert out == reference and cached == 0
