"""`saga bench live` without engines: task generation and sizing, token prompts, the systems'
turn order, counters and figures, the report section, and option checks that must fail before
any engine starts."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from saga.cli.live import TaskOptions, build_tasks, engine_spec, parse_seeds, parse_systems
from saga.cli.main import app
from saga.cli.vllm import parse_seeds as compare_seeds
from saga.coordinator.gateway.live_report import best_baseline_ratios, with_section
from saga.coordinator.gateway.live_results import (
    CallRecord,
    RunResult,
    TaskRecord,
    counter_delta,
    over_seeds,
    parse_counters,
    summarize,
)
from saga.coordinator.gateway.live_tasks import (
    FIRST_TOKEN,
    LiveCall,
    LiveTask,
    TaskTokens,
    fit_tasks,
    rotated,
    tasks_from_json,
    tasks_to_json,
)
from saga.policy.errors import SagaConfigError

runner = CliRunner()


@pytest.mark.parametrize("workload", ["mixed", "swe", "web", "trace-swe"])
def test_tasks_fit_the_model_and_are_deterministic(workload: str) -> None:
    opts = TaskOptions(workload=workload, tasks=5, max_context=600, max_calls=4,
                       tool_scale=0.1, max_tool_s=0.5)
    tasks = build_tasks(opts, seed=3)
    assert len(tasks) == 5
    assert tasks == build_tasks(opts, seed=3)
    assert tasks != build_tasks(opts, seed=4)
    for t in tasks:
        assert 1 <= len(t.calls) <= 4
        assert t.prompt_tokens + t.calls[-1].max_tokens <= 600
        assert t.calls[-1].tool is None and t.calls[-1].tool_s == 0.0
        assert all(0.0 <= c.tool_s <= 0.5 and c.new_tokens >= 1 and 1 <= c.max_tokens <= 32
                   for c in t.calls)
        assert 0 <= t.system_tokens < t.calls[0].new_tokens
    assert [t.arrival_s for t in tasks] == sorted(t.arrival_s for t in tasks)


def test_tasks_from_a_trace_file() -> None:
    from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path

    opts = TaskOptions(trace=bundled_trace_path(BUNDLED_AGENT), fmt="agent", tasks=3)
    tasks = build_tasks(opts, seed=0)
    assert len(tasks) == 3 and all(t.task_id.startswith("trace-0-") for t in tasks)
    assert all(t.prompt_tokens + t.calls[-1].max_tokens <= opts.max_context for t in tasks)
    with pytest.raises(SagaConfigError, match="sessions"):
        build_tasks(TaskOptions(trace=bundled_trace_path(), fmt="mooncake"), seed=0)


def test_fit_tasks_scales_and_cuts() -> None:
    big = LiveTask("t", "swe", 0.0, tuple(LiveCall(1000, 200, "search", 10.0)
                                          for _ in range(6)), "swe", 500)
    [t] = fit_tasks([big], token_scale=0.1, output_scale=0.1, max_context=370, max_calls=5,
                    tool_scale=0.01, max_tool_s=5.0)
    assert [c.new_tokens for c in t.calls] == [100, 100, 100]   # 3 x 120; a 4th would pass 370
    assert [c.max_tokens for c in t.calls] == [20, 20, 20]
    assert [c.tool_s for c in t.calls] == [0.1, 0.1, 0.0]
    assert t.system_tokens == 50
    with pytest.raises(SagaConfigError, match="token-scale"):
        fit_tasks([big], token_scale=0.0, output_scale=0.1, max_context=330, max_calls=5,
                  tool_scale=0.01, max_tool_s=5.0)


def test_prompts_share_the_system_prompt_only() -> None:
    a = LiveTask("a", "swe", 0.0, (LiveCall(40, 4, "x", 0.1), LiveCall(10, 4, None, 0.0)),
                 "swe", 30)
    b = LiveTask("b", "swe", 0.0, (LiveCall(40, 4, None, 0.0),), "swe", 30)
    ta, tb = TaskTokens(a, 0, 1024), TaskTokens(b, 0, 1024)
    assert ta.new(0)[:30] == tb.new(0)[:30]
    assert ta.new(0)[30:] != tb.new(0)[30:]
    assert len(ta.new(0)) == 40 and len(ta.new(1)) == 10
    assert ta.new(1) == TaskTokens(a, 0, 1024).new(1)
    assert ta.new(1) != TaskTokens(a, 1, 1024).new(1)
    assert all(FIRST_TOKEN <= x < 1024 for x in ta.new(0) + ta.new(1) + ta.stand_in_output(0))
    assert tasks_from_json(tasks_to_json([a, b])) == [a, b]


def test_systems_take_turns_going_first() -> None:
    s = ["saga", "vllm_apc", "vllm"]
    orders = [rotated(s, k) for k in range(3)]
    assert [o[0] for o in orders] == s
    assert all(sorted(o) == sorted(s) for o in orders)
    assert rotated(s, 3) == s


def test_seed_and_system_options() -> None:
    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("0,3") == [0, 3]
    assert parse_seeds("4") == [4]          # seed 4 alone, as `saga vllm compare` reads it
    assert parse_seeds(" 3, 0-1,1 ") == [0, 1, 3]
    for text in ("0-4", "0,1,2", "4", "2,0"):  # the same list as `saga vllm compare --seeds`
        assert parse_seeds(text) == compare_seeds(text, 0)
    for bad in ("2-1", "x", "-1", "", " , ", "1-x"):
        with pytest.raises(SagaConfigError, match="--seeds"):
            parse_seeds(bad)
    out = runner.invoke(app, ["bench", "live", "--help"]).output
    help_text = " ".join(out.replace("\u2502", " ").split())   # unwrap rich's help box
    assert "4 is seed 4 alone (not 4 seeds" in help_text
    assert parse_systems("saga, vllm") == ["saga", "vllm"]
    with pytest.raises(SagaConfigError, match="valid presets"):
        parse_systems("saga,nope")


def test_engine_options_follow_the_preset() -> None:
    assert engine_spec("vllm", "tiny", 64, 32, 8).extra_args == ("--no-enable-prefix-caching",)
    assert engine_spec("vllm_apc", "tiny", 64, 0, 8).extra_args == ()
    apc = engine_spec("vllm_apc", "tiny", 64, 32, 8).extra_args
    saga = engine_spec("saga", "tiny", 64, 32, 8).extra_args
    assert apc[0] == saga[0] == "--kv-transfer-config"
    assert '"eviction_policy": "lru"' in apc[1]
    assert "WALRUCachePolicy" in saga[1]
    # SAGA with the node KV store: the store and the DRAM tier, through vLLM's MultiConnector;
    # a baseline never gets the store.
    both = json.loads(engine_spec("saga", "tiny", 64, 32, 8, "/tmp/kv").extra_args[1])
    assert both["kv_connector"] == "MultiConnector"
    inner = both["kv_connector_extra_config"]["connectors"]
    assert [c["kv_connector"] for c in inner] == ["SagaKVStoreConnector", "OffloadingConnector"]
    store_only = json.loads(engine_spec("saga", "tiny", 64, 0, 8, "/tmp/kv").extra_args[1])
    assert store_only["kv_connector_extra_config"]["store_dir"] == "/tmp/kv"
    assert engine_spec("vllm_apc", "tiny", 64, 32, 8, "/tmp/kv").extra_args == apc


def _call(task: str, k: int, ctx: int, cached: int, new: int = 10) -> CallRecord:
    return CallRecord(task, k, float(k), k + 0.5, 200, ctx + new, new, ctx, cached, 4)


def test_figures_from_counters_and_records() -> None:
    text = ('vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 100.0\n'
            'vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 40.0\n'
            'vllm:external_prefix_cache_hits_total{engine="0",model_name="tiny"} 10.0\n'
            '# HELP x\nvllm:prefix_cache_hits_created{engine="0"} 1.7e9\n')
    after = parse_counters(text)
    assert after == {"queries": 100.0, "hits": 40.0, "external_hits": 10.0}
    delta = counter_delta({"queries": 20.0, "hits": 0.0}, after)
    calls = (_call("a", 0, 0, 0), _call("a", 1, 14, 14), _call("a", 2, 28, 10))
    run = RunResult("saga", 0, 0, [TaskRecord("a", 0.0, 2.5, calls, 3)], [delta], {}, 3.0,
                    0.0, 0.0)
    f = summarize(run)
    assert f["engine_prefilled_tokens"] == 80 - 50
    assert f["reprefilled_context_tokens"] == 0.0      # 30 prefilled, 30 new
    assert f["hit_rate"] == pytest.approx(50 / 80)
    assert f["response_reprefilled_context_tokens"] == 18
    assert f["response_reprefilled_block_tokens"] == 0   # 28 // 32 full blocks: none
    assert f["calls"] == f["calls_planned"] == 3 and f["tasks_failed"] == 0
    assert f["tct_mean_s"] == 2.5 and f["calls_per_s"] == pytest.approx(3 / 2.5)
    run.figures = f
    summary = over_seeds([run], ["saga"])
    assert summary["saga"]["tct_mean_s"]["mean"] == 2.5
    assert best_baseline_ratios(summary) == {}


def test_steals_count_moved_calls_only() -> None:
    text = ('saga_gateway_steals_total{where="gateway"} 2.0\n'
            'saga_gateway_steals_total{where="engine"} 1.0\n'
            'saga_gateway_steals_total{where="missed"} 5.0\n'
            'saga_gateway_kv_moves_total 3.0\n')
    gateway = parse_counters(text)
    assert gateway == {"steals": 3.0, "kv_moves": 3.0}
    run = RunResult("saga", 0, 0, [TaskRecord("a", 0.0, 1.0, (_call("a", 0, 0, 0),), 1)],
                    [{}], gateway, 1.0, 0.0, 0.0)
    assert summarize(run)["steals"] == 3.0


def test_report_section_is_replaced_not_repeated() -> None:
    report = "# R\n\n## Table 3\n\nx\n\n## Versions\n\nv\n"
    once = with_section(report, "## Live, 2 engines, model tiny, CPU", ["a"])
    twice = with_section(once, "## Live, 2 engines, model tiny, CPU", ["b"])
    assert twice.count("## Live") == 1 and "\nb\n" in twice and "\na\n" not in twice
    assert twice.index("## Table 3") < twice.index("## Live") and "## Versions" in twice
    assert with_section("", "## Live", ["a"]).startswith("## Live\n")


@pytest.mark.parametrize("args, message", [
    (["--engines", "0"], "--engines must be >= 1"),
    (["--kv-blocks", "1"], "--kv-blocks must be >= 2"),
    (["--systems", "saga,sglangx"], "unknown preset"),
    (["--seeds", "3-1"], "--seeds"),
    (["--model", "/no/such/model"], "--model"),
    (["--kv-blocks", "16", "--max-context", "1536"], "does not fit one engine"),
    (["--workload", "chat"], "--workload must be one of"),
    (["--tool-scale", "0"], "--tool-scale"),
    (["--trace", "/no/such/trace.jsonl"], "no/such"),
])
def test_bad_options_fail_before_any_engine(args: list[str], message: str,
                                            tmp_path: object) -> None:
    started = time.monotonic()
    r = runner.invoke(app, ["bench", "live", "--out", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in r.output, r.output
    assert time.monotonic() - started < 20   # no engine was started
    assert not (tmp_path / "logs").exists()  # type: ignore[operator]


def test_bench_live_is_a_bench_command() -> None:
    r = runner.invoke(app, ["bench", "--help"])
    assert r.exit_code == 0 and "live" in r.output


def _live_doc() -> dict[str, object]:
    """A live.json as `saga bench live` writes it, for two systems on one seed (made up)."""
    from saga.policy.presets import get_preset

    task = LiveTask("swe-0-0", "swe-bench", 0.0, (LiveCall(100, 8, "search", 0.2),
                                                  LiveCall(40, 8, None, 0.0)), "swe", 50)
    calls = [{"task_id": "swe-0-0", "index": 0, "start_s": 0.0, "end_s": 0.3, "status": 200,
              "prompt_tokens": 100, "new_tokens": 100, "context_tokens": 0,
              "cached_tokens": 0, "completion_tokens": 8},
             {"task_id": "swe-0-0", "index": 1, "start_s": 0.5, "end_s": 0.7, "status": 200,
              "prompt_tokens": 148, "new_tokens": 40, "context_tokens": 108,
              "cached_tokens": 96, "completion_tokens": 8}]
    runs = [{"system": s, "tasks": [{"calls": calls}]} for s in ("saga", "vllm")]
    fig = {"mean": 1.0, "std": 0.0, "values": [1.0]}
    summary = {s: {k: fig for k in ("tct_mean_s", "tct_p95_s", "hit_rate")}
               for s in ("saga", "vllm")}
    return {"kind": "saga-live", "command": "saga bench live",
            "config": {"engines": 2, "kv_blocks": 16, "dram_blocks": 8, "block_size": 32,
                       "max_num_seqs": 8},
            "systems": {s: {"layers": get_preset(s).layers()} for s in ("saga", "vllm")},
            "tasks": {"0": tasks_to_json([task])}, "runs": runs, "summary": summary}


def test_validate_simulates_the_live_run_per_system() -> None:
    from saga.bench.validate import validate_live

    result = validate_live(_live_doc())
    assert [r["system"] for r in result["rows"]] == ["saga", "vllm"]
    for r in result["rows"]:
        assert r["sim tct_mean_s"] > 0.7   # at least the task's tool sleep and two calls
        assert r["sim/live tct_mean_s"] == pytest.approx(r["sim tct_mean_s"], abs=1e-3)
    assert all(r["live reprefilled_context_tokens"] == 96 - 96 for r in result["rows"])
    vllm = result["rows"][1]
    assert vllm["sim hit_rate"] == 0.0    # no prefix caching: nothing is ever a hit
    assert any("sim/live" in line for line in result["markdown"])
    with pytest.raises(SagaConfigError, match="saga bench live"):
        validate_live({"kind": "other"})
