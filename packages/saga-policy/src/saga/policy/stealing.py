"""Work stealing: an idle instance takes a waiting session from an overloaded one.

Affinity keeps sessions home, which can leave one instance idle while another queues. The spec's
rule: an instance idle for at least ``T_idle`` steals a session from an instance whose load is more
than ``R_max`` times its own, when moving the session's KV costs less time than the queueing it
saves. The decision is one function, :func:`should_steal`; :class:`WorkStealer` plans the steals
of one instant from a snapshot of the workers and returns them (it changes nothing itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from saga.policy.errors import SagaConfigError
from saga.policy.spec import ClusterSpec
from saga.policy.swap import pcie_swap_time

T_IDLE_S = 0.1
R_MAX = 2.0


def kv_transfer_time(nbytes: float, bandwidth_bytes_per_s: float, latency_s: float) -> float:
    """Seconds to move a session's KV over a link: ``latency + bytes / bandwidth``.

    The same link-time formula as the PCIe swap (:func:`pcie_swap_time`, here at the link's
    achieved bandwidth, efficiency 1); 0 for nothing to move.
    """
    if not bandwidth_bytes_per_s > 0 or latency_s < 0:
        raise SagaConfigError(
            f"bandwidth must be > 0 and latency >= 0, got {bandwidth_bytes_per_s}, {latency_s}")
    return pcie_swap_time(nbytes, latency_s, bandwidth_bytes_per_s, 1.0)


def queueing_delay_saved(queue_ahead: int, step_time_s: float) -> float:
    """Queueing a stolen session avoids: ``requests ahead of it x step time`` (thief is idle)."""
    if queue_ahead < 0 or step_time_s < 0:
        raise SagaConfigError(
            f"queue_ahead and step_time_s must be >= 0, got {queue_ahead}, {step_time_s}")
    return queue_ahead * step_time_s


def should_steal(idle_s: float, thief_load: float, victim_load: float, transfer_s: float,
                 saved_s: float, t_idle: float = T_IDLE_S, r_max: float = R_MAX) -> bool:
    """The spec's stealing rule.

    Steal iff ``idle_s >= T_idle`` and ``victim_load > R_max * thief_load`` and
    ``transfer_s < saved_s`` (the KV move costs less than the queueing it saves).
    """
    if t_idle < 0 or r_max < 1:
        raise SagaConfigError(f"need t_idle >= 0 and r_max >= 1, got {t_idle}, {r_max}")
    return idle_s >= t_idle and victim_load > r_max * thief_load and transfer_s < saved_s


@dataclass(frozen=True)
class WaitingSession:
    """A session waiting in an instance's queue, and the KV it holds there."""

    session_id: str
    kv_bytes: float = 0.0


@dataclass(frozen=True)
class WorkerState:
    """A snapshot of one instance, as the stealer sees it.

    ``idle_since`` is when the instance last became idle (``None`` while busy); ``waiting`` lists
    its waiting sessions in queue order (index 0 is served next); ``step_time_s`` is its recent
    mean time per queued request served (what one more request ahead costs a waiting one);
    ``head_blocked``: the instance cannot admit even its head call now (KV pool or batch full),
    so the head, too, waits for a running request to finish.
    """

    worker_id: str
    load: float
    idle_since: float | None = None
    waiting: tuple[WaitingSession, ...] = ()
    step_time_s: float = 0.0
    node: str | None = None
    head_blocked: bool = False


@dataclass(frozen=True)
class Steal:
    """Move ``session_id`` from ``src`` to ``dst``; ``gain_s`` = queueing saved - transfer time."""

    session_id: str
    src: str
    dst: str
    transfer_s: float
    saved_s: float

    @property
    def gain_s(self) -> float:
        """Seconds the steal is expected to save the session."""
        return self.saved_s - self.transfer_s


