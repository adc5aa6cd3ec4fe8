"""A worker: one engine plus the client that keeps it known to the coordinator.

:class:`WorkerHost` runs calls on its engine and turns each into step observations (call start
and end with token counts, tool start/end with the tool's latency, the session's cache state), so
the coordinator learns TTLs and AFS service without the caller doing anything. It remembers the
sessions whose KV it holds and claims them whenever it (re-)registers. :class:`WorkerActor` is
the same host as a Ray actor (one per serving instance).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.client import Claim, WorkerClient, WorkerReport
from saga.coordinator.engine import Engine, EngineCall, EngineResult
from saga.coordinator.tls import ClientTLS

__all__ = ["WorkerActor", "WorkerHost"]


class WorkerHost:
    """An engine and its coordinator client, in one asyncio loop."""

    def __init__(self, worker_id: str, engine: Engine, address: str, token: str, *,
                 node: str = "", batch_max: int = 256, tls: ClientTLS | None = None) -> None:
        self.worker_id = worker_id
        self.engine = engine
        self.client = WorkerClient(
            address, token, worker_id, node=node, slots=engine.slots, report=self._report,
            claims=self._claims, on_steal=self._on_steal, on_order=engine.set_order,
            batch_max=batch_max, tls=tls)
        self._sessions: dict[str, tuple[str, int]] = {}   # session -> (tenant, kv tokens)
        self._pending_tool: dict[str, tuple[str, float]] = {}  # session -> (tool, started)
        self.calls = 0
        self.stolen = 0

    async def start(self, timeout_s: float = 30.0) -> None:
        """Register with the coordinator and start heartbeats and the observation stream."""
        await self.client.start(timeout_s)

    async def stop(self, deregister: bool = True) -> None:
        await self.client.stop(deregister)
        self.engine.shutdown()

    def _report(self) -> WorkerReport:
        r = self.engine.report()
        return WorkerReport(r.load, r.idle_for_s, r.waiting, r.step_time_s)

    def _claims(self) -> Sequence[Claim]:
        return [Claim(s, tenant, 0.0, kv) for s, (tenant, kv) in self._sessions.items()]

    def _on_steal(self, steal: Any) -> None:
        """The session's home moved away (stolen, or re-homed by routing): stop claiming it."""
        if self.engine.cancel_waiting(steal.session_id):
            self.stolen += 1
        self._sessions.pop(steal.session_id, None)
        self._pending_tool.pop(steal.session_id, None)

    async def call(self, call: EngineCall) -> EngineResult:
        """Run one call and report it; raises :class:`~saga.coordinator.engine.CallMoved`
        when the call was stolen while waiting (route it again)."""
        sid = call.session_id
        pressure = self.engine.report().pressure
        obs = self.client.observe
        tool = self._pending_tool.pop(sid, None)
        if tool is not None:
            latency = call.tool_latency_s
            if latency is None:
                latency = time.monotonic() - tool[1]
            obs(pb.Observation(session_id=sid, kind=pb.TOOL_END, tool=tool[0],
                               tool_latency_s=max(latency, 0.0), pressure=pressure))
        obs(pb.Observation(session_id=sid, kind=pb.CALL_START,
                           prompt_tokens=len(call.prompt_token_ids), pressure=pressure))
        result = await self.engine.call(call)
        self.calls += 1
        pressure = self.engine.report().pressure
        obs(pb.Observation(session_id=sid, kind=pb.CALL_END, prompt_tokens=result.prompt_tokens,
                           output_tokens=len(result.output_token_ids),
                           cached_tokens=result.num_cached_tokens,
                           cache_state=pb.HBM, pressure=pressure, final=call.final))
        if call.final:
            self._sessions.pop(sid, None)
        else:
            self._sessions[sid] = (call.tenant_id, result.prompt_tokens
                                   + len(result.output_token_ids))
            if call.pending_tool:
                self._pending_tool[sid] = (call.pending_tool, time.monotonic())
                obs(pb.Observation(session_id=sid, kind=pb.TOOL_START, tool=call.pending_tool,
                                   cache_state=pb.PINNED, pressure=pressure))
        return result

    @property
    def sessions(self) -> list[str]:
        """Sessions whose KV this worker holds."""
        return sorted(self._sessions)


class WorkerActor:
    """A :class:`WorkerHost` as a Ray actor: ``ray.remote(WorkerActor).remote(...)``.

    ``engine_factory`` runs inside the actor's process (a vLLM engine is built where it runs);
    ``tls`` (PEM bytes, not paths) reaches it on any node.
    """

    def __init__(self, worker_id: str, address: str, token: str,
                 engine_factory: Callable[[], Engine], node: str = "",
                 tls: ClientTLS | None = None) -> None:
        self.host = WorkerHost(worker_id, engine_factory(), address, token, node=node, tls=tls)

    async def start(self, timeout_s: float = 60.0) -> str:
        await self.host.start(timeout_s)
        return self.host.worker_id

    async def call(self, call: EngineCall) -> EngineResult:
        return await self.host.call(call)

    async def stop(self) -> None:
        await self.host.stop()

    async def stats(self) -> dict[str, Any]:
        c = self.host.client
        return {"worker_id": self.host.worker_id, "calls": self.host.calls,
                "stolen": self.host.stolen, "registrations": c.registrations,
                "acked": c.acked, "rejected": len(c.rejected), "dropped": c.dropped,
                "sessions": len(self.host.sessions)}

    def pid(self) -> int:
        return os.getpid()
