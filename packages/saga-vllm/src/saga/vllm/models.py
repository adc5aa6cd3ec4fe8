"""The model a SAGA vLLM engine serves, and the engine settings that follow from it.

A model is named ``tiny`` or ``small`` (a random Llama of that shape, built with
``transformers`` on first use: no download, outputs meaningless but deterministic, prompt lengths,
prefix hashes and KV blocks behave as with a trained model) or given as the path of a local
Hugging Face model directory (``config.json`` and weights, as ``save_pretrained`` writes them).
Either way its shape (layers, KV heads, head dim, dtype) sizes the KV pool in blocks, so a budget
in blocks means the same on every model. The random models come with a small byte-level BPE
tokenizer and a chat template (:mod:`saga.vllm.tokenizer`), so an OpenAI server can serve them
text; SAGA's own engines are driven with token ids (``skip_tokenizer_init=True``): a tokenizer in
the directory is allowed, never needed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saga.policy.errors import SagaConfigError

if TYPE_CHECKING:
    from saga.vllm.config import SagaSchedulerConfig

__all__ = [
    "ASYNC_SCHEDULER_CLS",
    "MODEL_SHAPES",
    "SCHEDULER_CLS",
    "SMALL_LLAMA",
    "STEP_SCHEDULER_CLS",
    "TINY_LLAMA",
    "VALIDATOR_CLS",
    "ModelShape",
    "ModelSource",
    "build_tiny_llama",
    "cpu_threads",
    "kv_bytes_for_blocks",
    "kv_bytes_per_block",
    "model_shape",
    "resolve_model",
    "scoped_env",
    "vllm_engine_kwargs",
]

TINY_LLAMA = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
}
"""Shape of the tiny random model: small enough to run on 2 CPU cores, big enough to page KV."""

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
"""Random model shapes by name (``--model tiny|small``); any other ``--model`` is a path."""

_MARKER = "saga_tiny_llama.json"
SCHEDULER_CLS = "saga.vllm.scheduler.SagaScheduler"
ASYNC_SCHEDULER_CLS = "saga.vllm.scheduler.SagaAsyncScheduler"
VALIDATOR_CLS = "saga.vllm.scheduler:SagaMetadataValidator"
STEP_SCHEDULER_CLS = "saga.vllm.steps.StepRecordingScheduler"

_DTYPES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
           "float16": "float16", "half": "float16"}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


@dataclass(frozen=True)
class ModelShape:
    """What the KV pool's size depends on: K and V of every layer's KV heads, per token."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"
    max_positions: int = 4096
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("layers", "kv_heads", "head_dim", "max_positions", "vocab_size"):
            if getattr(self, name) < 1:
                raise SagaConfigError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in _DTYPE_BYTES:
            raise SagaConfigError(f"model dtype {self.dtype!r} is not one SAGA can size KV for; "
                                  f"use one of {sorted(_DTYPE_BYTES)}")

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, in the model's dtype (vLLM's KV cache follows it)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * _DTYPE_BYTES[self.dtype]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "model config") -> ModelShape:
        """Read the shape from a Hugging Face ``config.json`` (or one of :data:`MODEL_SHAPES`).

        Standard and grouped-query attention: ``num_key_value_heads`` defaults to the attention
        heads and ``head_dim`` to ``hidden_size / num_attention_heads``; the dtype
        (``dtype`` or ``torch_dtype``) to float32. A multimodal config's ``text_config`` is read.
        """
        text = config.get("text_config")
        if "num_hidden_layers" not in config and isinstance(text, Mapping):
            config = text

        def num(*keys: str, default: int | None = None) -> int:
            for key in keys:
                value = config.get(key)
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise SagaConfigError(
                            f"{where}: {key} must be a positive integer, got {value!r}")
                    return value
            if default is None:
                raise SagaConfigError(f"{where} has no {keys[0]}; SAGA reads the model's shape "
                                      "(layers, heads, vocab, positions) from it")
            return default

        heads = num("num_attention_heads", "n_head")
        if config.get("head_dim") is None:
            head_dim = num("hidden_size", "n_embd") // heads
        else:
            head_dim = num("head_dim")
        raw = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        dtype = _DTYPES.get(raw.removeprefix("torch."))
        if dtype is None:
            raise SagaConfigError(f"{where}: dtype {raw!r} is not one SAGA can size KV for; "
                                  f"use one of {sorted(_DTYPE_BYTES)}")
        return cls(layers=num("num_hidden_layers", "n_layer", "num_layers"),
                   kv_heads=num("num_key_value_heads", default=heads),
                   head_dim=head_dim, dtype=dtype,
                   max_positions=num("max_position_embeddings", "n_positions", "max_seq_len"),
                   vocab_size=num("vocab_size"))