class WorkStealer:
    """Plans steals with :func:`should_steal`; pure (a snapshot in, a list of steals out).

    Transfers between instances on the same ``node`` use ``intra_node_bytes_per_s`` (NVLink),
    others ``inter_node_bytes_per_s`` (InfiniBand); both with ``latency_s``. Defaults are the
    reference cluster's: NVLink 600 GB/s, HDR IB 200 Gb/s.
    """

    def __init__(self, t_idle: float = T_IDLE_S, r_max: float = R_MAX, *,
                 inter_node_bytes_per_s: float = 25e9, intra_node_bytes_per_s: float = 600e9,
                 latency_s: float = 5e-6) -> None:
        if not (t_idle >= 0 and math.isfinite(t_idle)):
            raise SagaConfigError(f"WorkStealer.t_idle must be finite and >= 0, got {t_idle}")
        if not (r_max >= 1 and math.isfinite(r_max)):
            raise SagaConfigError(f"WorkStealer.r_max must be finite and >= 1, got {r_max}")
        if not (inter_node_bytes_per_s > 0 and intra_node_bytes_per_s > 0 and latency_s >= 0):
            raise SagaConfigError("WorkStealer bandwidths must be > 0 and latency_s >= 0")
        self.t_idle = t_idle
        self.r_max = r_max
        self.inter_node_bytes_per_s = inter_node_bytes_per_s
        self.intra_node_bytes_per_s = intra_node_bytes_per_s
        self.latency_s = latency_s

    @classmethod
    def for_cluster(cls, cluster: ClusterSpec, t_idle: float = T_IDLE_S,
                    r_max: float = R_MAX) -> WorkStealer:
        """A stealer using a cluster's NVLink / InfiniBand bandwidths and IB latency."""
        return cls(t_idle, r_max, inter_node_bytes_per_s=cluster.ib_bytes_per_s,
                   intra_node_bytes_per_s=cluster.nvlink_bytes_per_s,
                   latency_s=cluster.ib_latency_s)

    def transfer_time(self, nbytes: float, src: WorkerState, dst: WorkerState) -> float:
        """KV move time between two instances over the link that joins them."""
        same_node = src.node is not None and src.node == dst.node
        bw = self.intra_node_bytes_per_s if same_node else self.inter_node_bytes_per_s
        return kv_transfer_time(nbytes, bw, self.latency_s)

    def plan(self, now: float, workers: Sequence[WorkerState]) -> list[Steal]:
        """Steals for this instant: at most one per idle thief and one per victim.

        Thieves are taken in order of longest idle (then id). Each takes, from the most loaded
        eligible victim, the waiting session with the largest gain (queueing saved minus
        transfer time), if :func:`should_steal` allows it.
        """
        ids = [w.worker_id for w in workers]
        if len(set(ids)) != len(ids):
            raise SagaConfigError(f"worker ids must be unique, got {ids}")
        thieves = sorted(
            (w for w in workers if w.idle_since is not None and now - w.idle_since >= self.t_idle),
            key=lambda w: (w.idle_since, w.worker_id))
        used_victims: set[str] = set()
        thief_ids = {w.worker_id for w in thieves}
        steals: list[Steal] = []
        for thief in thieves:
            assert thief.idle_since is not None
            idle_s = now - thief.idle_since
            victims = sorted(
                (v for v in workers
                 if v.worker_id not in thief_ids and v.worker_id not in used_victims
                 and v.waiting and v.load > self.r_max * thief.load),
                key=lambda v: (-v.load, v.worker_id))
            for victim in victims:
                best: Steal | None = None
                for k, s in enumerate(victim.waiting):
                    saved = queueing_delay_saved(k + int(victim.head_blocked),
                                                 victim.step_time_s)
                    cost = self.transfer_time(s.kv_bytes, victim, thief)
                    if not should_steal(idle_s, thief.load, victim.load, cost, saved,
                                        self.t_idle, self.r_max):
                        continue
                    cand = Steal(s.session_id, victim.worker_id, thief.worker_id, cost, saved)
                    if best is None or (cand.gain_s, best.session_id) > (best.gain_s,
                                                                          cand.session_id):
                        best = cand
                if best is not None:
                    steals.append(best)
                    used_victims.add(victim.worker_id)
                    break
        return steals


__all__ = [
    "R_MAX",
    "T_IDLE_S",
    "Steal",
    "WaitingSession",
    "WorkStealer",
    "WorkerState",
    "kv_transfer_time",
    "queueing_delay_saved",
    "should_steal",
]
