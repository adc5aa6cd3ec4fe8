"""A small chat tokenizer for SAGA's random models, so OpenAI clients can talk to them in text.

The random ``tiny`` and ``small`` Llamas (:mod:`saga.vllm.models`) have no trained tokenizer.
:func:`build_chat_tokenizer` trains a byte-level BPE (any text encodes and decodes back exactly)
on a corpus embedded here, with no download, and writes the files ``transformers.AutoTokenizer``
and vLLM load: ``tokenizer.json``, ``tokenizer_config.json`` (with a ChatML-like Jinja chat
template) and ``special_tokens_map.json``. Training is deterministic: the same bytes every time,
so a cached model directory and a fresh one agree on every token id.

The special tokens take the ids the random Llama's ``config.json`` already declares (bos 1,
eos 2), so the model's weights, its config and its generation config stay as they were; a chat
turn ends with the eos token, so generation stops at the end of the assistant's turn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from saga.policy.errors import SagaConfigError

__all__ = [
    "BOS_TOKEN",
    "BOS_TOKEN_ID",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "EOS_TOKEN_ID",
    "PAD_TOKEN",
    "PAD_TOKEN_ID",
    "SPECIAL_TOKENS",
    "TOKENIZER_VERSION",
    "build_chat_tokenizer",
]

PAD_TOKEN = "<|end_of_text|>"
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, "<|im_start|>")
"""In id order: the trainer gives the special tokens the first ids."""
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 1, 2
"""The ids of :data:`PAD_TOKEN`, :data:`BOS_TOKEN` and :data:`EOS_TOKEN` (the random Llama's
``config.json`` declares bos 1 and eos 2, ``transformers``' defaults)."""

TOKENIZER_VERSION = 1
"""Bumped whenever the files written change, so cached model directories are rebuilt."""

MIN_VOCAB = 512
"""Room for the 256 byte symbols, the special tokens and a useful number of merges."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML-like: each message is its role and content between ``<|im_start|>`` and
``<|im_end|>``; content is a string or OpenAI-style parts (text parts joined, others dropped)."""

_CORPUS = r'''
The scheduler keeps a queue of requests and decides, at every step, which of them run next.
A session is a sequence of calls from one agent: it thinks, calls a tool, waits for the result,
and then calls the model again with a longer context. While the tool runs, the key-value cache
of the session can stay in memory, move to host memory, or be evicted and recomputed later.
Which choice is right depends on how long the tool takes and on how busy the engine is.

Good morning! Could you summarise the report in three sentences? Sure. The first quarter showed
steady growth in every region; costs fell by four percent; the team plans two new releases.
What is the capital of France? Paris. What is 17 times 23? It is 391. Thank you, that helps.
Please write a short poem about the sea. The grey sea rolls, the gulls cry out, the tide goes
home before the night. Tell me a joke. Why did the programmer quit? He did not get arrays.

User: I need to rename every file in a folder so the names are lower case.
Assistant: You can do that with a short shell loop:
    for f in *; do mv -- "$f" "$(echo "$f" | tr 'A-Z' 'a-z')"; done
User: And how do I count the lines of all Python files?
Assistant: Run `find . -name '*.py' | xargs wc -l` from the top folder.

def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    out = [0, 1]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return out[:n]


class Cache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.items.get(key)

    def put(self, key: str, value: bytes) -> None:
        if len(self.items) >= self.capacity:
            oldest = next(iter(self.items))
            del self.items[oldest]
        self.items[key] = value


import json
import os
from pathlib import Path

with open("config.json", encoding="utf-8") as fh:
    config = json.load(fh)
print(f"loaded {len(config)} keys from {os.getcwd()}")
for key, value in sorted(config.items()):
    if isinstance(value, (int, float)) and value > 0:
        print(key, "=", value)

function add(a, b) { return a + b; }
const items = [1, 2, 3].map((x) => x * 2).filter((x) => x > 2);
console.log(JSON.stringify({ items, total: items.reduce(add, 0) }));

SELECT name, COUNT(*) AS calls FROM requests WHERE status = 'done'
GROUP BY name ORDER BY calls DESC;

{"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
{"id": "chatcmpl-1", "object": "chat.completion",
 "choices": [{"index": 0, "finish_reason": "stop"}]}

# Installation
1. Create a virtual environment: `python -m venv .venv`.
2. Install the package: `pip install -e .`.
3. Run the tests: `pytest -q`.

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 4096 3.14159 2.71828 -1 1e-5 50%.
Dates and times: 2024-05-17, 09:30, Monday, Tuesday, Wednesday, Thursday, Friday, weekend.
Punctuation and symbols: ( ) [ ] { } < > = + - * / \ | & ^ % $ # @ ! ? ; : , . ' " ` ~ _

An agent searched the repository, read three files, ran the test suite, and proposed a patch.
The tests failed once because a fixture was missing; after the fix, every test passed.
The reviewer asked for a smaller change, so the agent split the patch into two commits.
When the grep tool returns, the next call reuses the same prefix: the system prompt, the task,
the earlier observations. Keeping that prefix cached saves a long prefill on the critical path.

Error: file not found. Warning: the value is deprecated. Info: server started on port 8000.
Traceback (most recent call last):
  File "main.py", line 12, in <module>
    result = compute(data)
ValueError: expected a positive number, got -3
'''
"""Varied English, dialogue, code and logs, so common words and code idioms get merges."""


def build_chat_tokenizer(out_dir: str | os.PathLike[str], vocab_size: int = 1024) -> Path:
    """Train the byte-level BPE of at most ``vocab_size`` tokens (special tokens included, all
    ids below ``vocab_size``) and write its files into ``out_dir`` (created if missing)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise SagaConfigError(f"a chat tokenizer needs a vocabulary of at least {MIN_VOCAB} "
                              f"tokens (256 bytes, {len(SPECIAL_TOKENS)} special tokens and "
                              f"merges), got {vocab_size!r}; use a model with a larger one")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.strip().splitlines(keepends=True), trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != token_id:  # the trainer's contract; checked, not assumed
            raise RuntimeError(f"special token {token} got id {tok.token_to_id(token)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)},
    })
    return out


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
