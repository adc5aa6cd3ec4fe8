"""Tiny deployments for fast tests: one node (2 instances) and a handful of tasks."""

from __future__ import annotations

import dataclasses

import pytest

from saga.bench.jobs import Scale
from saga.bench.sim import SimConfig
from saga.policy.spec import REFERENCE_CLUSTER

TINY = Scale("tiny", nodes=1, seeds=2, swe_tasks=6, web_tasks=8, swe_rate_per_instance=0.5,
             web_rate_per_instance=1.0, mooncake_requests=200,
             replay_tasks=6)


@pytest.fixture
def tiny_scale() -> Scale:
    return TINY


@pytest.fixture
def one_node() -> SimConfig:
    return SimConfig(cluster=dataclasses.replace(REFERENCE_CLUSTER, nodes=1, instances=2))
