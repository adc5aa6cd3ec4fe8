"""``python -m saga.vllm.serve``: the command line it builds, the errors it refuses with before
vLLM starts, and one real server (SagaScheduler, the tiny model and its chat tokenizer) answering
OpenAI chat requests over loopback, with prefix-cache hits reported and streaming."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.serve import api_server_argv, build_command, main
from saga.vllm.testing import (
    SCHEDULER_CLS,
    VALIDATOR_CLS,
    kv_bytes_for_blocks,
    model_shape,
)

START_TIMEOUT_S = 300.0
TINY = model_shape("tiny")


def _opt(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, (flag, argv)
    return argv[argv.index(flag) + 1]


def _cache_with_tiny(tiny_model_dir: Path, root: Path) -> Path:
    """A --cache-dir already holding the session's tiny model (as serve names it), so nothing
    is built again."""
    shutil.copytree(tiny_model_dir, root / "tiny-seed0")
    return root


def test_the_argv_runs_saga_on_vllms_openai_server() -> None:
    argv = api_server_argv("/m/tiny", TINY, port=8001, served_model_name="tiny",
                           preset="saga_no_afs", kv_blocks=40, max_num_seqs=4, seed=3,
                           extra_args=["--max-num-batched-tokens", "2048"], python="/py")
    assert argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    pairs = {"--model": "/m/tiny", "--served-model-name": "tiny", "--host": "127.0.0.1",
             "--port": "8001", "--seed": "3", "--dtype": "float32", "--block-size": "32",
             "--max-num-seqs": "4", "--scheduler-cls": SCHEDULER_CLS,
             "--logits-processors": VALIDATOR_CLS, "--max-model-len": str(40 * 32),
             "--kv-cache-memory-bytes": str(kv_bytes_for_blocks(40)),
             "--compilation-config": '{"mode": 0}'}
    assert {flag: _opt(argv, flag) for flag in pairs} == pairs
    config = json.loads(_opt(argv, "--additional-config"))
    assert config == {"saga": SagaSchedulerConfig.from_preset("saga_no_afs").to_dict()}
    for flag in ("--enforce-eager", "--enable-prefix-caching", "--enable-prompt-tokens-details",
                 "--disable-uvicorn-access-log"):
        assert flag in argv
    assert "--skip-tokenizer-init" not in argv
    assert argv[-2:] == ["--max-num-batched-tokens", "2048"]


def test_without_kv_blocks_vllm_sizes_the_pool() -> None:
    argv = api_server_argv("/m", TINY, port=1, served_model_name="m")
    assert "--kv-cache-memory-bytes" not in argv and "--max-model-len" not in argv
    assert json.loads(_opt(argv, "--additional-config"))["saga"]["preset"] == "saga"
    argv = api_server_argv("/m", TINY, port=1, served_model_name="m", kv_blocks=1000,
                           max_model_len=100)
    assert _opt(argv, "--max-model-len") == "100"
    # The default length is the pool's, at most the model's positions.
    argv = api_server_argv("/m", TINY, port=1, served_model_name="m", kv_blocks=1000)
    assert _opt(argv, "--max-model-len") == str(TINY.max_positions)


def test_build_command_names_the_model_and_builds_it_once(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    cache = _cache_with_tiny(tiny_model_dir, tmp_path / "cache")
    argv = build_command(["--model", "tiny", "--port", "9000", "--cache-dir", str(cache),
                          "--", "--max-num-batched-tokens", "512"])
    assert _opt(argv, "--model") == str(cache / "tiny-seed0")
    assert _opt(argv, "--served-model-name") == "tiny"
    assert argv[-2:] == ["--max-num-batched-tokens", "512"]
    assert "--skip-tokenizer-init" not in argv
    # A user's directory without a tokenizer: served by its directory's name, token ids only.
    user = tmp_path / "my-model"
    user.mkdir()
    shutil.copy(tiny_model_dir / "config.json", user)
    shutil.copy(tiny_model_dir / "model.safetensors", user)
    argv = build_command(["--model", str(user) + "/", "--port", "9000"])
    assert _opt(argv, "--model") == str(user.resolve())
    assert _opt(argv, "--served-model-name") == "my-model"
    assert "--skip-tokenizer-init" in argv
    argv = build_command(["--model", str(user), "--port", "9000", "--served-model-name", "x"])
    assert _opt(argv, "--served-model-name") == "x"


@pytest.mark.parametrize(("args", "needle"), [
    (["--model", "nope", "--port", "8000"], "--model: unknown model 'nope'"),
    (["--model", "tiny", "--port", "x"], "argument --port: invalid int value"),
    (["--model", "tiny", "--port", "0"], "--port must be in [1, 65535], got 0"),
    (["--model", "tiny", "--port", "8000", "--preset", "nope"], "--preset: unknown preset"),
    (["--model", "tiny", "--port", "8000", "--kv-blocks", "0"], "--kv-blocks must be >= 1"),
    (["--model", "tiny", "--port", "8000", "--max-num-seqs", "0"], "--max-num-seqs must be"),
    (["--model", "tiny", "--port", "8000", "--max-model-len", "5000"], "--max-model-len must"),
    (["--model", "tiny", "--port", "8000", "--kv-blocks", "2", "--max-model-len", "100"],
     "does not fit in --kv-blocks 2"),
    (["--model", "tiny", "--port", "8000", "--seed", "-1"], "--seed must be >= 0"),
    (["--model", "tiny", "--port", "8000", "--served-model-name", " "], "--served-model-name"),
    (["--model", "tiny", "--port", "8000", "--bogus"], "unrecognized arguments: --bogus"),
    (["--port", "8000"], "required: --model"),
])
def test_bad_options_are_one_error_line_and_exit_2(args: list[str], needle: str,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "cache").exists()  # refused before anything was built


def test_the_module_exits_2_before_vllm_starts(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "saga.vllm.serve", "--model", "tiny",
                           "--port", "8000", "--preset", "nope",
                           "--cache-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --preset: unknown preset 'nope'")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


# --- one real server ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The served engine's base URL, its process and a JSON client."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.log = proc, log
        self.url = f"http://127.0.0.1:{port}"

    def request(self, path: str, body: dict[str, Any] | None = None,
                timeout: float = 120.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())

    def stop(self) -> None:
        """SIGTERM the server's process group (the engine core too), then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("saga-serve")
    cache = _cache_with_tiny(tiny_model_dir, folder / "cache")
    port, log = _free_port(), folder / "server.log"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the engine core is its own process
    args = [sys.executable, "-m", "saga.vllm.serve", "--model", "tiny", "--port", str(port),
            "--cache-dir", str(cache), "--kv-blocks", "64", "--max-num-seqs", "4"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if srv.request("/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not start:\n" + log.read_text()[-4000:])
            time.sleep(1.0)
        yield srv
    finally:
        srv.stop()


SYSTEM = ("You are a careful coding assistant working in a large repository. Before you change "
          "anything you read the relevant files, run the tests, and explain your plan in a few "
          "short sentences. You prefer small patches, clear names and tests that can fail. "
          "When a tool returns, you read its output before you call the model again. ") * 3


def _chat(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "max_tokens": 4, "temperature": 0.0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": question}], **extra}


def test_chat_completions_in_text_hit_the_prefix_cache(server: Server) -> None:
    status, body = server.request("/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["tiny"]
    usages = []
    for question in ("Which test fails first?", "Which file should I open?"):
        status, body = server.request("/v1/chat/completions", _chat(question))
        assert status == 200, body
        data = json.loads(body)
        assert data["model"] == "tiny"
        assert isinstance(data["choices"][0]["message"]["content"], str)
        assert data["usage"]["completion_tokens"] == 4 or (
            data["choices"][0]["finish_reason"] == "stop")
        usages.append(data["usage"])
    assert usages[0]["prompt_tokens"] > 96  # a shared prefix of several 32-token blocks
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] > 0
    assert server.proc.poll() is None


def test_streaming_ends_with_usage_and_done(server: Server) -> None:
    body = _chat("Stream it.", stream=True, stream_options={"include_usage": True})
    status, raw = server.request("/v1/chat/completions", body)
    assert status == 200, raw
    events = [line.removeprefix("data: ") for line in raw.decode().splitlines()
              if line.startswith("data: ")]
    assert len(events) >= 3 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert isinstance(text, str)
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens"] > 96
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0  # the system prompt, again
