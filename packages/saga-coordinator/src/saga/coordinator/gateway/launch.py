"""Start the vLLM engines a gateway routes to: child processes here, or Ray actors on a cluster.

An engine is started only through its command line (``python -m saga.vllm.serve ...``, built by
:func:`engine_command`): saga-coordinator never imports saga-vllm, so the gateway runs on a
machine without vLLM when its engines run elsewhere. :class:`EngineProcesses` starts ``n``
engines as child processes on 127.0.0.1; :class:`RayEngines` starts each one inside a Ray actor
on the actor's node. Both return base URLs only once every engine answers ``GET /health``, fail
fast (:class:`EngineStartError`, with the tail of the engine's log) when an engine exits while
starting, and stop every process they started, also at interpreter exit.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from saga.policy.errors import SagaConfigError, SagaError

__all__ = [
    "ENGINE_MODULE",
    "EngineProcesses",
    "EngineSpec",
    "EngineStartError",
    "RayEngines",
    "engine_command",
    "engine_env",
]

ENGINE_MODULE = "saga.vllm.serve"
"""The engine entrypoint, run as ``python -m``; it replaces itself by vLLM's API server."""
LOG_TAIL_LINES = 40
STOP_GRACE_S = 20.0
"""How long :meth:`EngineProcesses.stop` waits after SIGTERM before it SIGKILLs an engine."""
_POLL_S = 0.5
_PROBE_TIMEOUT = httpx.Timeout(2.0, connect=1.0)


class EngineStartError(SagaError):
    """An engine exited, or did not become healthy in time, while the engines were starting."""


@dataclass(frozen=True)
class EngineSpec:
    """What every engine of a deployment runs: model, SAGA preset, pool and batch sizes.

    ``extra_args`` go to vLLM's API server as they are; ``env`` is added to (and overrides) the
    engine's environment. ``num_cpus`` is what a Ray actor running the engine reserves.
    ``kv_store``: the node-local KV store directory every engine shares (``--kv-store``), so a
    session's KV follows it when the gateway moves it; None: moved sessions recompute.
    ``kv_store_max_gb``: the store's size cap (``--kv-store-max-gb``; None: the engine's
    default, 4 GiB).
    """

    model: str = "tiny"
    preset: str = "saga"
    kv_blocks: int | None = None
    max_num_seqs: int = 8
    max_model_len: int | None = None
    cache_dir: str | None = None
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    num_cpus: float = 1.0
    kv_store: str | None = None
    kv_store_max_gb: float | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise SagaConfigError("EngineSpec.model is empty; give tiny, small or a model "
                                  "directory")
        for name, value in (("kv_blocks", self.kv_blocks), ("max_model_len", self.max_model_len),
                            ("max_num_seqs", self.max_num_seqs)):
            if value is not None and value < 1:
                raise SagaConfigError(f"EngineSpec.{name} must be at least 1, got {value}")
        if not self.num_cpus > 0:
            raise SagaConfigError(f"EngineSpec.num_cpus must be positive, got {self.num_cpus}")
        if self.kv_store_max_gb is not None and not self.kv_store_max_gb > 0:
            raise SagaConfigError("EngineSpec.kv_store_max_gb must be a number of GiB > 0, got "
                                  f"{self.kv_store_max_gb}")


def engine_command(spec: EngineSpec, host: str, port: int) -> list[str]:
    """The command line that starts one engine for ``spec`` listening on ``host:port``."""
    cmd = [sys.executable, "-m", ENGINE_MODULE, "--model", spec.model, "--host", host,
           "--port", str(port), "--preset", spec.preset]
    if spec.kv_blocks is not None:
        cmd += ["--kv-blocks", str(spec.kv_blocks)]
    cmd += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.max_model_len is not None:
        cmd += ["--max-model-len", str(spec.max_model_len)]
    if spec.cache_dir is not None:
        cmd += ["--cache-dir", spec.cache_dir]
    if spec.kv_store is not None:
        cmd += ["--kv-store", spec.kv_store]
        if spec.kv_store_max_gb is not None:
            cmd += ["--kv-store-max-gb", repr(float(spec.kv_store_max_gb))]
    if spec.extra_args:
        cmd += ["--", *spec.extra_args]
    return cmd


