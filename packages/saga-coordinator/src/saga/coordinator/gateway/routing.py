"""Where the gateway's routing decisions come from: a coordinator core in this process, or a
shared gRPC coordinator (``--coordinator ADDR``) when several gateway replicas front the same
engines.

Either way the engines are the coordinator's workers: the gateway registers each engine it
reaches, reports its scraped load as the worker's heartbeat and drops it when it stops
answering, so the preset's router (SAGA's affinity with headroom, llm-d-like prefix + queue
scoring for ``vllm_apc``, least-loaded for ``vllm``) decides exactly as it does in the
simulator and behind ``saga cluster up``. The gateway sees the prompt, so in-process routing
also gets the prompt's prefix hashes (chained hashes of fixed-size chunks of its text, as
llm-d's approximate prefix scorer does); the gRPC protocol carries no prompt.

Stealing runs in-process only: the gateway reports each engine's queue with its load
(:class:`~saga.coordinator.gateway.steal.EngineQueue`), the core's epoch plans steals with the
preset's stealer, and :meth:`LocalRouting.steals` hands them to the gateway to carry out. The
stealer's link is the node KV store, measured in tokens per second (:class:`EngineStealer`).
With a shared gRPC coordinator the gateway does not steal (its replicas each see only their own
queues).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from saga.coordinator.core import CoordinatorCore
from saga.coordinator.gateway.engines import EngineState
from saga.coordinator.gateway.steal import KV_LOAD_S_PER_TOKEN, KV_MOVE_S, EngineQueue
from saga.coordinator.table import RouteDecision
from saga.policy.stealing import Steal, WorkerState, WorkStealer

__all__ = ["CHUNK_CHARS", "EngineStealer", "LocalRouting", "RemoteRouting", "Routing",
           "prompt_hashes", "prompt_text"]

CHUNK_CHARS = 256
"""Characters per hashed prompt chunk (about 64 tokens of English: a few KV blocks)."""
MAX_CHUNKS = 512


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as one string: chat messages as ``role: content`` lines, else ``prompt``."""
    messages = body.get("messages")
    if isinstance(messages, list):
        lines = []
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content
                                  if isinstance(p, Mapping))
            lines.append(f"{m.get('role', '')}: {content if content is not None else ''}")
        return "\n".join(lines)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return " ".join(str(x) for x in prompt)
    return str(prompt) if prompt is not None else ""


