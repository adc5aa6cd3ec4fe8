"""The scheduler's marker file: written when SagaScheduler starts and, with its final stats,
when the engine shuts down (the API server test shows it runs in the engine-core process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.testing import kv_bytes_for_blocks, run_prompts, tiny_engine_kwargs


def test_marker_records_the_start_and_the_final_stats(tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    from vllm import LLM

    marker = tmp_path / "saga-marker.json"
    cfg = SagaSchedulerConfig.from_preset("saga_no_afs", marker_path=str(marker))
    llm = LLM(**tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(12), saga=cfg))
    try:
        started = json.loads(marker.read_text())
        assert started["event"] == "started" and started["class"] == "SagaScheduler"
        assert started["pid"] == os.getpid()  # in-process engine core
        prompt = list(range(1, 100))
        run_prompts(llm, [prompt], metas=[SagaRequestMeta("m", pending_tool="t")])
        out = run_prompts(llm, [prompt + [7] * 10], metas=[SagaRequestMeta("m")])
        assert out[0].num_cached_tokens == 96
    finally:
        llm.llm_engine.engine_core.shutdown()
    final = json.loads(marker.read_text())
    assert final["event"] == "shutdown"
    assert final["config"]["preset"] == "saga_no_afs"
    assert final["stats"]["eviction_enacted"] == "walru_score"
    assert final["stats"]["pins_created"] == 1
    assert final["stats"]["pin_releases"] == {"returned": 1}
    assert final["stats"]["prefix_hit_tokens"] == 96
