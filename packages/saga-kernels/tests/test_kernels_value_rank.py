"""The value-ranking kernel: the native module, the NumPy twin and the plain-Python twin agree
bit for bit, bad input is refused the same way, and the twin ranks as saga-policy's ``eta``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from saga.kernels import value_rank
from saga.kernels.value_rank import eta_select, eta_select_numpy, eta_select_python

MODEL = {"block_tokens": 16.0, "dense_flops": 2.0 * 70.6e9, "attn_flops": 4.0 * 80 * 64 * 128,
         "size_bytes": 16.0 * 327_680, "min_until": 1e-6}
native = pytest.mark.skipif(not value_rank.HAVE_VALUE_RANK,
                            reason=f"native value ranking: {value_rank.VALUE_RANK_REASON}")


def _inputs(n: int, seed: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    now = 100.0
    nu = now + rng.choice([0.0, 0.5, 3.0, 40.0], n) * rng.integers(0, 3, n)
    nu[rng.random(n) < 0.2] = math.inf  # never read again
    nu[rng.random(n) < 0.05] = now - 1.0  # overdue: floored at min_until
    p = rng.choice([0.0, 0.3, 1.0], n)
    depth = rng.integers(0, 6, n)
    la = rng.choice([90.0, 95.0, 99.0], n)  # coarse, so every tie-break is exercised
    return nu, p, depth, la, now


@pytest.mark.parametrize(("n", "k", "seed"), [(0, 3, 0), (1, 1, 1), (50, 0, 2), (50, 7, 3),
                                              (300, 300, 4), (300, 1000, 5), (2000, 64, 6)])
def test_the_twins_agree(n: int, k: int, seed: int) -> None:
    nu, p, depth, la, now = _inputs(n, seed)
    got = eta_select_numpy(nu, p, depth, la, now, k, **MODEL)
    values, order = eta_select_python(nu.tolist(), p.tolist(), depth.tolist(), la.tolist(), now,
                                      k, **MODEL)
    assert got.scores.tolist() == values
    assert got.order.tolist() == order
    assert len(order) == min(k, n)


@native
@pytest.mark.parametrize(("n", "k", "seed"), [(0, 3, 0), (1, 1, 1), (50, 7, 3), (300, 1000, 5),
                                              (16_384, 96, 7), (16_384, 16_384, 8)])
def test_native_equals_the_numpy_twin(n: int, k: int, seed: int) -> None:
    nu, p, depth, la, now = _inputs(n, seed)
    want = eta_select(nu, p, depth, la, now, k, backend="numpy", **MODEL)
    got = eta_select(nu, p, depth, la, now, k, backend="native", **MODEL)
    assert np.array_equal(got.scores, want.scores)
    assert got.order.tolist() == want.order.tolist()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=native)])
@pytest.mark.parametrize(("change", "match"), [
    ({"p": math.nan}, "bad input at candidate 1"),
    ({"p": 1.5}, "bad input at candidate 1"),
    ({"depth": -1}, "bad input at candidate 1"),
    ({"nu": math.nan}, "bad input at candidate 1"),
    ({"la": math.nan}, "bad input at candidate 1"),
])
def test_bad_input_is_refused_alike(backend: str, change: dict[str, float], match: str) -> None:
    nu, p, depth, la = (np.array([5.0, 6.0]), np.array([1.0, 1.0]), np.array([0, 1]),
                        np.array([1.0, 2.0]))
    arrays = {"nu": nu, "p": p, "depth": depth, "la": la}
    for key, value in change.items():
        arrays[key] = arrays[key].astype(np.float64 if key != "depth" else np.int64)
        arrays[key][1] = value
    with pytest.raises(ValueError, match=match):
        eta_select(arrays["nu"], arrays["p"], arrays["depth"], arrays["la"], 0.0, 1,
                   backend=backend, **MODEL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now is NaN"):
        eta_select(nu, p, depth, la, math.nan, 1, backend=backend, **MODEL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size_bytes"):
        eta_select(nu, p, depth, la, 0.0, 1, backend=backend,  # type: ignore[arg-type]
                   **{**MODEL, "size_bytes": 0.0})
    with pytest.raises(ValueError, match="one length"):
        eta_select(nu[:1], p, depth, la, 0.0, 1, backend=backend, **MODEL)  # type: ignore[arg-type]


def test_the_twin_ranks_as_the_eta_policy() -> None:
    """Fed the table's next-use hints, saga-policy's ETAPolicy orders its candidates exactly as
    the twin does (the values of `block_value` of `recompute_flops`, then its tie-breaks)."""
    nextuse = pytest.importorskip("saga.policy.nextuse")
    spec = pytest.importorskip("saga.policy.spec")
    from saga.policy.block_table import BlockTable
    from saga.policy.eviction.eta import ETAPolicy

    n = 400
    nu, p, depth, la, now = _inputs(n, 9)
    table = BlockTable.empty(n, 16)
    table.next_use[:] = nu
    table.reuse_prob[:] = p
    table.depth[:] = depth
    table.last_access[:] = la
    slots = np.arange(n, dtype=np.int64)
    policy = ETAPolicy(estimator=None)
    m = spec.LLAMA3_70B
    model = {"block_tokens": 16.0, "dense_flops": 2.0 * m.params,
             "attn_flops": 4.0 * m.layers * m.heads * m.head_dim,
             "size_bytes": float(m.kv_bytes_per_token * 16), "min_until": nextuse.MIN_UNTIL_S}
    got = eta_select_numpy(nu, p, depth, la, now, n, **model)
    assert np.array_equal(got.scores, policy.values(table, slots, now))
    assert got.order.tolist() == policy.order(table, slots, now).tolist()
