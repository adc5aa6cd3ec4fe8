"""Model/cluster specs: capacities computed by hand here, compared with the library."""

from __future__ import annotations

import dataclasses

import pytest

from saga.policy.errors import SagaConfigError
from saga.policy.spec import (
    LLAMA3_70B,
    REFERENCE_CLUSTER,
    ClusterSpec,
    ModelSpec,
    check_reference_invariants,
)

GIB = 2**30


def test_llama_kv_bytes_per_token_and_block() -> None:
    assert LLAMA3_70B.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert LLAMA3_70B.kv_bytes_per_block == 2 * 80 * 8 * 128 * 2 * 16
    assert LLAMA3_70B.weight_bytes == pytest.approx(70.6e9 * 2)


def test_session_kv_32k_is_10_gib() -> None:
    n = 32 * 1024
    nbytes = LLAMA3_70B.session_kv_bytes(n)
    assert nbytes == n * 2 * 80 * 8 * 128 * 2
    assert nbytes / GIB == pytest.approx(10.0)
    assert nbytes / 1e9 == pytest.approx(10.737, abs=1e-3)
    assert LLAMA3_70B.blocks_for(n) == n // 16
    assert LLAMA3_70B.blocks_for(17) == 2
    assert LLAMA3_70B.blocks_for(0) == 0


def test_reference_report_matches_hand_computation() -> None:
    r = check_reference_invariants()
    per_token = 2 * 80 * 8 * 128 * 2
    kv_left = 4 * 80 * GIB * 0.9 - 70.6e9 * 2 - 4 * 2 * GIB
    blocks = int(kv_left // (per_token * 16))
    assert r.kv_bytes_per_token == per_token
    assert r.session_kv_gib == pytest.approx(10.0)
    assert r.kv_hbm_bytes_per_instance == pytest.approx(kv_left)
    assert r.kv_blocks_per_instance == blocks
    assert r.sessions_per_instance == blocks // 2048
    assert r.sessions_per_cluster == 16 * (blocks // 2048)
    assert r.cluster_gpus == 64
    dram_blocks = int(2**40 * 0.8 // (per_token * 16))
    assert r.dram_blocks_per_node == dram_blocks
    assert r.pcie_swap_s_per_session == pytest.approx(10e-6 + 32768 * per_token / (32e9 * 0.8))
    assert r.ib_transfer_s_per_session == pytest.approx(5e-6 + 32768 * per_token / 25e9)


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(SagaConfigError, match="kv_heads"):
        dataclasses.replace(LLAMA3_70B, kv_heads=7)


def test_nonpositive_field_names_the_field() -> None:
    with pytest.raises(SagaConfigError, match=r"ModelSpec\.layers"):
        dataclasses.replace(LLAMA3_70B, layers=0)


def test_instances_times_tp_must_cover_gpus() -> None:
    with pytest.raises(SagaConfigError, match="instances\\*tp"):
        dataclasses.replace(REFERENCE_CLUSTER, instances=15)


def test_tp_must_divide_gpus_per_node() -> None:
    with pytest.raises(SagaConfigError, match="tp"):
        ClusterSpec(nodes=3, gpus_per_node=4, gpu_name="x", gpu_hbm_bytes=GIB, tp=3,
                    instances=4, nvlink_bytes_per_s=1.0, ib_bytes_per_s=1.0,
                    dram_bytes_per_node=GIB, cpus_per_node=1)


def test_weights_that_do_not_fit_raise() -> None:
    tiny = dataclasses.replace(REFERENCE_CLUSTER, tp=1, instances=64)
    with pytest.raises(SagaConfigError, match="does not fit"):
        tiny.kv_hbm_bytes_per_instance(LLAMA3_70B)


def test_tp_above_kv_heads_is_rejected() -> None:
    model = ModelSpec("m", layers=2, heads=8, kv_heads=2, head_dim=64, dtype_bytes=2,
                      block_tokens=16, params=1e6)
    with pytest.raises(SagaConfigError, match="replicated"):
        REFERENCE_CLUSTER.kv_hbm_bytes_per_instance(model)


def test_session_too_large_for_an_instance_raises() -> None:
    with pytest.raises(SagaConfigError, match="does not fit"):
        check_reference_invariants(session_tokens=10_000_000)