ShapeLike = ModelShape | Mapping[str, Any] | None
"""A shape, a config mapping (one of :data:`MODEL_SHAPES`) or None (:data:`TINY_LLAMA`)."""


def _shape(shape: ShapeLike) -> ModelShape:
    if isinstance(shape, ModelShape):
        return shape
    return ModelShape.from_config(TINY_LLAMA if shape is None else shape)


@dataclass(frozen=True)
class ModelSource:
    """A model resolved from ``--model``: a random shape (``path`` None, built on demand) or a
    local Hugging Face directory; ``name`` is what the user gave."""

    name: str
    shape: ModelShape
    path: Path | None = None

    def local_dir(self, cache_dir: str | os.PathLike[str], seed: int = 0) -> Path:
        """The directory vLLM loads: the given one, or the random model built under
        ``cache_dir`` (cached there by seed and shape)."""
        if self.path is not None:
            return self.path
        return build_tiny_llama(cache_dir, seed=seed, shape=MODEL_SHAPES[self.name])

    def check_workload(self, max_context: int, vocab_size: int) -> None:
        """Refuse a workload the model cannot take: contexts past its positions, token ids
        past its vocabulary."""
        if max_context > self.shape.max_positions:
            raise SagaConfigError(
                f"model {self.name} holds at most {self.shape.max_positions} positions, fewer "
                f"than the workload's max context ({max_context}); lower --max-context")
        if vocab_size > self.shape.vocab_size:
            raise SagaConfigError(
                f"model {self.name} has a vocabulary of {self.shape.vocab_size} tokens, smaller "
                f"than the workload's ({vocab_size} token ids); use a model with a larger one")


def resolve_model(model: str | os.PathLike[str]) -> ModelSource:
    """``tiny``, ``small`` or the path of a local Hugging Face model directory, checked.

    A directory must hold ``config.json`` (the shape is read from it) and weights
    (``*.safetensors``, ``*.bin`` or ``*.pt``); anything else is a :class:`SagaConfigError`
    naming the path and what is missing, raised before any engine starts.
    """
    name = os.fspath(model)
    if name in MODEL_SHAPES:
        return ModelSource(name, ModelShape.from_config(MODEL_SHAPES[name], f"model {name}"))
    path = Path(name).expanduser()
    if not path.exists():
        raise SagaConfigError(
            f"unknown model {name!r}: not one of {sorted(MODEL_SHAPES)} and no such directory "
            f"({path.absolute()}); give tiny, small or a local Hugging Face model directory")
    if not path.is_dir():
        raise SagaConfigError(f"model {name!r} is a file, not a directory; give the Hugging Face "
                              "model directory that holds config.json and the weights")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SagaConfigError(f"model directory {path} has no config.json; give a Hugging Face "
                              "model directory (as save_pretrained writes it)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise SagaConfigError(f"cannot read {config_file}: {exc}") from None
    if not isinstance(config, dict):
        raise SagaConfigError(f"{config_file} must hold a JSON object")
    shape = ModelShape.from_config(config, str(config_file))
    if not any(any(path.glob(pattern)) for pattern in _WEIGHTS):
        raise SagaConfigError(f"model directory {path} has no weights "
                              f"({', '.join(_WEIGHTS)}); save the model there with its weights")
    return ModelSource(name, shape, path.resolve())


def model_shape(model: str | os.PathLike[str]) -> ModelShape:
    """The shape of ``tiny``, ``small`` or a local model directory (see :func:`resolve_model`)."""
    return resolve_model(model).shape


def build_tiny_llama(path: str | os.PathLike[str], seed: int = 0,
                     shape: Mapping[str, int] | None = None) -> Path:
    """Save a random Llama (float32) of ``shape`` (default :data:`TINY_LLAMA`) under ``path``,
    with its chat tokenizer (:func:`saga.vllm.tokenizer.build_chat_tokenizer`: every token id
    below the model's vocabulary, bos and eos as ``config.json`` declares them).

    Cached by path: a directory already holding the model built with the same ``seed``, shape
    and tokenizer version is returned without touching ``transformers`` (importing it alone
    takes seconds); an older one (e.g. without a tokenizer) is built again.
    """
    from saga.vllm.tokenizer import TOKENIZER_VERSION, build_chat_tokenizer

    shape = TINY_LLAMA if shape is None else shape
    out = Path(path)
    marker = out / _MARKER
    want = {"seed": seed, **shape, "tokenizer": TOKENIZER_VERSION}
    if _built(out, want):
        return out
    # Several engines may start at once on a cold cache: one builds, the others wait for it.
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _built(out, want):
            return out
        _save_random_llama(out, seed, shape)
        build_chat_tokenizer(out, vocab_size=shape["vocab_size"])
        marker.write_text(json.dumps(want))
    return out


def _built(out: Path, want: Mapping[str, Any]) -> bool:
    """True when ``out`` holds a complete build of ``want`` (its marker is written last)."""
    marker = out / _MARKER
    if not (marker.is_file() and (out / "config.json").is_file()):
        return False
    try:
        return bool(json.loads(marker.read_text()) == want)
    except (OSError, ValueError):
        return False


def _save_random_llama(out: Path, seed: int, shape: Mapping[str, int]) -> None:
    """The random weights and config.json (the marker goes first: a half build is no build)."""
    from saga.vllm.tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID

    (out / _MARKER).unlink(missing_ok=True)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, dtype="float32", tie_word_embeddings=False,
                         bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)


