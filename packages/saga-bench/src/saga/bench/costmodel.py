"""The cost model: how long one engine iteration takes, from a roofline of FLOPs and bytes.

One module, every constant with its source, so a reader can check each number. An iteration of a
continuous-batching engine with chunked prefill runs ``prefill_tokens`` prompt tokens (of one or
more requests) and one token of each of ``decode_seqs`` decoding requests through the model. On
a tensor-parallel instance of ``tp`` GPUs its time is

    t = max(FLOPs / (tp · peak · MFU), bytes / (tp · HBM_bw · MBU)) + t_allreduce + t_overhead

- FLOPs: ``2 · params`` per token through the dense layers, plus attention,
  ``4 · layers · heads · head_dim`` per (query token, context token) pair.
- bytes: the weights once per iteration, the KV cache every query reads, the KV it writes.
- ``t_allreduce``: Megatron-style TP does two all-reduces of the activations per layer; a ring
  all-reduce of ``m`` bytes over ``tp`` GPUs moves ``2 (tp-1)/tp · m`` bytes per GPU, over NVLink.

Sources (constants):
- A100-SXM4-80GB: 312 TFLOP/s dense FP16/BF16 tensor core, 2,039 GB/s HBM2e, NVLink 3 at 600 GB/s
  total (300 GB/s per direction) — NVIDIA A100 datasheet.
- Model shape: saga-policy's ``LLAMA3_70B`` (Meta's config.json).
- MFU 0.5 for prefill and MBU 0.6 for decode are *assumed efficiency factors*, in the range
  reported for large dense models on A100 by serving studies (Databricks' "LLM Inference
  Performance Engineering", 2023, measures ~60 % MBU for decoding; prefill of large chunks is
  compute-bound at roughly half of peak in the profiles vidur (MLSys'24) and Sarathi-Serve
  (OSDI'24) publish). NCCL all-reduce reaches ~75 % of NVLink bandwidth (nccl-tests bus
  bandwidth ~230 GB/s on A100 NVSwitch boards) with ~10 µs latency per small all-reduce.
- ``overhead_s`` 1 ms: vLLM V1 scheduling and input preparation per step with CUDA graphs.
- ``max_batched_tokens`` 8,192 and ``max_num_seqs`` 256: vLLM's defaults for the OpenAI server on
  a data-centre GPU (``max_num_batched_tokens``, ``max_num_seqs``).

:func:`check_published_rates` compares the rates this model implies with the ranges published
for vLLM serving Llama-2/3-70B with TP4 on A100-80GB (``PUBLISHED_RATES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.optimize import nnls

from saga.policy.errors import SagaConfigError
from saga.policy.spec import LLAMA3_70B, REFERENCE_CLUSTER, ClusterSpec, ModelSpec

A100_PEAK_FP16_FLOPS = 312e12
"""A100 dense FP16/BF16 tensor-core peak (NVIDIA A100 datasheet)."""
A100_HBM_BYTES_PER_S = 2.039e12
"""A100-SXM4-80GB HBM2e bandwidth (NVIDIA A100 datasheet)."""


class StepCost(Protocol):
    """What the simulator asks of a cost model."""

    @property
    def max_batched_tokens(self) -> int:
        """Token budget of one iteration (chunked prefill fills what decodes leave)."""
        ...

    @property
    def max_num_seqs(self) -> int:
        """Most calls in flight on one instance."""
        ...

    def step_time(self, prefill_tokens: int, prefill_context: int, decode_seqs: int,
                  decode_context_tokens: int) -> float:
        """Seconds of one engine iteration."""
        ...

    def prefill_token_s(self) -> float:
        """Marginal seconds per prompt token in a full prefill chunk (for GPU-time shares)."""
        ...


@dataclass(frozen=True)
class RooflineCost:
    """Roofline step time of one TP instance of ``model`` on ``cluster`` (module docstring)."""

    model: ModelSpec = LLAMA3_70B
    cluster: ClusterSpec = REFERENCE_CLUSTER
    peak_flops: float = A100_PEAK_FP16_FLOPS
    hbm_bytes_per_s: float = A100_HBM_BYTES_PER_S
    mfu: float = 0.5
    mbu: float = 0.6
    nccl_efficiency: float = 0.75
    allreduce_latency_s: float = 10e-6
    overhead_s: float = 1e-3
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    hidden: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("peak_flops", "hbm_bytes_per_s", "mfu", "mbu", "nccl_efficiency"):
            if not getattr(self, name) > 0:
                raise SagaConfigError(f"RooflineCost.{name} must be > 0, got {getattr(self, name)}")
        for name in ("mfu", "mbu", "nccl_efficiency"):
            if getattr(self, name) > 1:
                raise SagaConfigError(f"RooflineCost.{name} is a fraction of peak; must be <= 1")
        if self.max_batched_tokens < 1 or self.max_num_seqs < 1:
            raise SagaConfigError("RooflineCost.max_batched_tokens and max_num_seqs must be >= 1")
        object.__setattr__(self, "hidden", self.model.heads * self.model.head_dim)

    @property
    def tp(self) -> int:
        return self.cluster.tp

    def flops(self, prefill_tokens: int, prefill_context: int, decode_seqs: int,
              decode_context_tokens: int) -> float:
        """FLOPs of one iteration: dense layers plus attention (module docstring)."""
        tokens = prefill_tokens + decode_seqs
        attn_pairs = (prefill_tokens * (prefill_context + prefill_tokens / 2)
                      + decode_context_tokens)
        return 2.0 * self.model.params * tokens + 4.0 * self.model.layers * self.hidden * attn_pairs

    def bytes_moved(self, prefill_tokens: int, prefill_context: int, decode_seqs: int,
                    decode_context_tokens: int) -> float:
        """HBM bytes of one iteration: weights, KV read by every query, KV written."""
        kv = self.model.kv_bytes_per_token
        read = (prefill_context + decode_context_tokens) * kv
        written = (prefill_tokens + decode_seqs) * kv
        return self.model.weight_bytes + read + written

    def allreduce_time(self, tokens: int) -> float:
        """Two ring all-reduces per layer of ``tokens x hidden`` FP16 activations over NVLink."""
        if self.tp == 1 or tokens == 0:
            return 0.0
        per_direction = self.cluster.nvlink_bytes_per_s / 2
        payload = tokens * self.hidden * self.model.dtype_bytes
        one = (self.allreduce_latency_s
               + 2 * (self.tp - 1) / self.tp * payload / (per_direction * self.nccl_efficiency))
        return 2 * self.model.layers * one

    def step_time(self, prefill_tokens: int, prefill_context: int, decode_seqs: int,
                  decode_context_tokens: int) -> float:
        """Seconds of one iteration (roofline max of compute and memory, plus comm, overhead)."""
        if min(prefill_tokens, prefill_context, decode_seqs, decode_context_tokens) < 0:
            raise SagaConfigError("step_time arguments must be >= 0")
        tokens = prefill_tokens + decode_seqs
        if tokens == 0:
            return 0.0
        compute = self.flops(prefill_tokens, prefill_context, decode_seqs,
                             decode_context_tokens) / (self.tp * self.peak_flops * self.mfu)
        memory = self.bytes_moved(prefill_tokens, prefill_context, decode_seqs,
                                  decode_context_tokens) / (self.tp * self.hbm_bytes_per_s
                                                            * self.mbu)
        return max(compute, memory) + self.allreduce_time(tokens) + self.overhead_s

    def prefill_token_s(self) -> float:
        """Seconds per prompt token in a full chunk of ``max_batched_tokens`` with no context."""
        return self.step_time(self.max_batched_tokens, 0, 0, 0) / self.max_batched_tokens

    def prefill_rate(self, chunk: int | None = None) -> float:
        """Prompt tokens per second of an instance prefilling full chunks."""
        c = chunk or self.max_batched_tokens
        return c / self.step_time(c, 0, 0, 0)

    def decode_rate(self, batch: int, context: int) -> float:
        """Output tokens per second of one sequence decoding in a batch of ``batch`` sequences,
        each with ``context`` tokens of KV."""
        return 1.0 / self.step_time(0, 0, batch, batch * context)


def ideal_call_s(cost: StepCost, new_tokens: int, context: int, output_tokens: int) -> float:
    """One call alone on an idle instance with its prefix cached: prefill only the new tokens
    (in chunks of ``max_batched_tokens``; the last chunk's iteration samples the first output
    token, as in vLLM), then decode the rest of the output at batch 1."""
    t = 0.0
    done = 0
    while done < new_tokens:
        c = min(cost.max_batched_tokens, new_tokens - done)
        t += cost.step_time(c, context + done, 0, 0)
        done += c
    ctx = context + new_tokens
    decode = max(output_tokens - 1, 0) if new_tokens > 0 else output_tokens
    return t + cost.step_time(0, 0, 1, ctx + output_tokens // 2) * decode


@dataclass(frozen=True)
class RateRange:
    """A published range for one rate and where it comes from."""

    low: float
    high: float
    source: str


PUBLISHED_RATES: dict[str, RateRange] = {
    "prefill_tokens_per_s": RateRange(
        2_500.0, 8_000.0,
        "prompt throughput of a 70B TP4 A100 vLLM/Sarathi instance on long prompts "
        "(Sarathi-Serve OSDI'24 and vidur MLSys'24 profiles of LLaMA-2-70B on 4xA100)"),
    "decode_tokens_per_s_batch1": RateRange(
        20.0, 45.0,
        "single-stream decode of Llama-2/3-70B FP16 on 4xA100-80GB with vLLM (~25-40 ms per "
        "output token in vLLM's and Databricks' published latency benchmarks)"),
    "decode_tokens_per_s_batch64": RateRange(
        700.0, 2_500.0,
        "aggregate decode throughput at batch 64, 2K-token contexts (vLLM throughput "
        "benchmarks of 70B models at TP4 on A100)"),
}
"""Ranges the roofline must land in; a model outside them is mis-calibrated."""


@dataclass(frozen=True)
class RateCheck:
    """One rate of the model against its published range."""

    name: str
    value: float
    low: float
    high: float
    source: str

    @property
    def ok(self) -> bool:
        return self.low <= self.value <= self.high


def check_published_rates(cost: RooflineCost | None = None) -> list[RateCheck]:
    """The model's prefill and decode rates beside the published ranges."""
    c = cost or RooflineCost()
    values = {
        "prefill_tokens_per_s": c.prefill_rate(),
        "decode_tokens_per_s_batch1": c.decode_rate(1, 2048),
        "decode_tokens_per_s_batch64": 64 * c.decode_rate(64, 2048),
    }
    return [RateCheck(k, v, PUBLISHED_RATES[k].low, PUBLISHED_RATES[k].high,
                      PUBLISHED_RATES[k].source) for k, v in values.items()]


