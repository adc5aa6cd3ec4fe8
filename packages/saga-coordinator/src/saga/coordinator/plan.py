"""A Ray launch plan for a deployment described by a :class:`~saga.policy.spec.ClusterSpec`.

No such cluster exists here, so the plan is data a person (or a launcher on a real cluster) acts
on: one placement group per vLLM instance with one bundle per tensor-parallel rank, packed on one
node (``STRICT_PACK``: TP ranks talk over NVLink), instances spread evenly over the nodes, and
the coordinator on the head node. Every number is derived from the spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from saga.policy.errors import SagaConfigError
from saga.policy.spec import LLAMA3_70B, ClusterSpec, ModelSpec

__all__ = ["ActorPlan", "LaunchPlan", "launch_plan"]

COORDINATOR_CPUS = 4
"""CPUs the coordinator actor reserves on the head node (gRPC server + epoch loop)."""


@dataclass(frozen=True)
class ActorPlan:
    """One actor and the resources its placement group bundle asks for."""

    name: str
    kind: str
    node: str
    gpus: int
    cpus: float
    placement_group: str
    strategy: str


@dataclass(frozen=True)
class LaunchPlan:
    summary: str
    actors: list[ActorPlan]
    notes: list[str]

    def to_json(self) -> dict[str, object]:
        return {"summary": self.summary, "actors": [asdict(a) for a in self.actors],
                "notes": self.notes}


def launch_plan(cluster: ClusterSpec, model: ModelSpec = LLAMA3_70B,
                coordinator_cpus: int = COORDINATOR_CPUS) -> LaunchPlan:
    """Placement groups and actors for ``cluster`` serving ``model``."""
    per_node = cluster.instances_per_node
    if per_node < 1 or cluster.instances > per_node * cluster.nodes:
        raise SagaConfigError(
            f"{cluster.instances} TP{cluster.tp} instances do not fit {cluster.nodes} nodes of "
            f"{cluster.gpus_per_node} GPUs")
    cpus_per_gpu = (cluster.cpus_per_node - coordinator_cpus) // cluster.gpus_per_node
    if cpus_per_gpu < 1:
        raise SagaConfigError(f"{cluster.cpus_per_node} CPUs per node leave none per GPU")
    actors = [ActorPlan("coordinator", "CoordinatorServer", "node-0", 0, coordinator_cpus,
                        "-", "head node")]
    for i in range(cluster.instances):
        node = f"node-{i // per_node}"
        actors.append(ActorPlan(
            f"worker-{i}", f"WorkerActor (vLLM TP{cluster.tp})", node, cluster.tp,
            cpus_per_gpu * cluster.tp, f"pg-{i}: {cluster.tp} x {{GPU: 1, CPU: {cpus_per_gpu}}}",
            "STRICT_PACK"))
    kv_blocks = cluster.kv_blocks_per_instance(model)
    used_gpus = cluster.instances * cluster.tp
    summary = (f"{cluster.nodes} nodes x {cluster.gpus_per_node} {cluster.gpu_name}, "
               f"{cluster.instances} instances of {model.name} at TP{cluster.tp}, 1 coordinator")
    notes = [
        f"GPUs used: {used_gpus} of {cluster.gpus}; {per_node} instance(s) per node",
        f"KV pool per instance: {kv_blocks:,} blocks of {model.block_tokens} tokens "
        f"({cluster.kv_hbm_bytes_per_instance(model) / 2**30:.1f} GiB)",
        "each WorkerActor builds its engine with distributed_executor_backend='ray' inside its "
        "placement group (vLLM places one rank per bundle)",
        f"ray.util.placement_group([{{'GPU': 1, 'CPU': {cpus_per_gpu}}}] * {cluster.tp}, "
        "strategy='STRICT_PACK') per instance; the coordinator needs a reachable port and the "
        "shared token ($SAGA_COORDINATOR_TOKEN) on every worker",
    ]
    return LaunchPlan(summary, actors, notes)
