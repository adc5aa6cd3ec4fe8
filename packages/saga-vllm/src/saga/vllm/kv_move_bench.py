"""Time to move a session's KV vs to recompute it, per call, on one real engine.

``python -m saga.vllm.kv_move_bench --model tiny|small|PATH --tokens 1000 --repeats 3``

One in-process engine with SAGA's KV store: a context of ``--tokens`` tokens is prefilled once
(its blocks are written through to the store), then the same call (the context plus 16 new
tokens, one output token) runs, each time on an emptied device cache, either recomputing the
context or loading it from the store, as a moved session's call does on its new engine. Prints
the median wall time of each and the cached tokens the load produced.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saga.vllm.kv_store import kv_transfer_config
from saga.vllm.models import resolve_model

__all__ = ["main"]


def _call(llm: Any, prompt: list[int], load: bool) -> tuple[float, int]:
    from vllm import SamplingParams

    extra = {"kv_transfer_params": {"saga_load": True}} if load else None
    llm.reset_prefix_cache()
    t0 = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": prompt}],
                       SamplingParams(max_tokens=1, temperature=0.0, extra_args=extra),
                       use_tqdm=False)[0]
    return time.perf_counter() - t0, int(out.num_cached_tokens or 0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saga.vllm.kv_move_bench")
    p.add_argument("--model", default="tiny")
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM
    from vllm.config import KVTransferConfig

    source = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = source.path or source.local_dir(Path(tmp) / "model", seed=0)
        llm = LLM(model=str(model_dir), dtype=source.shape.dtype, enforce_eager=True,
                  block_size=32, max_model_len=args.tokens + 64, enable_prefix_caching=True,
                  max_num_seqs=1, seed=0, compilation_config={"mode": 0},
                  kv_cache_memory_bytes=256 * 2**20,
                  kv_transfer_config=KVTransferConfig(**kv_transfer_config(tmp + "/kv")))
        rng = random.Random(0)
        context = [rng.randrange(5, 1000) for _ in range(args.tokens)]
        prompt = context + [rng.randrange(5, 1000) for _ in range(16)]
        _call(llm, context, load=False)  # the source engine's turn: written through
        times: dict[bool, list[float]] = {False: [], True: []}
        cached = 0
        for _ in range(args.repeats):
            for load in (False, True):
                dt, n = _call(llm, prompt, load)
                times[load].append(dt)
                cached = n if load else cached
        recompute, move = (statistics.median(times[k]) for k in (False, True))
        print(f"model {args.model}, context {args.tokens} tokens, call {len(prompt)} tokens: "
              f"recompute {recompute * 1e3:.1f} ms, move (load from store) {move * 1e3:.1f} ms "
              f"({recompute / move:.1f}x), cached after load {cached}/{len(prompt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
