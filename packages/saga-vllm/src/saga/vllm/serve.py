"""``python -m saga.vllm.serve``: one SAGA vLLM engine behind vLLM's OpenAI-compatible server.

```
python -m saga.vllm.serve --model tiny|small|PATH --port P [--host 127.0.0.1]
    [--preset saga] [--kv-blocks N] [--max-num-seqs 8] [--max-model-len L]
    [--cache-dir DIR] [--seed 0] [--served-model-name NAME] [--kv-store DIR]
    [--kv-store-max-gb 4] [-- <extra vLLM api_server args>]
```

The model is resolved (:func:`saga.vllm.models.resolve_model`; ``tiny`` and ``small`` are built
under ``--cache-dir`` with their chat tokenizer), then this process replaces itself
(``os.execv``) with ``python -m vllm.entrypoints.openai.api_server`` running
:class:`~saga.vllm.scheduler.SagaScheduler` with the preset's configuration, so whoever started
it (a gateway's launcher) holds the server's own pid and signals reach vLLM directly. Everything
is checked before vLLM starts: a bad option is one line ``error: ...`` naming it, exit code 2.
:func:`api_server_argv` builds the command line without starting anything.

``--kv-store DIR`` turns on SAGA's KV connector (:mod:`saga.vllm.kv_connector`): the engine
writes every full KV block to the node store ``DIR`` and loads a moved session's prefix from it
when a request asks (``kv_transfer_params: {"saga_load": true}``, which the gateway sends). Give
every engine of a node the same directory. ``--kv-store-max-gb`` caps the store (default 4 GiB):
past it, the entries used longest ago are deleted by a background sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from saga.policy.errors import SagaConfigError, SagaError
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.kv_store import DEFAULT_MAX_BYTES, kv_transfer_config
from saga.vllm.models import (
    MODEL_SHAPES,
    SCHEDULER_CLS,
    VALIDATOR_CLS,
    ModelShape,
    ModelSource,
    kv_bytes_for_blocks,
    resolve_model,
)

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_CACHE_DIR",
    "api_server_argv",
    "build_command",
    "main",
    "parse_args",
]

BLOCK_SIZE = 32
"""Tokens per KV block: ``--kv-blocks`` counts blocks of this size, as everywhere in SAGA."""
DEFAULT_CACHE_DIR = "~/.cache/saga/models"
"""Where ``tiny`` and ``small`` are built (one directory per name and seed)."""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`SagaConfigError` (one ``error:`` line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise SagaConfigError(message)


def _parser() -> _Parser:
    p = _Parser(prog="python -m saga.vllm.serve",
                description="Serve one SAGA vLLM engine (OpenAI-compatible API); arguments "
                            "after -- go to vLLM's api_server unchanged.")
    p.add_argument("--model", required=True,
                   help=f"{', '.join(MODEL_SHAPES)} or a local Hugging Face model directory")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--preset", default="saga", help="a SAGA preset (saga show presets)")
    p.add_argument("--kv-blocks", type=int, default=None,
                   help=f"KV pool in blocks of {BLOCK_SIZE} tokens (default: vLLM's)")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help="where tiny and small are built")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--served-model-name", default=None,
                   help="default: the --model argument (a directory's name for a path)")
    p.add_argument("--kv-store", default=None, metavar="DIR",
                   help="node-local KV store shared by this node's engines: a moved "
                        "session's prefix is loaded from it instead of recomputed")
    p.add_argument("--kv-store-max-gb", type=float, default=DEFAULT_MAX_BYTES / 2**30,
                   metavar="GB", help="size cap of --kv-store in GiB; past it the entries "
                                      "used longest ago are deleted (default: %(default)s)")
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This entrypoint's options and the extra vLLM arguments (everything after ``--``)."""
    args = list(argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1:]
    return _parser().parse_args(args), extra


