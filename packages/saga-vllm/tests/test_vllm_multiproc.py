"""With vLLM's multiprocess engine, SagaScheduler runs in the engine-core process.

The config travels in ``additional_config["saga"]``; its ``marker_path`` makes the scheduler
write its pid, class and stats when it starts (and when it shuts down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD = """
import json, os, sys
from pathlib import Path
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.testing import kv_bytes_for_blocks, run_prompts, tiny_engine_kwargs

def main() -> None:
    from vllm import LLM
    model_dir, marker = Path(sys.argv[1]), sys.argv[2]
    cfg = SagaSchedulerConfig(walru=True, ttl=True, marker_path=marker)
    llm = LLM(**tiny_engine_kwargs(model_dir, kv_bytes_for_blocks(12), saga=cfg,
                                  distributed_executor_backend="uni"))
    try:
        in_process = hasattr(llm.llm_engine.engine_core, "engine_core")
        prompt = list(range(1, 100))
        run_prompts(llm, [prompt], metas=[SagaRequestMeta("m", pending_tool="t")])
        out = run_prompts(llm, [prompt + [7] * 10], metas=[SagaRequestMeta("m")])
        print(json.dumps({"pid": os.getpid(), "in_process": in_process,
                          "cached": out[0].num_cached_tokens}))
    finally:
        llm.llm_engine.engine_core.shutdown()

if __name__ == "__main__":
    main()
"""


def test_saga_scheduler_runs_in_the_engine_core_process(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    # A child interpreter: vLLM freezes its environment and distributed state per process, so a
    # multiprocess engine must not share the test process with the in-process engines.
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    marker = tmp_path / "saga-marker.json"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
           "VLLM_WORKER_MULTIPROC_METHOD": "fork", "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(marker)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not child["in_process"]
    assert child["cached"] == 96
    deadline = time.monotonic() + 10
    while json.loads(marker.read_text())["event"] != "shutdown" and time.monotonic() < deadline:
        time.sleep(0.1)
    final = json.loads(marker.read_text())
    assert final["class"] == "SagaScheduler"
    assert final["pid"] not in (os.getpid(), child["pid"])  # the engine-core process
    assert final["config"]["walru"] and final["config"]["ttl"]
    assert final["event"] == "shutdown"
    assert final["stats"]["pins_created"] == 1
    assert final["stats"]["pin_releases"] == {"returned": 1}
    assert final["stats"]["prefix_hit_tokens"] == 96
