"""A task's end on a real in-process vLLM engine with SAGA's scheduler: a final call, or an end
signalled after the last call, releases the session's pin at once and leaves no per-session
state behind (pins, queue slots, step counts, pattern-inference buffers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.aeg.steps import tool_node_id
from saga.vllm.config import SagaSchedulerConfig
from saga.vllm.engine import Call, SagaEngine, SagaSessionError
from saga.vllm.metadata import SagaRequestMeta
from saga.vllm.testing import ManualClock, kv_bytes_for_blocks, run_prompts, tiny_engine_kwargs

BLOCKS = 24


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[SagaEngine]:
    saga = SagaSchedulerConfig.from_preset("saga_no_afs",
                                           policy_kwargs={"queue": {"max_active": 2}})
    eng = SagaEngine(tiny_engine_kwargs(tiny_model_dir, kv_bytes_for_blocks(BLOCKS), saga=saga))
    yield eng
    eng.shutdown()


@pytest.fixture
def sched(engine: SagaEngine) -> Any:
    s = engine.scheduler
    s.release_all_pins()
    s.clock = ManualClock(100.0)
    return s


def tokens(seed: int, n: int = 70) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 1000, n)]


def assert_idle(sched: Any) -> None:
    assert all(v == 0 for v in sched.session_tables().values()), sched.session_tables()
    assert sched.block_pool.get_num_free_blocks() == BLOCKS


def test_final_call_releases_the_pin_and_forgets_the_session(engine: SagaEngine,
                                                             sched: Any) -> None:
    s = engine.start_session("fixer")
    s.call(tokens(1), 2, pending_tool="pytest")
    assert "fixer" in s.session_id and s.session_id in sched.pins
    assert sched.session_tables()["queue_active_tasks"] == 1
    with s.tool("pytest"):
        pass
    s.call(tokens(1) + tokens(2, 10), 2, final=True)
    assert sched.saga_stats()["pin_releases"].get("returned", 0) >= 1
    assert_idle(sched)


def test_final_metadata_never_pins_even_with_a_pending_tool(sched: Any, engine: SagaEngine
                                                            ) -> None:
    run_prompts(engine.llm, [tokens(3)],
                metas=[SagaRequestMeta("raw", pending_tool="pytest", final=True)])
    assert "raw" not in sched.pins
    assert_idle(sched)


def test_end_after_the_last_call_releases_the_pin_at_once(engine: SagaEngine,
                                                          sched: Any) -> None:
    before = sched.saga_stats()["pin_releases"].get("ended", 0)
    s = engine.start_session("agent-end")
    s.call(tokens(4), 2, pending_tool="search")
    with s.tool("search"):
        sched.clock.t += 1.0
    # The framework could not tell this was the last call: it predicted another tool.
    s.call(tokens(4) + tokens(5, 10), 2, pending_tool="pytest")
    assert s.session_id in sched.pins
    assert s.end() is True
    assert s.session_id not in sched.pins
    assert sched.saga_stats()["pin_releases"]["ended"] == before + 1
    assert_idle(sched)
    # The task was learnt without the tool that never ran.
    counts = sched.hinter.inference.counts("agent-end")
    assert counts is not None and counts.n_tasks == 1
    nodes = set(counts.transitions) | {d for row in counts.transitions.values() for d in row}
    assert tool_node_id("search") in nodes and tool_node_id("pytest") not in nodes
    # Ending twice, or calling after the end, is refused or a no-op.
    assert s.end() is False
    with pytest.raises(SagaSessionError, match="finished"):
        s.call(tokens(6), 2)


def test_end_while_a_call_is_in_flight_makes_it_the_final_call(engine: SagaEngine,
                                                               sched: Any) -> None:
    s = engine.start_session("inflight")
    rid = engine.submit(Call(s, tokens(7), 2, pending_tool="pytest"))
    assert engine.end_session(s.session_id) is False   # nothing pinned yet
    assert sched.session_tables()["ending"] == 1
    done: dict[str, Any] = {}
    while rid not in done:
        done.update(engine.step())
    assert s.session_id not in sched.pins   # the call finished as the task's last
    assert_idle(sched)


def test_many_sessions_ended_either_way_leave_nothing(engine: SagaEngine, sched: Any) -> None:
    sessions = [engine.start_session("bulk") for _ in range(12)]
    engine.run_batch([Call(s, tokens(10 + i, 40), 2, pending_tool="grep")
                      for i, s in enumerate(sessions)])
    for i, s in enumerate(sessions):
        s.tool_started("grep")
        s.tool_finished()
        if i % 2:
            s.end()
    engine.run_batch([Call(s, [*tokens(10 + i, 40), 1, 2], 2, final=True)
                      for i, s in enumerate(sessions) if i % 2 == 0])
    assert_idle(sched)
