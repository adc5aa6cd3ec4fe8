"""Peer parity: mechanism lists agree with the switches, no SAGA-only switch a peer claims,
docs/peers.md is what the data renders, and the mechanisms peers got behave as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga.policy.migration import Rescheduler
from saga.policy.parity import (
    SWITCHES,
    claim_mismatches,
    mechanism_rows,
    peers_markdown,
    saga_only_switches,
)
from saga.policy.peers import Mechanism
from saga.policy.presets import PRESETS, get_preset, policy
from saga.policy.routing import PrefixAffinityRouter, RouteRequest, WorkerSignals

DOCS = Path(__file__).resolve().parents[3] / "docs" / "peers.md"


def test_every_preset_lists_its_mechanisms_with_sources() -> None:
    for p in PRESETS.values():
        assert p.mechanisms, p.name
        assert all(m.source and m.name for m in p.mechanisms), p.name
        assert all(m.note for m in p.mechanisms if m.field is None), p.name


def test_each_switch_is_claimed_exactly_when_it_is_on() -> None:
    assert claim_mismatches() == []


def test_no_switch_is_on_for_saga_only_while_a_peer_claims_it() -> None:
    assert saga_only_switches() == []


@pytest.mark.parametrize("switch", SWITCHES)
def test_the_check_fails_when_saga_alone_has_a_mechanism_a_peer_claims(switch: str) -> None:
    """Turn ``switch`` off in every peer while one peer's list still claims it, and on in
    SAGA: both checks must name it."""
    saga = get_preset("saga")
    on = {"dram_tier": True, "prefetch": True, "migration": True, "rehome_kv": True,
          "ttl": policy("ttl", "tool_call"), "stealing": policy("stealing", "work_stealer"),
          "fairness": policy("fairness", "afs")}
    off = {"dram_tier": False, "prefetch": False, "migration": False, "rehome_kv": False,
           "ttl": None, "stealing": None, "fairness": None}
    saga_with = saga.derive("saga_x", "", **{switch: on[switch],
                                              "rehome_kv": switch == "rehome_kv",
                                              "migration": switch == "migration"})
    claim = Mechanism("x", "src", switch)
    peer = get_preset("vllm").derive("peer_x", "", **{switch: off[switch]},
                                     mechanisms=(claim,))
    assert saga_with.is_saga and not peer.is_saga
    assert switch in saga_only_switches([saga_with, peer])
    assert any(switch in m for m in claim_mismatches([peer]))


def test_docs_peers_md_is_generated_from_the_presets() -> None:
    assert DOCS.read_text() == peers_markdown() + "\n", (
        "docs/peers.md is stale: regenerate it with "
        "`python -c 'from saga.policy.parity import peers_markdown; print(peers_markdown())'"
        " > docs/peers.md`")


def test_rows_name_every_preset_and_left_out_mechanisms() -> None:
    rows = mechanism_rows()
    assert {r["preset"] for r in rows} == set(PRESETS)
    kv = [r for r in rows if r["preset"] == "saga" and r["modelled_by"] == "left out"]
    assert kv and "not done by the real SAGA" in kv[0]["note"]


def test_llumnix_rescheduler_pairs_overloaded_with_underloaded() -> None:
    r = Rescheduler()
    loads = {"a": 1.4, "b": 0.2, "c": 1.1, "d": 0.6, "e": 0.9}
    assert r.pairs(loads) == [("a", "b"), ("c", "d")]
    assert r.pairs({"a": 0.99, "b": 0.0}) == []
    # Shortest running first, until 1024 tokens have been chosen.
    assert r.select([("x", 900), ("y", 300), ("z", 5000)]) == ["y", "x"]
    assert r.select([("z", 5000), ("w", 7000)]) == ["z"]


def test_llm_d_scoring_uses_the_waiting_queue_and_kv_usage() -> None:
    """llm-d's default profile: queue 2 (min-max of waiting), KV utilisation 2, prefix 3."""
    router = PrefixAffinityRouter()
    quiet = {"w0": WorkerSignals(0, 0.5), "w1": WorkerSignals(0, 0.5)}
    blocks = (1, 2, 3, 4)
    # A tie goes to the lower load; the blocks are then recorded on w1.
    assert router.route(RouteRequest("s", blocks, signals=quiet), {"w0": 0.5, "w1": 0.1}) == "w1"
    # Equal queues and KV usage: the prefix hit decides, however high w1's KV demand is.
    assert router.route(RouteRequest("s", blocks, signals=quiet), {"w0": 0.1, "w1": 0.9}) == "w1"
    # A deeper queue (2 x 1) and a fuller pool (2 x 0.8) outweigh a full prefix hit (3 x 1).
    busy = {"w0": WorkerSignals(0, 0.1), "w1": WorkerSignals(5, 0.9)}
    assert router.route(RouteRequest("s", blocks, signals=busy), {"w0": 0.1, "w1": 0.9}) == "w0"
    # Without signals the loads stand in for the queue and the KV scorer is neutral.
    assert router.route(RouteRequest("t", (9,)), {"w0": 0.3, "w1": 0.2}) == "w1"
