"""A tiny random Llama and engine settings for tests, the compare command and the demo.

No model can be downloaded here, so every run builds a small random Llama with ``transformers``
and drives vLLM with token ids (``skip_tokenizer_init=True``). Weights are random, so outputs are
meaningless but deterministic, which is all the scheduler needs: prompt lengths, prefix hashes and
KV blocks behave exactly as with a real model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saga.vllm.config import SagaSchedulerConfig
    from saga.vllm.metadata import SagaRequestMeta

TINY_LLAMA = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
}
"""Shape of the test model: small enough to run on 2 CPU cores, big enough to page KV."""

SMALL_LLAMA = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "vocab_size": 1024,
    "max_position_embeddings": 8192,
}
"""A ~60M-parameter shape for measurements where a prefill must cost time, as it does with real
models (on 2 CPU cores a 1,000-token prefill takes on the order of a second)."""

MODEL_SHAPES: dict[str, dict[str, int]] = {"tiny": TINY_LLAMA, "small": SMALL_LLAMA}
"""Model shapes by name (``saga vllm compare --model``)."""

_MARKER = "saga_tiny_llama.json"
SCHEDULER_CLS = "saga.vllm.scheduler.SagaScheduler"
ASYNC_SCHEDULER_CLS = "saga.vllm.scheduler.SagaAsyncScheduler"
VALIDATOR_CLS = "saga.vllm.scheduler:SagaMetadataValidator"
STEP_SCHEDULER_CLS = "saga.vllm.steps.StepRecordingScheduler"


def model_shape(name: str) -> dict[str, int]:
    """The shape called ``name`` in :data:`MODEL_SHAPES`, or a clear error."""
    shape = MODEL_SHAPES.get(name)
    if shape is None:
        from saga.policy.errors import SagaConfigError

        raise SagaConfigError(f"unknown model {name!r}; choose one of {sorted(MODEL_SHAPES)}")
    return shape


def build_tiny_llama(path: str | os.PathLike[str], seed: int = 0,
                     shape: dict[str, int] | None = None) -> Path:
    """Save a random Llama (float32) of ``shape`` (default :data:`TINY_LLAMA`) under ``path``.

    Cached by path: a directory already holding the model built with the same ``seed`` and shape
    is returned without touching ``transformers`` (importing it alone takes seconds).
    """
    shape = TINY_LLAMA if shape is None else shape
    out = Path(path)
    marker = out / _MARKER
    want = {"seed": seed, **shape}
    if marker.is_file() and (out / "config.json").is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return out
        except (OSError, ValueError):
            pass
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, torch_dtype="float32", tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    marker.write_text(json.dumps(want))
    return out


def tiny_engine_kwargs(model_dir: str | os.PathLike[str], kv_cache_bytes: int, *,
                       saga: SagaSchedulerConfig | None = None, block_size: int = 32,
                       enforce_eager: bool = True, max_model_len: int | None = None,
                       max_num_seqs: int = 16, max_num_batched_tokens: int | None = None,
                       seed: int = 0, async_scheduling: bool = False,
                       shape: dict[str, int] | None = None, record_steps: int = 0,
                       **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM(**kw)`` / ``EngineArgs(**kw)`` on the tiny model.

    ``saga=None`` gives the stock scheduler (prefix caching on); a :class:`SagaSchedulerConfig`
    selects :class:`~saga.vllm.scheduler.SagaScheduler` and passes the config through
    ``additional_config["saga"]``, which vLLM serialises into the engine-core process too.
    ``enforce_eager`` with compilation off skips torch.compile and graph capture, the bulk of
    a cold start. ``max_model_len`` defaults to what the pool can hold (vLLM refuses a longer
    one). ``kv_cache_bytes`` sets the KV pool directly (``kv_cache_memory_bytes``), so
    tests can size it in blocks with :func:`kv_bytes_for_blocks`. ``async_scheduling`` selects
    vLLM's async scheduler (and :class:`~saga.vllm.scheduler.SagaAsyncScheduler` with SAGA).
    ``shape`` is the model's (default :data:`TINY_LLAMA`). ``record_steps`` > 0 keeps a log of
    the last that many engine steps (:mod:`saga.vllm.steps`); stock vLLM then runs
    :class:`~saga.vllm.steps.StepRecordingScheduler` (vLLM's scheduler plus the log).
    """
    shape = TINY_LLAMA if shape is None else shape
    if max_model_len is None:
        # vLLM refuses to start unless one request of max_model_len fits in the pool.
        fit = (int(kv_cache_bytes) // kv_bytes_per_block(block_size, shape) - 1) * block_size
        max_model_len = max(block_size, min(shape["max_position_embeddings"], fit))
    kw: dict[str, Any] = {
        "model": str(model_dir),
        "skip_tokenizer_init": True,
        "kv_cache_memory_bytes": int(kv_cache_bytes),
        "block_size": block_size,
        "enable_prefix_caching": True,
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens or max_model_len,
        "dtype": "float32",
        "enforce_eager": enforce_eager,
        "seed": seed,
        "disable_log_stats": True,
        "async_scheduling": async_scheduling,
    }
    if enforce_eager:
        kw["compilation_config"] = {"mode": 0}
    if saga is not None:
        kw["scheduler_cls"] = ASYNC_SCHEDULER_CLS if async_scheduling else SCHEDULER_CLS
        kw["additional_config"] = {"saga": dataclasses.asdict(saga)}
        # Rejects malformed extra_args["saga"] in the front end, naming the field.
        kw["logits_processors"] = [VALIDATOR_CLS]
    if record_steps:
        from saga.vllm.steps import STEP_LOG_KEY

        if saga is None:
            if async_scheduling:
                from saga.policy.errors import SagaConfigError

                raise SagaConfigError(
                    "record_steps on stock vLLM needs async_scheduling=False")
            kw["scheduler_cls"] = STEP_SCHEDULER_CLS
        kw["additional_config"] = {**kw.get("additional_config", {}),
                                   STEP_LOG_KEY: int(record_steps)}
    kw.update(extra)
    return kw


def kv_bytes_per_block(block_size: int = 32, shape: dict[str, int] | None = None) -> int:
    """KV bytes one block of the model of ``shape`` (default :data:`TINY_LLAMA`) takes
    (K and V, every layer, float32)."""
    shape = TINY_LLAMA if shape is None else shape
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    per_token = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * 4
    return per_token * block_size


def kv_bytes_for_blocks(num_blocks: int, block_size: int = 32,
                        shape: dict[str, int] | None = None) -> int:
    """``kv_cache_bytes`` giving a pool of ``num_blocks`` usable blocks (vLLM reserves one)."""
    return kv_bytes_per_block(block_size, shape) * (num_blocks + 1)


def engine_scheduler(llm: Any) -> Any:
    """The scheduler of an in-process ``vllm.LLM`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    core = llm.llm_engine.engine_core
    inner = getattr(core, "engine_core", None)
    if inner is None:
        raise RuntimeError("the scheduler is in another process; set "
                           "VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the LLM")
    return inner.scheduler


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


__all__ = [
    "ASYNC_SCHEDULER_CLS",
    "MODEL_SHAPES",
    "SCHEDULER_CLS",
    "SMALL_LLAMA",
    "STEP_SCHEDULER_CLS",
    "TINY_LLAMA",
    "VALIDATOR_CLS",
    "build_tiny_llama",
    "cpu_threads",
    "engine_scheduler",
    "kv_bytes_for_blocks",
    "kv_bytes_per_block",
    "model_shape",
    "run_prompts",
    "tiny_engine_kwargs",
]


class ManualClock:
    """A clock tests set by hand (``clock.t = ...``) and inject as ``SagaScheduler.clock``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@contextmanager
def scoped_env(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) one environment variable for the block, then restore it.

    vLLM reads ``VLLM_ENABLE_V1_MULTIPROCESSING`` when an engine starts; this keeps one engine's
    choice from leaking into the next.
    """
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block's CPU engines on ``n`` unbound OpenMP threads (None: vLLM's own binding).

    vLLM's CPU worker binds one OpenMP thread per core by default. On a machine shared with
    other jobs a bound thread whose core is taken stalls every parallel region: on 2 shared
    cores whole engine runs measured 20-50x slower steps (in episodes, per process) than the
    same engine with one unbound thread. Sets ``VLLM_CPU_OMP_THREADS_BIND=nobind`` and
    ``OMP_NUM_THREADS`` (for an engine-core process) and this process's torch thread count (for
    an in-process engine), restoring all three after the block.
    """
    if n is None:
        yield
        return
    if n < 1:
        from saga.policy.errors import SagaConfigError

        raise SagaConfigError(f"cpu_threads must be >= 1 or None, got {n}")
    import torch

    # vLLM's CPU worker replaces torch.set_num_threads by a no-op; torch._C keeps the original.
    set_threads = torch._C.set_num_threads
    old = torch.get_num_threads()
    with scoped_env("VLLM_CPU_OMP_THREADS_BIND", "nobind"), scoped_env("OMP_NUM_THREADS", str(n)):
        set_threads(n)
        try:
            yield
        finally:
            set_threads(old)