def vllm_engine_kwargs(model_dir: str | os.PathLike[str], kv_cache_bytes: int, *,
                       saga: SagaSchedulerConfig | None = None, block_size: int = 32,
                       enforce_eager: bool = True, max_model_len: int | None = None,
                       max_num_seqs: int = 16, max_num_batched_tokens: int | None = None,
                       seed: int = 0, async_scheduling: bool = False,
                       shape: ShapeLike = None, record_steps: int = 0,
                       **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM(**kw)`` / ``EngineArgs(**kw)`` on the model in
    ``model_dir`` of ``shape`` (default :data:`TINY_LLAMA`; its dtype is passed to vLLM, so the
    KV sizing here and vLLM's agree).

    ``saga=None`` gives the stock scheduler (prefix caching on); a :class:`SagaSchedulerConfig`
    selects :class:`~saga.vllm.scheduler.SagaScheduler` and passes the config through
    ``additional_config["saga"]``, which vLLM serialises into the engine-core process too.
    ``enforce_eager`` with compilation off skips torch.compile and graph capture, the bulk of
    a cold start. ``max_model_len`` defaults to what the pool can hold (vLLM refuses a longer
    one), at most the model's positions. ``kv_cache_bytes`` sets the KV pool directly
    (``kv_cache_memory_bytes``), so callers size it in blocks with :func:`kv_bytes_for_blocks`.
    ``async_scheduling`` selects vLLM's async scheduler (and
    :class:`~saga.vllm.scheduler.SagaAsyncScheduler` with SAGA). ``record_steps`` > 0 keeps a
    log of the last that many engine steps (:mod:`saga.vllm.steps`); stock vLLM then runs
    :class:`~saga.vllm.steps.StepRecordingScheduler` (vLLM's scheduler plus the log).
    """
    spec = _shape(shape)
    if max_model_len is None:
        # vLLM refuses to start unless one request of max_model_len fits in the pool.
        fit = (int(kv_cache_bytes) // kv_bytes_per_block(block_size, spec) - 1) * block_size
        max_model_len = max(block_size, min(spec.max_positions, fit))
    kw: dict[str, Any] = {
        "model": str(model_dir),
        "skip_tokenizer_init": True,
        "kv_cache_memory_bytes": int(kv_cache_bytes),
        "block_size": block_size,
        "enable_prefix_caching": True,
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens or max_model_len,
        "dtype": spec.dtype,
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
                raise SagaConfigError(
                    "record_steps on stock vLLM needs async_scheduling=False")
            kw["scheduler_cls"] = STEP_SCHEDULER_CLS
        kw["additional_config"] = {**kw.get("additional_config", {}),
                                   STEP_LOG_KEY: int(record_steps)}
    kw.update(extra)
    return kw


def kv_bytes_per_block(block_size: int = 32, shape: ShapeLike = None) -> int:
    """KV bytes one block of the model of ``shape`` (default :data:`TINY_LLAMA`) takes
    (K and V, every layer, in the model's dtype)."""
    return _shape(shape).kv_bytes_per_token * block_size


def kv_bytes_for_blocks(num_blocks: int, block_size: int = 32, shape: ShapeLike = None) -> int:
    """``kv_cache_bytes`` giving a pool of ``num_blocks`` usable blocks (vLLM reserves one)."""
    return kv_bytes_per_block(block_size, shape) * (num_blocks + 1)


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
