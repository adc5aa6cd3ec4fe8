"""The paper's published values, shown only in a "paper" column beside our computed ones.

Source: the SAGA paper's tables 3-10 as transcribed in the project's spec
(``shared/spec/paper_reference.md``: 64x A100-80GB, Llama-3-70B-Instruct). Nothing here is an
input to any result; the report prints these next to what the simulator measured.
"""

from __future__ import annotations

SOURCE = "SAGA paper, tables 3-10 (transcribed in shared/spec/paper_reference.md)"

TABLE3_TCT_S: dict[str, tuple[float, float]] = {
    "vllm": (612.3, 178.4),
    "vllm_apc": (352.1, 127.3),
    "sglang": (387.2, 138.7),
    "llumnix": (498.1, 156.2),
    "trt_llm_scaffolding": (324.6, 118.9),
    "vllm_kvflow": (298.4, 108.2),
    "saga": (203.4, 82.1),
}
"""(SWE-bench TCT s, WebArena TCT s) per system."""
TABLE3_GEOMEAN_VS_APC = 1.64
"""The paper's headline: SAGA's geometric-mean speedup over vllm_apc on both workloads."""
TABLE3_SPEEDUP = {"vllm": 3.01, "vllm_apc": 1.73, "sglang": 1.90, "llumnix": 2.45,
                  "trt_llm_scaffolding": 1.60, "vllm_kvflow": 1.47}

TABLE4_RATIO: dict[str, tuple[float, float]] = {
    "lru": (2.84, 2.12),
    "prefix_lru": (1.97, 1.74),
    "walru": (1.31, 1.28),
}
"""(SWE-bench, WebArena) competitive ratio vs Bélády."""

TABLE5_SLO: dict[str, dict[str, float]] = {
    "vllm": {"heavy": 89.4, "medium": 72.1, "light": 43.2, "overall": 67.3},
    "sglang": {"heavy": 91.2, "medium": 78.6, "light": 51.4, "overall": 73.4},
    "llumnix": {"heavy": 92.8, "medium": 81.3, "light": 58.9, "overall": 77.2},
    "saga": {"heavy": 99.1, "medium": 99.4, "light": 98.7, "overall": 99.2},
}

TABLE6_TCT_S = {
    "saga": 203.4, "saga_no_affinity": 398.2, "saga_no_walru": 312.8, "saga_no_ttl": 289.1,
    "saga_no_stealing": 267.3, "saga_no_prefetch": 241.6, "saga_no_afs": 218.7,
}

TABLE7 = {"bfs": (487.2, 12.4, 0.78), "dfs": (623.1, 4.2, 0.03), "hybrid": (203.4, 8.7, 0.12)}
"""queue -> (TCT s, tasks/min, eviction rate)."""

TABLE8 = {0.5: (195.1, 0.96, 0.09), 1.0: (203.4, 0.93, 0.12), 1.5: (218.6, 0.88, 0.18),
          2.0: (241.3, 0.82, 0.24), 3.0: (298.4, 0.71, 0.35)}
"""CV -> (TCT s, TTL accuracy, eviction rate)."""

TABLE9_MAX_DTCT = {"alpha": "< 5 %", "beta": "< 8 %", "gamma": "< 3 %", "theta": "< 5 %",
                   "t_idle": "< 7 %", "r_max": "< 4 %", "ttl_max": "< 3 %",
                   "theta_conf": "< 6 %"}

TABLE10 = {"vllm": (6.0, 0.42, 0.38), "vllm_apc": (3.5, 0.59, 0.22), "saga": (1.5, 0.71, 0.08)}
"""system -> (latency vs ideal, HBM utilisation, share of GPU time re-prefilling)."""
