"""The simulator checked against a real engine: the same sessions, the engine's own preset and
KV pool, a step-time model fitted to the engine's own steps; simulated vs measured.

The measurement is plain data (so saga-bench needs no serving engine installed): what
``saga.vllm.compare.CompareResult.measurement()`` writes, or any engine's run in that form::

    {"engine": {"block_size": int, "kv_blocks": int, "usable_blocks": int},
     "workload": {"seed": int, "sessions": int, "max_context": int, "system_tokens": int},
     "sessions": [{"session_id", "agent_type", "tenant", "arrival_s",
                   "calls": [{"new_tokens": int, "max_tokens": int, "tool": str | None,
                              "tool_s": float}]}],
     "runs": {"stock" | "saga": {"preset": {"name": str, "layers": Preset.layers()},
                                 "pin_cap_fraction": float | None,
                                 "steps": [[start_s, prefill_tokens, prefill_context,
                                            decode_seqs, decode_context, busy_after]],
                                 "tct_mean_s": float, "recomputed_tokens": int,
                                 "call_time_s": float,
                                 "outputs": {session_id: [output tokens per call]}}},
     "load_average": {"before": float, "after": float}}

The simulated engine runs the preset the engine ran (``Preset.from_layers``) on one instance
with the engine's usable pool and no DRAM tier, prefetch or stealing (a single CPU engine runs
none of them).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from saga.bench.costmodel import LinearFit, StepSample, fit_linear_cost
from saga.bench.sim import SimConfig, simulate
from saga.bench.workload import Call, Task, Workload, WorkloadSpec
from saga.policy.errors import SagaConfigError
from saga.policy.presets import Preset
from saga.policy.spec import ClusterSpec

ENGINES = ("stock", "saga")
"""The runs a measurement holds, in the order they are reported."""

ONE_CPU_ENGINE = ClusterSpec(
    nodes=1, gpus_per_node=1, gpu_name="cpu", gpu_hbm_bytes=2**34, tp=1, instances=1,
    nvlink_bytes_per_s=1e9, ib_bytes_per_s=1e9, dram_bytes_per_node=2**34, cpus_per_node=2)
"""One instance; its HBM is overridden by the engine's measured pool."""


def rel_error(sim: float, measured: float) -> float:
    """``(sim - measured) / measured`` (0 when both are 0, inf when only ``measured`` is)."""
    return (sim - measured) / measured if measured else (0.0 if sim == 0 else float("inf"))


def step_samples(steps: Sequence[Sequence[Any]]) -> list[StepSample]:
    """``StepSample`` per measured engine step that the next step followed while requests
    remained: its time is the engine's period, from its ``schedule`` to the next one's (model,
    scheduler and front-end work between them), the quantity the simulator's step time stands
    for. Steps before an idle gap are left out."""
    out = []
    for cur, nxt in itertools.pairwise(steps):
        start, prefill, prefill_ctx, decode, decode_ctx, busy_after = cur
        if busy_after:
            out.append(StepSample(int(prefill), int(prefill_ctx), int(decode), int(decode_ctx),
                                  float(nxt[0]) - float(start)))
    return out


