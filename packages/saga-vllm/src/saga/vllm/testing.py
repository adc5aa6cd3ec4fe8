"""Test helpers for SAGA's vLLM engines: a hand-set clock, the in-process scheduler, one-batch
prompts, and a Hugging Face model directory to load as a user's model.

Only tests import this module (a test checks that no product module does); what product code
needs to build or load a model lives in :mod:`saga.vllm.models`, re-exported here under the names
the tests use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saga.vllm.config import CONFIG_KEY
from saga.vllm.models import (
    ASYNC_SCHEDULER_CLS,
    MODEL_SHAPES,
    SCHEDULER_CLS,
    SMALL_LLAMA,
    STEP_SCHEDULER_CLS,
    TINY_LLAMA,
    VALIDATOR_CLS,
    build_tiny_llama,
    cpu_threads,
    kv_bytes_for_blocks,
    kv_bytes_per_block,
    model_shape,
    scoped_env,
)
from saga.vllm.models import vllm_engine_kwargs as tiny_engine_kwargs

if TYPE_CHECKING:
    from saga.vllm.metadata import SagaRequestMeta

__all__ = [
    "ASYNC_SCHEDULER_CLS",
    "MODEL_SHAPES",
    "SCHEDULER_CLS",
    "SMALL_LLAMA",
    "STEP_SCHEDULER_CLS",
    "TINY_LLAMA",
    "VALIDATOR_CLS",
    "ManualClock",
    "build_hf_model_dir",
    "build_tiny_llama",
    "cpu_threads",
    "engine_scheduler",
    "kv_bytes_for_blocks",
    "kv_bytes_per_block",
    "model_shape",
    "run_prompts",
    "scoped_env",
    "swap_scheduler",
    "tiny_engine_kwargs",
]


class ManualClock:
    """A clock tests set by hand (``clock.t = ...``) and inject as ``SagaScheduler.clock``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine_scheduler(llm: Any) -> Any:
    """The scheduler of an in-process ``vllm.LLM`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    core = llm.llm_engine.engine_core
    inner = getattr(core, "engine_core", None)
    if inner is None:
        raise RuntimeError("the scheduler is in another process; set "
                           "VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the LLM")
    return inner.scheduler


def swap_scheduler(llm: Any, saga: Any) -> Any:
    """Build a new scheduler of the engine's class the way vLLM's engine core does, from the
    engine's config with ``saga`` (a ``SagaSchedulerConfig`` dict, a preset name or None) in
    ``additional_config["saga"]``, and put it in place of the idle old one: a preset per test
    costs a scheduler, not an engine start."""
    core = llm.llm_engine.engine_core.engine_core
    old = core.scheduler
    assert not old.requests, "swap only an idle scheduler"
    config = old.vllm_config
    config.additional_config = {k: v for k, v in config.additional_config.items()
                                if k != CONFIG_KEY}
    if saga is not None:
        config.additional_config[CONFIG_KEY] = saga
    new = type(old)(vllm_config=config, kv_cache_config=old.kv_cache_config,
                    structured_output_manager=old.structured_output_manager,
                    block_size=old.block_size, log_stats=old.log_stats,
                    include_finished_set=old.finished_req_ids_dict is not None)
    core.scheduler = new
    return new


def run_prompts(llm: Any, prompts: Sequence[Sequence[int]], *,
                metas: Sequence[SagaRequestMeta | None] | None = None,
                cache_salts: Sequence[str | None] | None = None,
                max_tokens: int = 1) -> list[Any]:
    """Greedy-generate ``max_tokens`` tokens for each token-id prompt in one batch; returns
    vLLM's ``RequestOutput`` list (``num_cached_tokens``, ``outputs[0].token_ids``)."""
    from saga.vllm.metadata import saga_extra_args
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    metas = metas or [None] * len(prompts)
    salts = cache_salts or [None] * len(prompts)
    inputs: list[Any] = []
    params: list[Any] = []
    for tokens, meta, salt in zip(prompts, metas, salts, strict=True):
        prompt = TokensPrompt(prompt_token_ids=list(tokens))
        if salt is not None:
            prompt["cache_salt"] = salt
        inputs.append(prompt)
        params.append(SamplingParams(
            max_tokens=max_tokens, temperature=0.0, detokenize=False, ignore_eos=True,
            extra_args=saga_extra_args(meta) if meta is not None else None))
    return list(llm.generate(inputs, params, use_tqdm=False))


def build_hf_model_dir(path: str | os.PathLike[str], seed: int = 0,
                       shape: dict[str, int] | None = None) -> Path:
    """A directory as a user brings one: a random Llama (:func:`build_tiny_llama`) and a
    word-level tokenizer (``t1`` ... ``t<vocab-1>``), both saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shape = TINY_LLAMA if shape is None else shape
    out = build_tiny_llama(path, seed=seed, shape=shape)
    vocab = {"<unk>": 0, **{f"t{i}": i for i in range(1, shape["vocab_size"])}}
    words = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", bos_token="t1",
                            eos_token="t2").save_pretrained(out)
    return out
