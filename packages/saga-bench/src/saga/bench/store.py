"""Finished runs on disk, so an interrupted bench resumes instead of starting over.

Each run is one JSON file ``<dir>/runs/<hash>.json``, written atomically (a temporary file in the
same folder, then ``os.replace``) the moment the run finishes. ``<hash>`` is the SHA-256 of the
run's configuration as canonical JSON (:func:`job_config`): the job's kind, the preset with every
policy's factory and parameters, the workload spec (kind, tasks, rate, seed, tool CV, arrivals,
context cap, SLO factor), the whole ``SimConfig`` (cluster, model, block size, pattern threshold,
pool overrides, pin cap), the cost model, for replays the trace, its size and the cache share,
and :data:`RESULT_FORMAT`. It does not cover the code: a change to the simulator, a policy or
the workload generator that alters results must bump :data:`RESULT_FORMAT`, or stale runs are
reused. A scale's name and seed count are not part of it: the quick and full grids share the
runs they have in common.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from saga.bench.costmodel import RooflineCost
from saga.bench.jobs import Job, ReplayJob, SimJob, build_preset

RESULT_FORMAT = 1
"""Version of the simulator and of a run's result layout. Bump it whenever a code change alters
what a run returns for the same configuration: every stored run then misses and runs again."""


def canonical(x: Any) -> Any:
    """``x`` as plain JSON data that is the same in every process (no ids, no hash seeds)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {"type": type(x).__qualname__,
                **{f.name: canonical(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if isinstance(x, enum.Enum):
        return canonical(x.value)
    if isinstance(x, bool | int | str) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, Mapping):
        return {str(k): canonical(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, list | tuple):
        return [canonical(v) for v in x]
    if callable(x):
        name = getattr(x, "__qualname__", None) or getattr(x, "__name__", None)
        if name is None or "<lambda>" in name or "<locals>" in name:
            raise TypeError(f"cannot hash {x!r}: only module-level callables name a run")
        return f"{x.__module__}.{name}"
    raise TypeError(f"cannot hash a {type(x).__name__} in a run's configuration: {x!r}")


def job_config(job: Job) -> dict[str, Any]:
    """Everything that fixes a run's result, as plain data (see the module docstring)."""
    if isinstance(job, ReplayJob):
        from saga.bench.replay import CAPACITY_SHARE, POLICIES

        trace: dict[str, Any]
        if job.trace == "mooncake":
            trace = {"mooncake_requests": job.scale.mooncake_requests}
        else:
            spec = job.scale.workload(job.trace, job.seed)
            trace = {"workload": dataclasses.replace(
                spec, tasks=min(spec.tasks, job.scale.replay_tasks)),
                "cost": RooflineCost()}
        config: dict[str, Any] = canonical({
            "format": RESULT_FORMAT, "kind": job.kind, "trace": job.trace, "seed": job.seed,
            "capacity_share": CAPACITY_SHARE, "policies": POLICIES, **trace})
        return config
    assert isinstance(job, SimJob)
    cfg = job.scale.sim_config(job.variant)
    preset = dataclasses.replace(build_preset(job.variant), description="")
    config = canonical({"format": RESULT_FORMAT, "kind": job.kind, "variant": job.variant,
                        "preset": preset, "workload": job.workload, "sim_config": cfg,
                        "cost": RooflineCost(model=cfg.model, cluster=cfg.cluster)})
    return config


def job_hash(job: Job) -> str:
    """SHA-256 (hex) of the job's canonical configuration: the name of its run file."""
    text = json.dumps(job_config(job), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scalar(x: Any) -> Any:
    """NumPy scalars as Python numbers (anything else is a bug in a result)."""
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"a run's result holds a {type(x).__name__}, which JSON cannot store")


class RunStore:
    """The finished runs of one output folder (``<out>/runs/<hash>.json``)."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / "runs"

    def path(self, job: Job) -> Path:
        return self.dir / f"{job_hash(job)}.json"

    def save(self, job: Job, result: Mapping[str, Any]) -> Path:
        """Store one finished run (atomically; an existing file of the same run is replaced)."""
        path = self.path(job)
        record = {"hash": path.stem, "config": job_config(job), "result": dict(result)}
        # NaN and infinities stay as JSON's NaN/Infinity: Python reads them back exactly.
        atomic_write_text(path, json.dumps(record, sort_keys=True, default=_scalar) + "\n")
        return path

    def load(self, job: Job, warn: Callable[[str], None] | None = None
             ) -> dict[str, Any] | None:
        """The stored result of ``job``; None when absent or unreadable (``warn`` says why)."""
        path = self.path(job)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("hash") != path.stem:
                raise ValueError("its hash field does not match its name")
            result = record["result"]
            if not isinstance(result, dict) or not result:
                raise ValueError("it holds no result")
        except (OSError, ValueError, KeyError) as exc:
            if warn is not None:
                warn(f"run file {path.name} in {self.dir} is corrupt or partial ({exc}); "
                     "running it again")
            return None
        return result

    def load_many(self, jobs: Iterable[Job], warn: Callable[[str], None] | None = None
                  ) -> dict[Job, dict[str, Any]]:
        """The stored results of those ``jobs`` that have a readable run file."""
        out = {}
        for j in jobs:
            r = self.load(j, warn)
            if r is not None:
                out[j] = r
        return out

    def remove_temporaries(self) -> int:
        """Delete temporary files left by a writer killed mid-write; returns how many."""
        if not self.dir.is_dir():
            return 0
        stale = list(self.dir.glob(".*.tmp"))
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)


__all__ = ["RESULT_FORMAT", "RunStore", "atomic_write_text", "canonical", "job_config",
           "job_hash"]