def _run(measurement: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    try:
        run: Mapping[str, Any] = measurement["runs"][name]
    except (KeyError, TypeError):
        raise SagaConfigError(f"the measurement has no {name!r} run; validation needs both "
                              f"{ENGINES}") from None
    return run


def simulated_engine(measurement: Mapping[str, Any]
                     ) -> tuple[Workload, dict[str, SimConfig], dict[str, Preset]]:
    """The workload, simulator configs and presets that stand for the measured engines: the
    same sessions with the output lengths the stock engine produced, each engine's preset
    with no DRAM tier, prefetch or stealing, its usable KV pool and pin cap."""
    eng, wl = measurement["engine"], measurement["workload"]
    outputs = _run(measurement, "stock")["outputs"]
    tasks = []
    for s in measurement["sessions"]:
        outs = outputs[s["session_id"]]
        calls = tuple(Call(int(c["new_tokens"]), outs[i] if i < len(outs) else int(c["max_tokens"]),
                           c["tool"], float(c["tool_s"])) for i, c in enumerate(s["calls"]))
        tasks.append(Task(s["session_id"], s["agent_type"], s["tenant"], float(s["arrival_s"]),
                          calls, system_key=s["session_id"].split("-")[0],
                          system_tokens=int(wl["system_tokens"])))
    workload = Workload(WorkloadSpec("mixed", len(tasks), 1.0, int(wl["seed"])), tasks)
    configs, presets = {}, {}
    for name in ENGINES:
        run = _run(measurement, name)
        ran = Preset.from_layers(run["preset"]["name"], run["preset"]["layers"])
        presets[name] = dataclasses.replace(ran, dram_tier=False, prefetch=False, stealing=None)
        configs[name] = SimConfig(cluster=ONE_CPU_ENGINE, block_tokens=int(eng["block_size"]),
                                  hbm_blocks=int(eng["usable_blocks"]), dram_blocks=0,
                                  pin_cap_fraction=run.get("pin_cap_fraction"))
    return workload, configs, presets


def _row(name: str, run: Mapping[str, Any], sim: Any, fit: LinearFit,
         tool_s: float) -> dict[str, Any]:
    llm_measured, llm_sim = run["tct_mean_s"] - tool_s, sim.tct_mean_s - tool_s
    calls_s = run["call_time_s"]
    measured_rec = run["recomputed_tokens"]
    return {
        "engine": name,
        "steps": len(run["steps"]),
        "step fit R²": round(fit.r2, 3),
        "step fit median error": f"{100 * fit.median_rel_error:.0f} %",
        "measured TCT (s)": round(run["tct_mean_s"], 3),
        "simulated TCT (s)": round(sim.tct_mean_s, 3),
        "TCT error": f"{100 * rel_error(sim.tct_mean_s, run['tct_mean_s']):+.1f} %",
        "measured TCT − tools (s)": round(llm_measured, 3),
        "simulated TCT − tools (s)": round(llm_sim, 3),
        "TCT − tools error": f"{100 * rel_error(llm_sim, llm_measured):+.1f} %",
        "measured call time (s)": round(calls_s, 3),
        "call time error": f"{100 * rel_error(llm_sim, calls_s):+.1f} %",
        "measured recomputed tokens": measured_rec,
        "simulated recomputed tokens": sim.recomputed_tokens,
        "recomputed error": f"{100 * rel_error(sim.recomputed_tokens, measured_rec):+.1f} %",
    }


def validate(measurement: Mapping[str, Any]) -> dict[str, Any]:
    """Simulate the measured engines and compare: rows per engine, the markdown section of
    ``report.md``, the fitted step-time models and the inputs' summary."""
    eng, wl = measurement["engine"], measurement["workload"]
    fit_max = (int(eng["kv_blocks"]) - 1) * int(eng["block_size"])
    max_tokens = min(fit_max, int(wl["max_context"]) + 64)
    # Each engine's own measured speed: on a shared machine the two runs see different load.
    fits = {name: fit_linear_cost(step_samples(_run(measurement, name)["steps"]),
                                  max_batched_tokens=max_tokens,
                                  max_num_seqs=max(8, int(wl["sessions"])))
            for name in ENGINES}
    workload, configs, presets = simulated_engine(measurement)
    sims = {name: simulate(presets[name], workload, configs[name], fits[name].cost)
            for name in ENGINES}
    # Tool sleeps are inputs to both sides; TCT minus them is the engine's share of a task.
    sessions = measurement["sessions"]
    tool_s = sum(float(c["tool_s"]) for s in sessions for c in s["calls"]) / len(sessions)
    rows = [_row(name, _run(measurement, name), sims[name], fits[name], tool_s)
            for name in ENGINES]
    load = measurement.get("load_average", {})
    return {"rows": rows, "markdown": validation_markdown(measurement, rows, fits, tool_s),
            "tool_s_per_task": tool_s, "load_average": load,
            "cost_fit": {k: {**dataclasses.asdict(v.cost), "steps": v.steps, "r2": v.r2,
                             "median_rel_error": v.median_rel_error} for k, v in fits.items()},
            "simulated": {k: v.to_dict() for k, v in sims.items()}}


def validation_markdown(measurement: Mapping[str, Any], rows: list[dict[str, Any]],
                        fits: Mapping[str, LinearFit], tool_s: float) -> list[str]:
    """The ``report.md`` section: how the comparison was made, then the table."""
    eng, wl = measurement["engine"], measurement["workload"]
    load = measurement.get("load_average", {})
    models = "; ".join(
        f"{k}: {1e3 * f.cost.fixed_s:.2f} ms + {1e6 * f.cost.per_prefill_token_s:.1f} µs/prefill "
        f"token + {1e3 * f.cost.per_decode_seq_s:.2f} ms/decode seq + "
        f"{1e9 * f.cost.per_context_token_s:.0f} ns/context token" for k, f in fits.items())
    cols = list(rows[0])
    md = ["Simulated vs measured on the CPU vLLM engine of `saga vllm compare` "
          f"({wl['sessions']} sessions, seed {wl['seed']}, {eng['kv_blocks']} KV "
          f"blocks of {eng['block_size']} "
          f"tokens; machine load {load.get('before', float('nan')):.1f} before, "
          f"{load.get('after', float('nan')):.1f} after). Each engine "
          "logs every scheduler step (prefill tokens, decode sequences, context, wall time); "
          "the simulator's step time is a non-negative least-squares fit to that engine run's "
          "own steps (step = one `schedule()` to the next while requests remain), "
          f"{models}. `step fit R²` and `median error` say how well that model explains the "
          "measured steps. The simulator then replays the same sessions (arrivals, calls, tool "
          "sleeps, output lengths) under the preset each engine ran; the cache behaviour "
          "(recomputed tokens) is not fitted at all. Tool sleeps "
          f"({tool_s:.2f} s per task on average) are "
          "the same on both sides and make up most of a task's time here, so `TCT − tools`, "
          "the time a task spends in the engine (queueing, prefill, decode), is the sharper "
          "test of the simulated engine. `measured call time` is the part of it inside the "
          "engine's calls (submission to last token, summed over a task's calls); the rest is "
          "the client's own time (a tool's sleep ending behind an engine step, building the "
          "next request), which the simulator does not model; `call time error` compares the "
          "simulated TCT − tools with it. vidur reports < 9 % error for its GPU profiles; "
          "larger errors are shown as they are.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return md


# ---------------------------------------------------------------------------------------------
# Against a live multi-engine run (``saga bench live``'s ``live.json``, read as plain data).

LIVE_KIND = "saga-live"
"""``live.json``'s ``kind``."""


def call_samples(runs: Sequence[Mapping[str, Any]]) -> list[StepSample]:
    """One sample per completed call of the runs: its uncached prompt tokens, the cached context
    it attended to, its output tokens (as decoding sequences) and its latency. A call is many
    engine steps; fitted over calls, ``per_decode_seq_s`` is the time per output token of a
    call and the intercept the call's fixed overhead (HTTP, gateway)."""
    out = []
    for run in runs:
        for t in run["tasks"]:
            for c in t["calls"]:
                if c["status"] == 200:
                    cached = int(c["cached_tokens"])
                    out.append(StepSample(int(c["prompt_tokens"]) - cached, cached,
                                          int(c["completion_tokens"]), 0,
                                          float(c["end_s"]) - float(c["start_s"])))
    return out


def live_workload(tasks: Sequence[Mapping[str, Any]], seed: int) -> Workload:
    """The simulator's workload of one seed's live tasks (``tasks_to_json`` dicts)."""
    out = [Task(str(t["task_id"]), str(t["agent_type"]), str(t.get("tenant", "default")),
                float(t["arrival_s"]),
                tuple(Call(int(c["new_tokens"]), int(c["max_tokens"]), c["tool"],
                           float(c["tool_s"])) for c in t["calls"]),
                system_key=str(t.get("system_key", "")),
                system_tokens=int(t.get("system_tokens", 0))) for t in tasks]
    return Workload(WorkloadSpec("mixed", len(out), 1.0, seed), out)


def _live_sim(data: Mapping[str, Any], name: str, cost: Any) -> dict[str, float]:
    """The system ``name`` simulated on every seed of the live run: means over seeds."""
    cfg = data["config"]
    n = int(cfg["engines"])
    cluster = dataclasses.replace(ONE_CPU_ENGINE, gpus_per_node=n, instances=n)
    preset = Preset.from_layers(name, data["systems"][name]["layers"])
    sim = SimConfig(cluster=cluster, block_tokens=int(cfg.get("block_size", 32)),
                    hbm_blocks=cfg["kv_blocks"],
                    dram_blocks=int(cfg["dram_blocks"]) if preset.dram_tier else 0)
    rows = []
    for seed, tasks in data["tasks"].items():
        r = simulate(preset, live_workload(tasks, int(seed)), sim, cost)
        rows.append({"tct_mean_s": r.tct_mean_s, "tct_p95_s": r.tct_p95_s,
                     "reprefilled_context_tokens": float(r.reprefilled_tokens),
                     "hit_rate": r.hit_tokens / r.prompt_tokens if r.prompt_tokens else 0.0})
    return {k: sum(x[k] for x in rows) / len(rows) for k in rows[0]}


LIVE_FIGURES: tuple[tuple[str, str], ...] = (("tct_mean_s", "tct_mean_s"),
                ("tct_p95_s", "tct_p95_s"),
                ("reprefilled_context_tokens", "reprefilled_block_tokens"),
                ("hit_rate", "hit_rate"))
"""(simulator figure, the live figure it is compared with)."""


def live_reprefilled(data: Mapping[str, Any], name: str) -> float:
    """The simulator's re-prefilled tokens measured on the live run of system ``name``: per
    call its context in full blocks (a partial block is never cached) less its cached tokens;
    summed per run, mean over seeds."""
    block = int(data["config"].get("block_size", 32))
    runs = [r for r in data["runs"] if r["system"] == name]
    totals = [sum(max(0, int(c["context_tokens"]) // block * block - int(c["cached_tokens"]))
                  for t in r["tasks"] for c in t["calls"] if c["status"] == 200) for r in runs]
    return sum(totals) / len(totals) if totals else 0.0


def validate_live(data: Mapping[str, Any]) -> dict[str, Any]:
    """Simulate each system of a live multi-engine run (same tasks, same number of instances,
    pool and DRAM tier, the preset it ran, a call-level cost fitted to all its calls) and give
    the ratio simulated / live per figure."""
    if not isinstance(data, Mapping) or data.get("kind") != LIVE_KIND:
        raise SagaConfigError("not a `saga bench live` result (live.json with kind "
                              f"{LIVE_KIND!r}); run saga bench live --out DIR first")
    cfg = data["config"]
    fit = fit_linear_cost(call_samples(data["runs"]), max_batched_tokens=2048,
                          max_num_seqs=int(cfg.get("max_num_seqs", 8)))
    # Steps, not calls, are what the simulator times: a call's per-output-token time is the
    # step time of a lone call, and decoding in a batch is taken as free (the tiny CPU
    # engine's steps are overhead-bound).
    cost = dataclasses.replace(fit.cost, fixed_s=fit.cost.per_decode_seq_s, per_decode_seq_s=0.0)
    rows = []
    for name, live in data["summary"].items():
        sim = _live_sim(data, name, cost)
        row: dict[str, Any] = {"system": name}
        for fig, live_key in LIVE_FIGURES:
            measured = (live_reprefilled(data, name) if live_key == "reprefilled_block_tokens"
                        else float(live[live_key]["mean"]))
            row[f"live {fig}"] = round(measured, 3)
            row[f"sim {fig}"] = round(sim[fig], 3)
            row[f"sim/live {fig}"] = (round(sim[fig] / measured, 3) if measured else None)
        rows.append(row)
    md = [f"The simulator against `{data['command']}` ({cfg['engines']} instances, "
          f"{cfg['kv_blocks']} KV blocks each, DRAM tier {cfg['dram_blocks']} blocks where the "
          "preset has one, the same tasks per seed). Step time fitted to the live calls "
          f"(R² {fit.r2:.2f}, median error {100 * fit.median_rel_error:.0f} % per call): "
          f"{1e3 * cost.fixed_s:.2f} ms per step + {1e6 * cost.per_prefill_token_s:.1f} µs "
          "per prefilled token; batched decoding taken as free. Ratios are simulated / live "
          "(means over seeds); live re-prefilled context here is the responses' (full-block "
          "context − cached tokens), the simulator's definition.", "",
          "| system | " + " | ".join(f"sim/live {f}" for f, _ in LIVE_FIGURES) + " |",
          "|---|" + "---|" * len(LIVE_FIGURES)]
    md += [f"| {r['system']} | " + " | ".join(str(r[f'sim/live {f}']) for f, _ in LIVE_FIGURES)
           + " |" for r in rows]
    return {"rows": rows, "markdown": md, "cost_fit": {**dataclasses.asdict(cost),
                                                       "r2": fit.r2, "calls": fit.steps}}


__all__ = ["ENGINES", "LIVE_KIND", "call_samples", "live_reprefilled", "live_workload",
           "rel_error",
           "simulated_engine", "step_samples", "validate", "validate_live",
           "validation_markdown"]