@dataclass(frozen=True)
class LinearCost:
    """A step-time model fitted to a measured engine: ``fixed + a·prefill + b·seqs + c·ctx``.

    ``prefill`` is the step's prompt tokens, ``seqs`` its decoding sequences, ``ctx`` the KV
    tokens its requests already hold (prefill and decode context). Used to configure the
    simulator as the tiny CPU engine of ``saga vllm compare``, whose step times are not a GPU
    roofline; :func:`fit_linear_cost` fits it to measured steps.
    """

    fixed_s: float
    per_prefill_token_s: float
    per_decode_seq_s: float
    per_context_token_s: float = 0.0
    max_batched_tokens: int = 2048
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        for name in ("fixed_s", "per_prefill_token_s", "per_decode_seq_s",
                     "per_context_token_s"):
            if getattr(self, name) < 0:
                raise SagaConfigError(f"LinearCost.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def coefficients(self) -> tuple[float, float, float, float]:
        """The weights of :func:`linear_features`, in its order."""
        return (self.fixed_s, self.per_prefill_token_s, self.per_decode_seq_s,
                self.per_context_token_s)

    def step_time(self, prefill_tokens: int, prefill_context: int, decode_seqs: int,
                  decode_context_tokens: int) -> float:
        if prefill_tokens + decode_seqs == 0:
            return 0.0
        x = linear_features(prefill_tokens, prefill_context, decode_seqs, decode_context_tokens)
        return sum(c * f for c, f in zip(self.coefficients, x, strict=True))

    def prefill_token_s(self) -> float:
        return self.per_prefill_token_s


def linear_features(prefill_tokens: int, prefill_context: int, decode_seqs: int,
                    decode_context_tokens: int) -> tuple[float, float, float, float]:
    """The terms of :class:`LinearCost`'s formula: ``(1, prefill, seqs, ctx)``."""
    return (1.0, float(prefill_tokens), float(decode_seqs),
            float(prefill_context + decode_context_tokens))


@dataclass(frozen=True)
class StepSample:
    """One measured engine step: what it computed and how long it took (seconds)."""

    prefill_tokens: int
    prefill_context: int
    decode_seqs: int
    decode_context_tokens: int
    seconds: float


@dataclass(frozen=True)
class LinearFit:
    """A fitted :class:`LinearCost` and how well it explains the steps it was fitted to.

    ``r2``: share of the step times' variance the model explains; ``median_rel_error``: median
    over steps of ``|predicted - measured| / measured``.
    """

    cost: LinearCost
    steps: int
    r2: float
    median_rel_error: float


def fit_linear_cost(samples: Sequence[StepSample], *, max_batched_tokens: int,
                    max_num_seqs: int) -> LinearFit:
    """Least squares of the measured step times on :func:`linear_features`, every coefficient
    >= 0 (a negative cost per token has no meaning): non-negative least squares."""
    if len(samples) < 2:
        raise SagaConfigError(f"fit_linear_cost needs at least 2 steps, got {len(samples)}")
    x = np.array([linear_features(s.prefill_tokens, s.prefill_context, s.decode_seqs,
                                  s.decode_context_tokens) for s in samples])
    y = np.array([s.seconds for s in samples])
    coef, _ = nnls(x, y)
    pred = x @ coef
    sse = float(((pred - y) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    rel = np.abs(pred - y) / np.maximum(y, 1e-12)
    cost = LinearCost(fixed_s=float(coef[0]), per_prefill_token_s=float(coef[1]),
                      per_decode_seq_s=float(coef[2]), per_context_token_s=float(coef[3]),
                      max_batched_tokens=max_batched_tokens, max_num_seqs=max_num_seqs)
    return LinearFit(cost, len(samples), 1.0 - sse / sst if sst > 0 else 1.0,
                     float(np.median(rel)))


__all__ = [
    "A100_HBM_BYTES_PER_S",
    "A100_PEAK_FP16_FLOPS",
    "PUBLISHED_RATES",
    "LinearCost",
    "LinearFit",
    "RateCheck",
    "RateRange",
    "RooflineCost",
    "StepCost",
    "StepSample",
    "check_published_rates",
    "fit_linear_cost",
    "ideal_call_s",
    "linear_features",
]