def engine_env(spec: EngineSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine: ``base`` (this process's by default), one unbound OpenMP
    thread (engines share few cores; a bound thread whose core is busy stalls every step),
    vLLM's warnings only, then ``spec.env`` over all of it."""
    env = dict(os.environ if base is None else base)
    # An in-process engine core (a test setting) would not serve the API server's requests.
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.update({"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
                "VLLM_LOGGING_LEVEL": "WARNING"})
    env.update(dict(spec.env))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def base_url(host: str, port: int) -> str:
    """``http://host:port`` (an IPv6 host in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with path.open("rb") as f:
            last = deque(f, maxlen=lines)
    except OSError:
        return ""
    return b"".join(last).decode("utf-8", "replace").rstrip()


def _exit_error(index: int, url: str, code: int | None, log: str, tail: str) -> EngineStartError:
    how = "was lost (its Ray actor died)" if code is None else f"exited with code {code}"
    return EngineStartError(
        f"engine {index} ({url}) {how} before it answered /health; fix its options (model, "
        f"--kv-blocks, --max-model-len, extra vLLM args) after reading its log {log}; last "
        f"lines:\n{tail or '(empty log)'}")


# ---------------------------------------------------------------------------------------------
# Process groups: one engine is its API server and the engine-core process it forks.


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _kill_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every engine's process group and reap the leaders (exit and finalizer path)."""
    for p in procs:
        _signal_group(p.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a process group of its own, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop_groups_sync(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every group, wait up to ``grace_s`` for the leaders, then SIGKILL every group."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_groups(procs)   # the stragglers, and children a leader left behind


async def _stop_groups(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """:func:`_stop_groups_sync` in a thread, so the event loop keeps running meanwhile."""
    await asyncio.to_thread(_stop_groups_sync, procs, grace_s)


# ---------------------------------------------------------------------------------------------
# The shared part of both launchers: health checks, urls, async with.


class _Engines(abc.ABC):
    """What both launchers share: the URLs, the health wait, ``async with``."""

    def __init__(self, n: int, spec: EngineSpec) -> None:
        if n < 1:
            raise SagaConfigError(f"need at least one engine, got {n}")
        self.n, self.spec = n, spec
        self._urls: list[str] = []
        self._started = False
        self._stopped = False

    def urls(self) -> list[str]:
        """The engines' base URLs (``http://host:port``), in engine order; [] before start."""
        return list(self._urls)

    @abc.abstractmethod
    async def _launch(self) -> None:
        """Start every engine process and fill ``self._urls``."""

    @abc.abstractmethod
    async def _exited(self, index: int) -> tuple[int | None, str, str] | None:
        """(exit code or None, log path, log tail) when engine ``index`` is gone, else None."""

    @abc.abstractmethod
    async def _tail(self, index: int) -> tuple[str, str]:
        """(log path, last lines) of engine ``index``."""

    @abc.abstractmethod
    def kill(self, index: int) -> None:
        """SIGKILL engine ``index`` (to test what happens when one dies)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every engine; idempotent."""

    async def start(self, timeout_s: float = 300.0) -> list[str]:
        """Start the engines; returns their base URLs once each answers ``GET /health`` with
        200. An engine that exits first, or ``timeout_s`` passing, is an
        :class:`EngineStartError`, and every engine started so far is stopped."""
        if self._started or self._stopped:
            raise EngineStartError("these engines were started or stopped already; make a new "
                                   f"{type(self).__name__} to start engines again")
        self._started = True
        try:
            await self._launch()
            await self._wait_healthy(timeout_s)
        except BaseException:
            await self.stop()
            raise
        return self.urls()

    async def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(range(len(self._urls)))
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT, trust_env=False) as client:
            while pending:
                for i in list(pending):
                    gone = await self._exited(i)
                    if gone is not None:
                        raise _exit_error(i, self._urls[i], *gone)
                    if await _healthy(client, self._urls[i]):
                        pending.remove(i)
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise await self._timeout_error(pending, timeout_s)
                await asyncio.sleep(_POLL_S)

    async def _timeout_error(self, pending: list[int], timeout_s: float) -> EngineStartError:
        parts = []
        for i in pending:
            tails = await self._tail(i)
            parts.append(f"engine {i} ({self._urls[i]}), log {tails[0]}:\n"
                         f"{tails[1] or '(empty log)'}")
        return EngineStartError(
            f"{len(pending)} of {len(self._urls)} engines did not answer /health within "
            f"{timeout_s:g} s; give a longer timeout or fewer/smaller engines. "
            + "\n".join(parts))

    async def __aenter__(self) -> list[str]:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


async def _healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------
# Child processes on this machine.


class EngineProcesses(_Engines):
    """``n`` engines as child processes on 127.0.0.1, each on a free port, each in a process
    group of its own (so stopping one stops its engine-core process too), logs under
    ``log_dir`` (a new temporary directory by default, kept for reading after a failure)."""

    def __init__(self, n: int, spec: EngineSpec, log_dir: Path | None = None) -> None:
        super().__init__(n, spec)
        self._log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        # Whatever happens to this object or the interpreter, no engine outlives them.
        self._finalizer = weakref.finalize(self, _kill_groups, self._procs)

    @property
    def log_dir(self) -> Path | None:
        """Where the engines' logs are (None before start without a ``log_dir``)."""
        return self._log_dir

    def logs(self) -> list[Path]:
        """Each engine's log file, in engine order."""
        return list(self._logs)

    def pids(self) -> list[int]:
        """Each engine's process id, which is also its process group's id."""
        return [p.pid for p in self._procs]

    async def _launch(self) -> None:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="saga-engines-"))
        env = engine_env(self.spec)
        for i in range(self.n):
            port = free_port()
            log = self._log_dir / f"engine-{i}.log"
            self._logs.append(log)
            self._urls.append(base_url("127.0.0.1", port))
            self._procs.append(_spawn(engine_command(self.spec, "127.0.0.1", port), env, log))

    async def _exited(self, index: int) -> tuple[int | None, str, str] | None:
        code = self._procs[index].poll()
        if code is None:
            return None
        return code, str(self._logs[index]), log_tail(self._logs[index])

    async def _tail(self, index: int) -> tuple[str, str]:
        return str(self._logs[index]), log_tail(self._logs[index])

    def kill(self, index: int) -> None:
        """SIGKILL engine ``index`` and its engine core (to test what happens when one dies)."""
        if not 0 <= index < len(self._procs):
            raise SagaConfigError(f"no engine {index}: {len(self._procs)} were started")
        _kill_groups([self._procs[index]])

    async def stop(self) -> None:
        """SIGTERM each engine's process group, wait up to :data:`STOP_GRACE_S`, then SIGKILL;
        idempotent, and safe after a start that failed halfway."""
        if self._stopped:
            return
        self._stopped = True
        await _stop_groups(self._procs, STOP_GRACE_S)
        self._finalizer.detach()


# ---------------------------------------------------------------------------------------------
# Ray actors, one engine each, on whichever node Ray places them.


class EngineActor:
    """Runs one engine process on the node of this Ray actor (used through ``ray.remote``)."""

    def __init__(self, spec: EngineSpec, index: int) -> None:
        self.spec, self.index = spec, index
        self.log = Path(tempfile.mkdtemp(prefix="saga-engine-")) / f"engine-{index}.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        # An actor that exits normally takes its engine with it.
        self._finalizer = weakref.finalize(self, _kill_groups, self.procs)

    def start(self) -> str:
        """Start the engine on this node's address and a free port there; returns its URL."""
        import ray

        host = str(ray.util.get_node_ip_address())
        port = free_port(host)
        self.procs.append(_spawn(engine_command(self.spec, host, port), engine_env(self.spec),
                                 self.log))
        return base_url(host, port)

    def exited(self) -> tuple[int | None, str, str] | None:
        """(exit code, log path, log tail) once the engine has exited, else None."""
        if not self.procs or self.procs[0].poll() is None:
            return None
        return self.procs[0].returncode, str(self.log), log_tail(self.log)

    def tail(self) -> tuple[str, str]:
        """(log path, last lines of the engine's log)."""
        return str(self.log), log_tail(self.log)

    def kill(self) -> None:
        """SIGKILL the engine's process group."""
        _kill_groups(self.procs)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the engine's process group, wait up to ``grace_s``, then SIGKILL."""
        _stop_groups_sync(self.procs, grace_s)


class RayEngines(_Engines):
    """``n`` engines, each started by an :class:`EngineActor` on its node (joins the Ray
    cluster at ``address`` unless Ray is initialised already in this process)."""

    def __init__(self, n: int, spec: EngineSpec, address: str) -> None:
        super().__init__(n, spec)
        self.address = address
        self._actors: list[Any] = []

    async def _launch(self) -> None:
        from saga.coordinator.cluster import start_ray

        ray = start_ray(self.address)
        actor_cls = ray.remote(EngineActor).options(num_cpus=self.spec.num_cpus)
        self._actors = [actor_cls.remote(self.spec, i) for i in range(self.n)]
        self._urls = list(await asyncio.gather(*(a.start.remote() for a in self._actors)))

    async def _call(self, index: int, method: str, *args: Any) -> Any:
        ref: Awaitable[Any] = getattr(self._actors[index], method).remote(*args)
        return await ref

    async def _exited(self, index: int) -> tuple[int | None, str, str] | None:
        import ray.exceptions

        try:
            gone: tuple[int | None, str, str] | None = await self._call(index, "exited")
        except ray.exceptions.RayActorError:
            return None, "(on the lost actor's node)", ""
        return gone

    async def _tail(self, index: int) -> tuple[str, str]:
        import ray.exceptions

        try:
            path, tail = await self._call(index, "tail")
        except ray.exceptions.RayActorError:
            return "(on the lost actor's node)", ""
        return str(path), str(tail)

    def kill(self, index: int) -> None:
        """SIGKILL engine ``index``'s process group on its node."""
        import ray

        if not 0 <= index < len(self._actors):
            raise SagaConfigError(f"no engine {index}: {len(self._actors)} were started")
        ray.get(self._actors[index].kill.remote(), timeout=30)

    async def stop(self) -> None:
        """Ask every actor to stop its engine, then kill the actors; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if not self._actors:
            return
        import ray

        # An actor too busy to answer in time is killed below all the same.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(
                *(self._call(i, "stop") for i in range(len(self._actors))),
                return_exceptions=True), STOP_GRACE_S + 15)
        for actor in self._actors:
            ray.kill(actor)