def prompt_hashes(text: str, chunk: int = CHUNK_CHARS) -> tuple[int, ...]:
    """Chained 63-bit hashes of the text's full ``chunk``-character chunks (equal hashes mean
    equal prefixes; at most :data:`MAX_CHUNKS`)."""
    out: list[int] = []
    h = b""
    for i in range(0, min(len(text) // chunk, MAX_CHUNKS) * chunk, chunk):
        h = hashlib.blake2b(h + text[i:i + chunk].encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "big") >> 1)
    return tuple(out)


class EngineStealer(WorkStealer):
    """The preset's stealer (its ``T_idle`` and ``R_max``, :meth:`WorkStealer.plan` unchanged)
    over the gateway's engines: session sizes are tokens and the link is the node KV store at
    ``1 / load_s_per_token`` tokens a second plus ``move_s`` a move; whether an engine's head
    call is blocked (all its slots busy) comes from the gateway's reports."""

    def __init__(self, spec: WorkStealer, load_s_per_token: float = KV_LOAD_S_PER_TOKEN,
                 move_s: float = KV_MOVE_S) -> None:
        super().__init__(spec.t_idle, spec.r_max, inter_node_bytes_per_s=1 / load_s_per_token,
                         intra_node_bytes_per_s=1 / load_s_per_token, latency_s=move_s)
        self.blocked: dict[str, bool] = {}

    def set_rate(self, load_s_per_token: float, move_s: float) -> None:
        """The link's current speed (the engines' measured load time per token)."""
        if load_s_per_token > 0 and move_s >= 0:
            self.inter_node_bytes_per_s = self.intra_node_bytes_per_s = 1 / load_s_per_token
            self.latency_s = move_s

    def plan(self, now: float, workers: Sequence[WorkerState]) -> list[Steal]:
        return super().plan(now, [dataclasses.replace(w, head_blocked=self.blocked.get(
            w.worker_id, False)) for w in workers])


class Routing(Protocol):
    """The decisions the gateway asks for and the facts it reports."""

    async def attach(self, engine: EngineState, now: float) -> None: ...

    async def report(self, engine: EngineState, now: float,
                     queue: EngineQueue | None = None) -> None: ...

    def set_kv_rate(self, load_s_per_token: float, move_s: float) -> None: ...

    def steals(self) -> list[Steal]: ...

    async def detach(self, engine_id: str, now: float) -> None: ...

    async def route(self, session_id: str, tenant: str, now: float, *, prompt_tokens: int,
                    block_hashes: tuple[int, ...], avoid: str, deadline_s: float = 0.0,
                    work_tokens: float = 0.0) -> RouteDecision: ...

    async def finished(self, session_id: str, engine_id: str, now: float, *, prompt_tokens: int,
                       output_tokens: int, cached_tokens: int, final: bool,
                       pending_tool: str | None, tool_latency_s: float | None) -> float: ...

    async def tool_returned(self, session_id: str, tool: str, latency_s: float) -> None: ...

    async def tick(self, now: float) -> None: ...

    def order(self, session_ids: list[str], now: float) -> list[str]: ...

    async def close(self) -> None: ...


class LocalRouting:
    """Routing by a :class:`CoordinatorCore` in this process (the default)."""

    def __init__(self, core: CoordinatorCore) -> None:
        self.core = core
        self.stealer: EngineStealer | None = None
        if core.stealer is not None:
            self.stealer = EngineStealer(core.stealer)
            core.stealer = self.stealer

    async def attach(self, engine: EngineState, now: float) -> None:
        self.core.register(engine.id, "gateway", engine.slots, now)
        await self.report(engine, now)

    async def report(self, engine: EngineState, now: float,
                     queue: EngineQueue | None = None) -> None:
        """The engine's load, and its queue for the stealer (none given: busy, nothing
        waiting)."""
        if engine.id not in self.core.workers:
            return
        q = queue or EngineQueue()
        self.core.heartbeat(engine.id, engine.load, q.idle_for_s, q.waiting, q.step_time_s, now)
        if self.stealer is not None:
            self.stealer.blocked[engine.id] = q.head_blocked

    def set_kv_rate(self, load_s_per_token: float, move_s: float) -> None:
        if self.stealer is not None:
            self.stealer.set_rate(load_s_per_token, move_s)

    def steals(self) -> list[Steal]:
        """The steals the last epoch planned (the core also queues its routing moves for the
        workers' heartbeats: those are not steals and are dropped here)."""
        out: list[Steal] = []
        for w in self.core.workers.values():
            out += [s for s in w.steals_out if s.saved_s > 0]
            w.steals_out = []
        return out

    async def detach(self, engine_id: str, now: float) -> None:
        if engine_id in self.core.workers:
            self.core.deregister(engine_id)

    async def route(self, session_id: str, tenant: str, now: float, *, prompt_tokens: int,
                    block_hashes: tuple[int, ...], avoid: str, deadline_s: float = 0.0,
                    work_tokens: float = 0.0) -> RouteDecision:
        return self.core.route(session_id, tenant, now, prompt_tokens=prompt_tokens,
                               avoid_worker=avoid, block_hashes=block_hashes,
                               deadline_s=deadline_s, work_tokens=work_tokens)

    async def finished(self, session_id: str, engine_id: str, now: float, *, prompt_tokens: int,
                       output_tokens: int, cached_tokens: int, final: bool,
                       pending_tool: str | None, tool_latency_s: float | None) -> float:
        """Account the call; pin the session through the tool it now waits on (returns the
        pin's seconds, 0 without one)."""
        core = self.core
        if session_id not in core.sessions:
            return 0.0
        core.call_finished(session_id, prompt_tokens, output_tokens, cached_tokens, engine_id,
                           final=final, now=now)
        if pending_tool is not None and not final:
            pressure = core.workers[engine_id].load if engine_id in core.workers else 0.0
            return core.tool_started(session_id, pending_tool, min(pressure, 1.0), now)
        return 0.0

    async def tool_returned(self, session_id: str, tool: str, latency_s: float) -> None:
        """A call arrived saying its previous tool ran ``latency_s``: train the TTL model."""
        if session_id in self.core.sessions:
            self.core.tool_finished(session_id, tool, latency_s)

    async def tick(self, now: float) -> None:
        self.core.epoch(now)

    def order(self, session_ids: list[str], now: float) -> list[str]:
        """Queued calls in AFS order (tasks enrolled with a deadline first), else as given."""
        return self.core.afs_order(session_ids, now)

    async def close(self) -> None:
        return None


class RemoteRouting:
    """Routing by a shared gRPC coordinator: engines are registered and heartbeated by every
    replica that reaches them (the same worker ids), calls are routed by the coordinator."""

    def __init__(self, address: str, token: str) -> None:
        self.address, self._token = address, token
        self._client: Any = None
        self._pb: Any = None
        self._known: set[str] = set()

    @property
    def client(self) -> Any:
        """The gRPC client, opened in the serving event loop on first use (a grpc.aio channel
        belongs to the loop it was made in)."""
        if self._client is None:
            from saga.coordinator.client import CoordinatorClient

            self._client = CoordinatorClient(self.address, self._token)
        return self._client

    def _proto(self) -> Any:
        if self._pb is None:
            from saga.coordinator._proto import saga_coordinator_pb2 as pb

            self._pb = pb
        return self._pb

    async def _call(self, what: str, rpc: str, req: Any) -> Any:
        c = self.client
        return await c._retry(what, lambda: getattr(c.stub, rpc)(
            req, metadata=c.metadata, timeout=c.timeout_s))

    async def attach(self, engine: EngineState, now: float) -> None:
        pb = self._proto()
        await self._call("Register", "Register", pb.RegisterRequest(
            worker_id=engine.id, node="gateway", slots=engine.slots))
        self._known.add(engine.id)
        await self.report(engine, now)

    async def report(self, engine: EngineState, now: float,
                     queue: EngineQueue | None = None) -> None:
        if engine.id not in self._known:
            return
        pb = self._proto()
        await self._call("Heartbeat", "Heartbeat", pb.HeartbeatRequest(
            worker_id=engine.id, load=engine.load, idle_for_s=-1.0))

    async def detach(self, engine_id: str, now: float) -> None:
        if engine_id in self._known:
            self._known.discard(engine_id)
            pb = self._proto()
            await self._call("Deregister", "Deregister",
                             pb.DeregisterRequest(worker_id=engine_id))

    async def route(self, session_id: str, tenant: str, now: float, *, prompt_tokens: int,
                    block_hashes: tuple[int, ...], avoid: str, deadline_s: float = 0.0,
                    work_tokens: float = 0.0) -> RouteDecision:
        pb = self._proto()
        reply = await self.client.route(session_id, tenant, prompt_tokens=prompt_tokens,
                                        avoid_worker=avoid, deadline_s=deadline_s,
                                        work_tokens=work_tokens)
        return RouteDecision(reply.worker_id, reply.node, pb.RouteReason.Name(reply.reason),
                             reply.pinned_for_s)

    async def finished(self, session_id: str, engine_id: str, now: float, *, prompt_tokens: int,
                       output_tokens: int, cached_tokens: int, final: bool,
                       pending_tool: str | None, tool_latency_s: float | None) -> float:
        if final:
            await self.client.end_session(session_id)
        return 0.0

    async def tool_returned(self, session_id: str, tool: str, latency_s: float) -> None:
        return None  # the engine's scheduler learns tool latencies from the call's metadata

    def set_kv_rate(self, load_s_per_token: float, move_s: float) -> None:
        return None

    def steals(self) -> list[Steal]:
        return []  # each replica sees only its own queues: no stealing through a shared one

    async def tick(self, now: float) -> None:
        return None

    def order(self, session_ids: list[str], now: float) -> list[str]:
        return list(session_ids)  # fairness state lives in the shared coordinator

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
