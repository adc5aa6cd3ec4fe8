"""`--model PATH`: `saga vllm compare` on a model directory a user brings, and bad paths.

The directory is what ``save_pretrained`` writes for a (random, tiny) Llama and its tokenizer;
the compare run is the smallest the command allows (one session, two calls, SAGA's engine only).
A path that is not a model directory is one ``error:`` line and exit code 2, before any engine
or Ray starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cli.main import app
from saga.vllm.testing import build_hf_model_dir

runner = CliRunner(env={"COLUMNS": "400"})


def test_compare_runs_on_a_local_model_directory(tmp_path: Path) -> None:
    model = build_hf_model_dir(tmp_path / "my-llama")
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, [
        "vllm", "compare", "--model", str(model), "--engines", "saga", "--sessions", "1",
        "--max-steps", "2", "--tool-scale", "0", "--max-context", "800", "--kv-blocks", "32",
        "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert f"model{model}" in "".join(res.output.split())  # whatever rich's width
    data = json.loads(out.read_text())
    assert data["settings"]["model"] == str(model)
    run = data["runs"]["saga"]
    assert run["calls"] == data["workload"]["calls"] == 2
    # The second call's prompt holds the first call's context: part of it came from the cache.
    assert 0 < run["cached_tokens"] < run["prompt_tokens"]


@pytest.mark.parametrize("command", [["vllm", "compare"], ["cluster", "up", "--local"],
                                     ["bench", "validate"]])
@pytest.mark.parametrize(("make", "message"), [
    (None, "unknown model"),
    ("empty", "has no config.json"),
    ("no-weights", "has no weights"),
])
def test_a_bad_model_path_is_one_error_line_and_exit_2(
        tmp_path: Path, command: list[str], make: str | None, message: str) -> None:
    path = tmp_path / "model"
    if make is not None:
        path.mkdir()
    if make == "no-weights":
        (path / "config.json").write_text(json.dumps({
            "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 128,
            "vocab_size": 1024, "max_position_embeddings": 4096}))
    res = runner.invoke(app, [*command, "--model", str(path)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert message in lines[0] and str(path) in lines[0]
