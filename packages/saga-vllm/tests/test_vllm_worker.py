"""`saga.vllm.worker`: the engine a coordinator's worker hosts, on a model directory a user brings.

The factory goes through pickle (as Ray sends it to a worker actor), builds a real in-process
vLLM engine with SAGA's scheduler, and serves an agent session through the engine protocol of
``saga.policy.engine``: the second call finds the first call's context in the prefix cache.
"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest

from saga.policy.engine import Engine, EngineCall
from saga.vllm.testing import build_hf_model_dir
from saga.vllm.worker import VllmEngine, vllm_engine_factory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hf_model_dir(tmp_path_factory.mktemp("user-model") / "llama")


def test_a_worker_engine_serves_a_session_from_a_model_directory(model_dir: Path) -> None:
    assert (model_dir / "tokenizer.json").is_file()
    factory = pickle.loads(pickle.dumps(
        vllm_engine_factory(str(model_dir), model_dir.parent / "unused", kv_blocks=32,
                            max_num_seqs=4)))
    engine = factory()
    assert isinstance(engine, VllmEngine)
    host: Engine = engine  # what saga-coordinator's WorkerHost holds
    try:
        prompt = [(7 * i) % 1000 + 1 for i in range(200)]

        async def session() -> tuple[int, int, int]:
            first = await host.call(EngineCall("s1", "t", "swe", prompt, 4, pending_tool="grep"))
            during = host.report()
            second = await host.call(EngineCall(
                "s1", "t", "swe", [*prompt, *first.output_token_ids, 5, 6, 7], 4, final=True))
            assert len(first.output_token_ids) == len(second.output_token_ids) == 4
            assert during.load == 0.0 and 0.0 < during.pressure <= 1.0
            return first.num_cached_tokens, second.num_cached_tokens, second.prompt_tokens

        cached_first, cached_second, prompt_second = asyncio.run(session())
        assert cached_first == 0
        # The pinned context (blocks of 32 tokens) came back from the cache.
        assert 192 <= cached_second < prompt_second == 207
        assert host.slots == 4 and host.report().load == 0.0
    finally:
        host.shutdown()
