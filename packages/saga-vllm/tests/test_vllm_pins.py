"""Tool-call pins in a real in-process vLLM engine: hits where stock misses, expiry with an
injected clock, the cap, pressure release, and no leaked blocks after many sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.policy.ttl import tool_call_ttl
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.testing import (
    ManualClock,
    engine_scheduler,
    kv_bytes_for_blocks,
    run_prompts,
    tiny_engine_kwargs,
)

BLOCKS = 12




@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    from vllm import LLM

    kv = kv_bytes_for_blocks(BLOCKS)
    out = {
        "stock": LLM(**tiny_engine_kwargs(tiny_model_dir, kv)),
        # vLLM's scheduler with tool-call TTL pins only; an unseen tool is assumed to take
        # p95 = 30 s (median ~5.8 s), the timeline the cap tests below are written against.
        "ttl": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, saga=SagaSchedulerConfig(
            ttl="tool_call", default_tool_p95_s=30.0))),
        "all": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, saga=SagaSchedulerConfig.from_preset(
            "saga_no_afs", policy_kwargs={"queue": {"max_active": 3}}))),
        # SAGA's whole engine: WA-LRU, pins, the hybrid queue and AFS across tenants.
        "afs": LLM(**tiny_engine_kwargs(tiny_model_dir, kv,
                                        saga=SagaSchedulerConfig.from_preset("saga"))),
        "async": LLM(**tiny_engine_kwargs(tiny_model_dir, kv, async_scheduling=True,
                                          saga=SagaSchedulerConfig.from_preset("saga_no_afs"))),
    }
    yield out


@pytest.fixture
def clock(engines: dict[str, Any]) -> ManualClock:
    """A fresh injected clock on every SAGA engine, pins released and the cache emptied."""
    c = ManualClock(1000.0)
    for name, llm in engines.items():
        sched = engine_scheduler(llm)
        if name != "stock":
            sched.release_all_pins()
            sched.clock = c
        assert sched.reset_prefix_cache()
    return c


def tokens(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 1000, n)]


def assert_no_leak(sched: Any) -> None:
    assert len(sched.pins) == 0
    assert sched.block_pool.get_num_free_blocks() == BLOCKS == sched.num_usable_blocks
    assert all(b.ref_cnt == 0 for b in sched.block_pool.blocks if not b.is_null)


def test_pinned_session_hits_where_stock_misses(engines: dict[str, Any],
                                                clock: ManualClock) -> None:
    cached = {}
    for name in ("stock", "ttl", "async"):
        llm = engines[name]
        s1 = tokens(1, 128)
        run_prompts(llm, [s1], metas=[SagaRequestMeta("S", pending_tool="pytest")])
        clock.t += 1.0
        run_prompts(llm, [tokens(2, 200)])   # a burst of other traffic while the tool runs
        run_prompts(llm, [tokens(3, 200)])
        clock.t += 1.0
        out = run_prompts(llm, [s1 + tokens(4, 30)],
                          metas=[SagaRequestMeta("S", tool_latency_s=2.0)])
        cached[name] = out[0].num_cached_tokens
    assert cached == {"stock": 0, "ttl": 128, "async": 128}
    sched = engine_scheduler(engines["ttl"])
    stats = sched.saga_stats()
    assert stats["pins_created"] == 1 and stats["pin_releases"] == {"returned": 1}
    assert_no_leak(sched)


def test_pins_expire_on_the_injected_clock(engines: dict[str, Any], clock: ManualClock) -> None:
    llm = engines["ttl"]
    sched = engine_scheduler(llm)
    before = sched.saga_stats()["pin_expiries"]
    run_prompts(llm, [tokens(5, 100)], metas=[SagaRequestMeta("E", pending_tool="slow")])
    pin = sched.pins.get("E")
    assert pin is not None and pin.num_blocks == 4
    # TTL = tool_call_ttl(p95 of the tool's model, pool pressure at pin time).
    p95 = sched.ttl_policy.model("slow").p95()
    ttl = pin.expires_at - pin.pinned_at
    assert p95 / 2 <= ttl <= p95
    assert ttl == pytest.approx(tool_call_ttl(p95, (1 - (BLOCKS - 4) / BLOCKS) * 1.0))
    clock.t += ttl - 0.01
    run_prompts(llm, [tokens(6, 40)])
    assert "E" in sched.pins                    # not yet
    clock.t += 0.02
    run_prompts(llm, [tokens(7, 40)])           # the next step releases it
    assert "E" not in sched.pins
    assert sched.saga_stats()["pin_expiries"] == before + 1
    assert_no_leak(sched)


def test_tool_latency_feeds_the_ttl(engines: dict[str, Any], clock: ManualClock) -> None:
    sched = engine_scheduler(engines["ttl"])
    prior = sched.ttl_policy.ttl("grep", 0.0)
    prompt = tokens(8, 40)
    for i in range(6):
        meta = SagaRequestMeta("G", pending_tool="grep", tool_latency_s=0.5 if i else None)
        prompt = prompt + tokens(100 + i, 8)
        run_prompts(engines["ttl"], [prompt], metas=[meta])
    assert sched.ttl_policy.ttl("grep", 0.0) < prior / 4
    sched.release_all_pins()
    assert_no_leak(sched)


expiries: dict[str, float] = {}
"""Expiry of every pin the spy saw released, by session."""


def _spy_releases(sched: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    released: list[tuple[str, str]] = []
    original = sched._release

    def spy(pin: Any, reason: Any) -> None:
        released.append((pin.session_id, reason.value))
        expiries[pin.session_id] = pin.expires_at
        original(pin, reason)

    monkeypatch.setattr(sched, "_release", spy)
    return released


def test_pin_cap_refuses_the_pin_expected_back_last(
        engines: dict[str, Any], clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = engines["ttl"]
    sched = engine_scheduler(llm)
    released = _spy_releases(sched, monkeypatch)
    cap = int(0.5 * BLOCKS)
    for i, (session, wait) in enumerate((("C1", 1.0), ("C2", 1.0), ("C3", 4.0))):
        clock.t += wait
        run_prompts(llm, [tokens(20 + i, 80)], metas=[SagaRequestMeta(session, pending_tool="t")])
        assert sched.pins.pinned_blocks <= cap
    # Three pins of 3 blocks exceed the cap of 6. C1 and C2 have waited 5 s and 4 s of a tool
    # whose median is ~5.8 s: they are due back before the newcomer, so C3's pin is refused —
    # although C1's pin expires first (earliest-expiry-first would have dropped C1).
    assert released == [("C3", "cap")]
    assert {p.session_id for p in sched.pins} == {"C1", "C2"}
    assert min(p.expires_at for p in sched.pins) < expiries["C3"]
    assert sched.saga_stats()["pin_releases"].get("cap", 0) >= 1
    clock.t += 1e6
    assert sched.release_expired_pins() == 2
    assert_no_leak(sched)


def test_pin_cap_gives_up_a_pin_long_overdue(
        engines: dict[str, Any], clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = engines["ttl"]
    sched = engine_scheduler(llm)
    released = _spy_releases(sched, monkeypatch)
    run_prompts(llm, [tokens(40, 80)], metas=[SagaRequestMeta("D1", pending_tool="slow")])
    pin = sched.pins.get("D1")
    assert pin is not None
    # D1's tool then runs far past its usual latency (a heavy tail, or a session that is gone)
    # while two newer sessions pin: D1 is now expected back last, so it gives way, not D3.
    clock.t += 0.9 * (pin.expires_at - pin.pinned_at)
    run_prompts(llm, [tokens(41, 80)], metas=[SagaRequestMeta("D2", pending_tool="t")])
    run_prompts(llm, [tokens(42, 80)], metas=[SagaRequestMeta("D3", pending_tool="t")])
    assert released == [("D1", "cap")]
    assert {p.session_id for p in sched.pins} == {"D2", "D3"}
    sched.release_all_pins()
    assert_no_leak(sched)


def test_pressure_releases_pins_for_a_waiting_request(
        engines: dict[str, Any], clock: ManualClock) -> None:
    llm = engines["ttl"]
    sched = engine_scheduler(llm)
    run_prompts(llm, [tokens(30, 150)], metas=[SagaRequestMeta("P", pending_tool="t")])
    assert sched.pins.pinned_blocks == 5
    # Needs 10 of the 12 blocks: only possible once the pin lets go.
    out = run_prompts(llm, [tokens(31, 300)], max_tokens=2)
    assert len(out[0].outputs[0].token_ids) == 2
    assert sched.saga_stats()["pin_releases"].get("pressure", 0) == 1
    assert_no_leak(sched)


@pytest.mark.parametrize("name", ["all", "afs", "async"])
def test_many_sessions_leak_no_block(engines: dict[str, Any], clock: ManualClock,
                                     name: str) -> None:
    llm = engines[name]
    sched = engine_scheduler(llm)
    rng = np.random.default_rng(7)
    n_sessions, steps = 16, 3
    prompts = {s: tokens(200 + s, int(rng.integers(20, 90))) for s in range(n_sessions)}
    for step in range(steps):
        batch = rng.permutation(n_sessions)[: 6 + step]
        metas: list[SagaRequestMeta | None] = []
        inputs: list[list[int]] = []
        for s in batch.tolist():
            final = step == steps - 1
            prompts[s] = prompts[s] + tokens(1000 * step + s, int(rng.integers(5, 40)))
            metas.append(SagaRequestMeta(
                f"s{s}", tenant_id=f"t{s % 2}", pending_tool=None if final else "tool",
                tool_latency_s=float(rng.uniform(0.1, 3.0)) if step else None, final=final,
                deadline_s=float(rng.uniform(5, 50))))
            inputs.append(prompts[s])
        inputs.append(tokens(9000 + step, 60))  # plain traffic in the same batch
        metas.append(None)
        out = run_prompts(llm, inputs, metas=metas, max_tokens=3)
        assert all(len(o.outputs[0].token_ids) == 3 for o in out)
        clock.t += 2.0
    stats = sched.saga_stats()
    assert stats["pins_created"] > 0 and stats["scheduled_requests"] >= 21
    clock.t += 1e6
    sched.release_expired_pins()
    assert_no_leak(sched)


def test_preemption_and_its_recompute_are_counted(
        engines: dict[str, Any], clock: ManualClock) -> None:
    llm = engines["ttl"]
    sched = engine_scheduler(llm)
    before = sched.saga_stats()
    # Two requests that each grow to 10 of the 12 blocks: one must be preempted and resumed.
    out = run_prompts(llm, [tokens(50, 100), tokens(51, 100)], max_tokens=200)
    assert all(len(o.outputs[0].token_ids) == 200 for o in out)
    after = sched.saga_stats()
    assert after["preemptions"] > before["preemptions"]
    lost = after["preempted_recomputed_tokens"] - before["preempted_recomputed_tokens"]
    # The other request's growth evicted part of the preempted one's cached blocks.
    assert 0 < lost <= 300 * (after["preemptions"] - before["preemptions"])
    assert not sched._preempted
    assert_no_leak(sched)
