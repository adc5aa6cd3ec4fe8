"""The random models' chat tokenizer: deterministic, loadable by ``transformers`` and vLLM, every
id inside the model's vocabulary, and a real vLLM engine answering text chat with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.policy.errors import SagaConfigError
from saga.vllm.testing import (
    TINY_LLAMA,
    build_tiny_llama,
    kv_bytes_for_blocks,
    scoped_env,
    tiny_engine_kwargs,
)
from saga.vllm.tokenizer import (
    BOS_TOKEN,
    BOS_TOKEN_ID,
    EOS_TOKEN,
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    SPECIAL_TOKENS,
    build_chat_tokenizer,
)

VOCAB = TINY_LLAMA["vocab_size"]
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TEXT = "Hello, wörld! 你好 🙂\n\tdef f(x):\n        return x ** 2  # done <|im_end|> ok"
MESSAGES = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name three colours."}]


def _files(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in FILES}


def _tokenizer(d: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


def test_training_gives_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = _files(build_chat_tokenizer(tmp_path / "a", VOCAB))
    assert _files(build_chat_tokenizer(tmp_path / "b", VOCAB)) == first
    # Another process (other hash seeds, other thread schedule) trains the same tokenizer.
    code = ("import sys; from saga.vllm.tokenizer import build_chat_tokenizer; "
            f"build_chat_tokenizer(sys.argv[1], {VOCAB})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True, timeout=60)
    assert _files(tmp_path / "c") == first


@pytest.mark.parametrize("vocab_size", [512, 700, VOCAB])
def test_the_vocabulary_fits_the_model(tmp_path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(build_chat_tokenizer(tmp_path, vocab_size) / "tokenizer.json"))
    ids = tok.get_vocab(with_added_tokens=True).values()
    assert len(ids) <= vocab_size and max(ids) < vocab_size
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.decode(tok.encode(TEXT).ids, skip_special_tokens=False) == TEXT


@pytest.mark.parametrize("vocab_size", [0, 300, 511])
def test_a_vocabulary_too_small_is_refused(tmp_path: Path, vocab_size: int) -> None:
    with pytest.raises(SagaConfigError, match="at least 512"):
        build_chat_tokenizer(tmp_path, vocab_size)


def test_the_tiny_model_ships_a_chat_tokenizer(tiny_model_dir: Path) -> None:
    tok = _tokenizer(tiny_model_dir)
    assert (tok.bos_token, tok.eos_token) == (BOS_TOKEN, EOS_TOKEN)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID)
    # bos and eos agree with what the model (and vLLM's stop tokens) read.
    for name in ("config.json", "generation_config.json"):
        config = json.loads((tiny_model_dir / name).read_text())
        assert (config["bos_token_id"], config["eos_token_id"]) == (BOS_TOKEN_ID, EOS_TOKEN_ID)
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert max(ids) < VOCAB and tok.decode(ids) == TEXT
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
                    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n")
    assert not tok.apply_chat_template(MESSAGES, tokenize=False).endswith("assistant\n")
    chat_ids = tok.encode(text, add_special_tokens=False)
    assert chat_ids[:2] == [BOS_TOKEN_ID, tok.convert_tokens_to_ids("<|im_start|>")]
    assert chat_ids.count(EOS_TOKEN_ID) == 2 and max(chat_ids) < VOCAB
    assert tok.decode(chat_ids) == text
    # OpenAI-style content parts: the text parts joined, other parts dropped.
    parts = [MESSAGES[0], {"role": "user", "content": [
        {"type": "text", "text": "Name three "},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "text", "text": "colours."}]}]
    assert tok.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == text


def test_an_old_cached_model_without_tokenizer_is_rebuilt(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    old = shutil.copytree(tiny_model_dir, tmp_path / "old")
    for name in FILES:
        (old / name).unlink()
    marker = old / "saga_tiny_llama.json"
    (marker).write_text(json.dumps({"seed": 0, **TINY_LLAMA}))  # what the marker held before
    build_tiny_llama(old, seed=0)
    assert _files(old) == _files(tiny_model_dir)
    assert (old / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[Any]:
    """A stock in-process vLLM engine that loads the model's tokenizer."""
    from vllm import LLM

    kwargs = tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(64), max_num_seqs=2,
                                max_model_len=512, skip_tokenizer_init=False)
    with scoped_env("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
        engine = LLM(**kwargs)
    yield engine
    engine.llm_engine.engine_core.shutdown()


def test_vllm_answers_text_chat_with_the_tokenizer(llm: Any, tiny_model_dir: Path) -> None:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    out = llm.chat(MESSAGES, params, use_tqdm=False)[0]
    tok = _tokenizer(tiny_model_dir)
    want = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert list(out.prompt_token_ids) == tok.encode(want, add_special_tokens=False)
    gen = out.outputs[0]
    assert len(gen.token_ids) == 6 and max(gen.token_ids) < VOCAB
    assert isinstance(gen.text, str) and gen.text == tok.decode(gen.token_ids,
                                                                skip_special_tokens=True)
    text_out = llm.generate(["The quick brown fox"], params, use_tqdm=False)[0]
    assert list(text_out.prompt_token_ids) == tok.encode("The quick brown fox",
                                                         add_special_tokens=False)
    assert len(text_out.outputs[0].token_ids) == 6
