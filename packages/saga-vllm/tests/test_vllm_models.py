"""`saga.vllm.models` without an engine: shapes from names and from config.json, KV sizing,
engine settings that follow the model, and the errors a bad model path gives."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.models import (
    SMALL_LLAMA,
    TINY_LLAMA,
    ModelShape,
    kv_bytes_per_block,
    model_shape,
    resolve_model,
    vllm_engine_kwargs,
)
from saga.vllm.worker import VllmEngineFactory, vllm_engine_factory

# A Llama-3-8B-like config.json: grouped-query attention, bfloat16, an explicit head_dim.
LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 8192,
             "torch_dtype": "bfloat16"}


def _model_dir(path: Path, config: dict[str, Any] | str, weights: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def test_named_shapes_size_the_kv_pool_as_before() -> None:
    # K and V, every layer, float32: 2 · layers · kv heads · head dim · 4 B per token.
    assert model_shape("tiny") == ModelShape(2, 2, 32, "float32", 4096, 1024)
    assert kv_bytes_per_block(32, model_shape("small")) == 2 * 8 * 4 * 64 * 4 * 32
    assert kv_bytes_per_block(32, SMALL_LLAMA) == kv_bytes_per_block(32, model_shape("small"))
    assert kv_bytes_per_block(32) == kv_bytes_per_block(32, TINY_LLAMA) == 2 * 2 * 2 * 32 * 4 * 32
    tiny = resolve_model("tiny")
    assert tiny.path is None and tiny.name == "tiny"


def test_a_model_directory_is_read_from_its_config(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "llama3", LLAMA3_8B)
    src = resolve_model(str(d))
    assert src.path == d.resolve() and src.name == str(d)
    assert src.shape == ModelShape(32, 8, 128, "bfloat16", 8192, 128256)
    # 2 · 32 layers · 8 kv heads · 128 · 2 B = 128 KiB per token.
    assert src.shape.kv_bytes_per_token == 131072
    assert src.local_dir(tmp_path / "unused") == d.resolve()
    assert not (tmp_path / "unused").exists()
    kw = vllm_engine_kwargs(d, kv_bytes_per_block(32, src.shape) * 101, shape=src.shape)
    # vLLM gets the dtype the pool was sized for; max_model_len stays within the pool.
    assert kw["dtype"] == "bfloat16" and kw["max_model_len"] == 100 * 32
    kw = vllm_engine_kwargs(d, kv_bytes_per_block(32, src.shape) * 1001, shape=src.shape)
    assert kw["max_model_len"] == 8192  # the model's positions, not the pool's 32,000


def test_defaults_and_a_multimodal_text_config(tmp_path: Path) -> None:
    # No kv heads, head_dim or dtype: multi-head attention, hidden / heads, float32.
    plain = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512,
             "vocab_size": 2048, "max_position_embeddings": 1024}
    assert ModelShape.from_config(plain) == ModelShape(4, 8, 64, "float32", 1024, 2048)
    nested = {"architectures": ["X"], "text_config": {**plain, "dtype": "float16"}}
    d = _model_dir(tmp_path / "vl", nested)
    assert model_shape(d).dtype == "float16"


@pytest.mark.parametrize(("config", "weights", "message"), [
    (None, True, "unknown model"),
    ("{not json", True, "cannot read"),
    ("[1, 2]", True, "must hold a JSON object"),
    ({**LLAMA3_8B, "num_hidden_layers": None}, True, "has no num_hidden_layers"),
    ({**LLAMA3_8B, "num_key_value_heads": "8"}, True, "num_key_value_heads must be a positive"),
    ({**LLAMA3_8B, "torch_dtype": "float8_e4m3fn"}, True, "dtype 'float8_e4m3fn'"),
    (LLAMA3_8B, False, "has no weights"),
])
def test_a_bad_model_directory_names_the_path_and_what_is_missing(
        tmp_path: Path, config: Any, weights: bool, message: str) -> None:
    d = tmp_path / "m"
    if config is not None:
        _model_dir(d, config, weights)
    with pytest.raises(SagaConfigError, match=message) as err:
        resolve_model(str(d))
    assert str(d) in str(err.value)


def test_a_directory_without_config_json_or_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SagaConfigError, match=r"has no config\.json") as err:
        resolve_model(tmp_path)
    assert str(tmp_path) in str(err.value)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(SagaConfigError, match="is a file, not a directory"):
        resolve_model(f)


def test_a_workload_the_model_cannot_take_is_refused(tmp_path: Path) -> None:
    small = _model_dir(tmp_path / "short", {**LLAMA3_8B, "max_position_embeddings": 512,
                                            "vocab_size": 500})
    src = resolve_model(small)
    src.check_workload(512, 500)
    with pytest.raises(SagaConfigError, match="at most 512 positions"):
        src.check_workload(600, 500)
    with pytest.raises(SagaConfigError, match="vocabulary of 500 tokens"):
        src.check_workload(512, 1024)


def test_the_worker_factory_checks_the_model_and_pickles(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "llama3", LLAMA3_8B)
    factory = vllm_engine_factory(str(d), tmp_path / "cache", kv_blocks=64)
    assert factory == VllmEngineFactory(str(d.resolve()), 64, 8, model_shape(d))
    # Ray sends the factory to each worker actor.
    assert pickle.loads(pickle.dumps(factory)) == factory
    with pytest.raises(SagaConfigError, match="unknown model"):
        vllm_engine_factory(str(tmp_path / "nope"), tmp_path / "cache")
    with pytest.raises(SagaConfigError, match="--kv-blocks must be >= 1"):
        vllm_engine_factory("tiny", tmp_path / "cache", kv_blocks=0)