def _check(name: str, value: int | None, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise SagaConfigError(f"{name} must be {bound}, got {value}")


def api_server_argv(model_dir: str | os.PathLike[str], shape: ModelShape, *, port: int,
                    served_model_name: str, host: str = "127.0.0.1", preset: str = "saga",
                    kv_blocks: int | None = None, max_num_seqs: int = 8,
                    max_model_len: int | None = None, seed: int = 0,
                    skip_tokenizer_init: bool = False, extra_args: Sequence[str] = (),
                    kv_store: str | os.PathLike[str] | None = None,
                    kv_store_max_gb: float = DEFAULT_MAX_BYTES / 2**30,
                    python: str = sys.executable) -> list[str]:
    """The command line of vLLM's OpenAI server running SAGA's scheduler on ``model_dir``.

    Checks every number (naming the option) and the preset; pure otherwise. ``max_model_len``
    defaults, with ``kv_blocks``, to what the pool holds (vLLM refuses a longer one), at most
    the model's positions; without ``kv_blocks`` vLLM sizes the pool and the length.
    """
    _check("--port", port, 1, 65535)
    _check("--kv-blocks", kv_blocks, 1)
    _check("--max-num-seqs", max_num_seqs, 1)
    _check("--max-model-len", max_model_len, 1, shape.max_positions)
    _check("--seed", seed, 0)
    if not served_model_name.strip():
        raise SagaConfigError("--served-model-name must not be empty")
    if not host.strip():
        raise SagaConfigError("--host must not be empty")
    try:
        saga = SagaSchedulerConfig.from_preset(preset)
    except SagaConfigError as exc:
        raise SagaConfigError(f"--preset: {exc}") from None
    if kv_blocks is not None:
        pool = kv_blocks * BLOCK_SIZE
        if max_model_len is None:
            max_model_len = max(BLOCK_SIZE, min(shape.max_positions, pool))
        elif max_model_len > pool:
            raise SagaConfigError(
                f"--max-model-len {max_model_len} does not fit in --kv-blocks {kv_blocks} "
                f"({pool} tokens); vLLM needs one request of that length to fit; raise "
                "--kv-blocks or lower --max-model-len")
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", os.fspath(model_dir), "--served-model-name", served_model_name,
        "--host", host, "--port", str(port), "--seed", str(seed),
        "--dtype", shape.dtype, "--enforce-eager", "--compilation-config", '{"mode": 0}',
        "--block-size", str(BLOCK_SIZE), "--max-num-seqs", str(max_num_seqs),
        "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--scheduler-cls", SCHEDULER_CLS,
        "--additional-config", json.dumps({"saga": saga.to_dict()}, sort_keys=True),
        "--logits-processors", VALIDATOR_CLS,
        "--disable-uvicorn-access-log",
    ]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if kv_blocks is not None:
        argv += ["--kv-cache-memory-bytes",
                 str(kv_bytes_for_blocks(kv_blocks, BLOCK_SIZE, shape))]
    if skip_tokenizer_init:
        argv.append("--skip-tokenizer-init")
    if kv_store is not None:
        if not os.fspath(kv_store).strip():
            raise SagaConfigError("--kv-store must not be empty")
        if not (kv_store_max_gb > 0 and math.isfinite(kv_store_max_gb)):
            raise SagaConfigError(f"--kv-store-max-gb must be a number of GiB > 0, got "
                                  f"{kv_store_max_gb}")
        store = os.fspath(Path(kv_store).expanduser().absolute())
        cap = int(kv_store_max_gb * 2**30)
        argv += ["--kv-transfer-config", json.dumps(kv_transfer_config(store, cap))]
    return argv + list(extra_args)


def _make_store(kv_store: str) -> None:
    """Create the KV store directory if missing; refuse one this engine cannot write."""
    where = Path(kv_store).expanduser().absolute()
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SagaConfigError(f"--kv-store: cannot create {where}: {exc.strerror or exc}; give "
                              "a writable directory") from None
    if not os.access(where, os.W_OK | os.X_OK):
        raise SagaConfigError(f"--kv-store: {where} is not writable; give a writable directory")


def _model_dir(source: ModelSource, cache_dir: str, seed: int) -> Path:
    """The directory vLLM loads: a path as given, a random model built under ``cache_dir``."""
    if source.path is not None:
        return source.path
    where = Path(cache_dir).expanduser() / f"{source.name}-seed{seed}"
    try:
        return source.local_dir(where, seed=seed)
    except OSError as exc:
        raise SagaConfigError(f"--cache-dir: cannot build model {source.name} in {where}: "
                              f"{exc}; give a writable --cache-dir") from None


def build_command(argv: Sequence[str]) -> list[str]:
    """Parse ``argv``, resolve (and build) the model and return the api_server command line."""
    args, extra = parse_args(argv)
    _check("--seed", args.seed, 0)
    try:
        source = resolve_model(args.model)
    except SagaConfigError as exc:
        raise SagaConfigError(f"--model: {exc}") from None
    name = args.served_model_name
    if name is None:
        name = args.model if source.path is None else source.path.name
    # Check every number before the (slow, first-time) model build.
    api_server_argv(source.path or args.model, source.shape, port=args.port,
                    served_model_name=name, host=args.host, preset=args.preset,
                    kv_blocks=args.kv_blocks, max_num_seqs=args.max_num_seqs,
                    max_model_len=args.max_model_len, seed=args.seed, kv_store=args.kv_store,
                    kv_store_max_gb=args.kv_store_max_gb)
    if args.kv_store is not None:
        _make_store(args.kv_store)
    model_dir = _model_dir(source, args.cache_dir, args.seed)
    no_tokenizer = not any((model_dir / f).is_file() for f in _TOKENIZER_FILES)
    return api_server_argv(model_dir, source.shape, port=args.port, served_model_name=name,
                           host=args.host, preset=args.preset, kv_blocks=args.kv_blocks,
                           max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                           seed=args.seed, skip_tokenizer_init=no_tokenizer, extra_args=extra,
                           kv_store=args.kv_store, kv_store_max_gb=args.kv_store_max_gb)


def main(argv: Sequence[str] | None = None) -> int:
    """Check the options, then become vLLM's API server (returns only on an error: 2)."""
    try:
        command = build_command(sys.argv[1:] if argv is None else argv)
    except SagaError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
