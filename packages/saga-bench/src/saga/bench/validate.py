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


__all__ = ["ENGINES", "rel_error", "simulated_engine", "step_samples", "validate",
           "validation_markdown"]
