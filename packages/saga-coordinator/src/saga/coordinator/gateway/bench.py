"""The gateway's own overhead: added latency per request and requests/s, against a trivial engine.

Three processes on loopback: the trivial engine (:class:`TrivialEngine` under uvicorn), the
gateway (``create_app`` under uvicorn, in front of that engine) and the load generator (the
caller's process). Each has its own event loop and GIL, so the gateway's figures are not the
engine's or the client's Python time; on a small machine they still share the CPU cores, which
is why the gateway's CPU time per request is measured too (read from ``/proc``, it does not
depend on what else runs).

1. latency: ``requests`` sequential non-streamed calls (short prompt, ``X-Session-Id``) sent
   directly to the engine and through the gateway in pairs, interleaved (the first of each pair
   alternates) after ``warmup`` pairs, so that machine noise hits both paths. The added latency
   is the paired difference ``gateway_i - direct_i``; its P50/P99 are reported with each path's
   own P50/P99 and the difference of the two distributions' percentiles.
2. throughput: ``concurrency`` closed-loop keep-alive clients for ``seconds``, directly to the
   engine (the ceiling this machine and client allow) and then through the gateway.

With ``stream`` both are measured again for SSE streams (latency to the stream's last byte).
``python -m saga.coordinator.gateway.bench --engine-only --port P`` (or ``--gateway URL``)
serves one side; the bench starts both that way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from saga.coordinator.core import DEFAULT_PRESET
from saga.coordinator.gateway.server import free_port
from saga.policy.errors import SagaConfigError, SagaError
from saga.policy.presets import get_preset

__all__ = ["BenchError", "GatewayBenchConfig", "GatewayBenchResult", "LatencyResult",
           "ThroughputResult", "run_gateway_bench", "serve_command", "serving", "write_results"]

SETUP = ("engine, gateway and load generator each in its own process (uvicorn, uvloop and "
         "httptools when installed; a minimal keep-alive HTTP/1.1 client, a connection per "
         "client), one trivial engine, loopback")
ENDPOINT = "/v1/chat/completions"


class BenchError(SagaError):
    """The bench could not run: a server did not start, or a request it must make failed."""


@dataclass(frozen=True)
class GatewayBenchConfig:
    """What to measure; the defaults run in well under a minute."""

    requests: int = 500
    """Measured request pairs (direct + gateway) of the latency phase."""
    warmup: int = 50
    concurrency: int = 16
    seconds: float = 5.0
    """Length of each throughput phase."""
    preset: str = DEFAULT_PRESET
    stream: bool = False
    sessions: int = 32
    """Distinct ``X-Session-Id`` values the requests cycle through."""
    profile: str | None = None
    """Run the gateway under cProfile and write its stats here (slows the gateway)."""
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("requests", "concurrency", "sessions"):
            if getattr(self, name) < 1:
                raise SagaConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise SagaConfigError(f"warmup must be >= 0, got {self.warmup}")
        if not self.seconds > 0:
            raise SagaConfigError(f"--seconds must be > 0, got {self.seconds}")
        get_preset(self.preset)  # an unknown name lists the valid ones


@dataclass(frozen=True)
class LatencyResult:
    """Sequential round trips, milliseconds; ``added_*`` of the paired differences."""

    stream: bool
    pairs: int
    direct_p50_ms: float
    direct_p99_ms: float
    gateway_p50_ms: float
    gateway_p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    dist_added_p50_ms: float
    """``gateway_p50_ms - direct_p50_ms`` (percentiles of the distributions, not of pairs)."""
    dist_added_p99_ms: float
    gateway_cpu_ms_per_request: float | None
    """The gateway process's CPU time per measured request (warm-up excluded)."""
    direct_ms: tuple[float, ...] = field(repr=False, default=())
    gateway_ms: tuple[float, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class ThroughputResult:
    """Closed-loop clients for a while: completed requests/s and their latency under load."""

    target: str
    """``direct`` (the engine alone: the ceiling) or ``gateway``."""
    stream: bool
    concurrency: int
    seconds: float
    requests: int
    errors: int
    per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float | None
    """CPU time of the process served (gateway or engine) per completed request."""
    client_cpu_ms_per_request: float
    """The load generator's CPU time per completed request (it shares the cores)."""


@dataclass(frozen=True)
class GatewayBenchResult:
    config: GatewayBenchConfig
    latency: list[LatencyResult]
    throughput: list[ThroughputResult]
    cpus: int
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    setup: str = SETUP

    def throughput_of(self, target: str, stream: bool = False) -> ThroughputResult:
        return next(t for t in self.throughput if t.target == target and t.stream == stream)

    def to_json(self) -> dict[str, Any]:
        lat = [{k: v for k, v in asdict(r).items() if k not in ("direct_ms", "gateway_ms")}
               for r in self.latency]
        return {"config": asdict(self.config), "latency": lat,
                "throughput": [asdict(t) for t in self.throughput], "cpus": self.cpus,
                "loadavg_before": list(self.loadavg_before),
                "loadavg_after": list(self.loadavg_after), "setup": self.setup,
                "added_latency": "paired: gateway_i - direct_i of interleaved sequential calls; "
                                 "dist_added_*: difference of the two paths' percentiles"}


def _ms(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else 0.0


# -- the served processes ----------------------------------------------------------------------
def serve_command(port: int, engine_url: str | None = None, preset: str = DEFAULT_PRESET,
                  profile: str | None = None) -> list[str]:
    """The command line of one served side: the trivial engine, or the gateway before it."""
    cmd = [sys.executable, "-m", "saga.coordinator.gateway.bench", "--port", str(port)]
    if engine_url is None:
        return [*cmd, "--engine-only"]
    cmd += ["--gateway", engine_url, "--preset", preset]
    return cmd + (["--profile", profile] if profile else [])


class _Served:
    """One child process serving on ``url``; its output goes to ``log``."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path) -> None:
        self.name, self.url, self.log = name, f"http://127.0.0.1:{port}", log
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(trust_env=False, timeout=1.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(self.url + "/health").status_code == 200:
                        return
                time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:].strip()
        code = self.proc.poll()
        self.stop()
        raise BenchError(f"the {self.name} did not become healthy on {self.url} within "
                         f"{timeout_s:.0f} s (exit code {code}); its log ends: {tail or '-'}")

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the process so far (Linux ``/proc``; else None)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def serving(cfg: GatewayBenchConfig, log_dir: Path) -> Iterator[tuple[_Served, _Served]]:
    """The trivial engine and the gateway before it, each in a child process, healthy. Both
    start at once: the gateway finds the engine at its next scrape."""
    started: list[_Served] = []
    try:
        port, gw_port = free_port(), free_port()
        engine = _Served("trivial engine", serve_command(port), port, log_dir / "engine.log")
        started.append(engine)
        gateway = _Served("gateway", serve_command(gw_port, engine.url, cfg.preset,
                                                   cfg.profile), gw_port, log_dir / "gateway.log")
        started.append(gateway)
        engine.wait_healthy(cfg.start_timeout_s)
        gateway.wait_healthy(cfg.start_timeout_s)
        yield engine, gateway
    finally:
        for s in reversed(started):  # the gateway first: its profile is written as it exits
            s.stop()


# -- the load ----------------------------------------------------------------------------------
def _requests(port: int, cfg: GatewayBenchConfig, stream: bool) -> list[bytes]:
    """One short request per session (head and body on the wire), built once."""
    out = []
    for s in range(cfg.sessions):
        body: dict[str, Any] = {"model": "trivial", "max_tokens": 2, "stream": stream,
                                "messages": [{"role": "user", "content": f"Say ok ({s})."}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        raw = json.dumps(body).encode()
        out.append(f"POST {ENDPOINT} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                   f"content-type: application/json\r\nx-session-id: bench-{s}\r\n"
                   f"content-length: {len(raw)}\r\n\r\n".encode() + raw)
    return out


class _Conn:
    """One keep-alive HTTP/1.1 connection of the load generator: a few lines of Python per
    request (httpx costs ~2 ms of CPU per request here, which on 2 cores the gateway lacks)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def call(self, wire: bytes) -> float:
        """Seconds of one round trip to the answer's last byte; a non-200 answer or a broken
        connection is a :class:`BenchError` (the next call reconnects)."""
        t0 = time.perf_counter()
        try:
            if self.io is None:
                self.io = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self.io
            writer.write(wire)
            head = await reader.readuntil(b"\r\n\r\n")
            fields = head.lower().split(b"\r\n")
            length = next((int(f[15:]) for f in fields if f.startswith(b"content-length:")), -1)
            if length >= 0:
                await reader.readexactly(length)
            else:  # chunked (a stream): to the last chunk
                while (size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)):
                    await reader.readexactly(size + 2)
                await reader.readuntil(b"\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:
            self.close()
            raise BenchError(f"a request to port {self.port} failed: {exc!r}") from None
        dt = time.perf_counter() - t0
        if head[9:12] != b"200" or b"connection: close" in head.lower():
            self.close()
        if head[9:12] != b"200":
            raise BenchError(f"POST {ENDPOINT} on port {self.port} answered "
                             f"{head[9:12].decode(errors='replace')}")
        return dt

    def close(self) -> None:
        if self.io is not None:
            self.io[1].close()
            self.io = None


def _port(s: _Served) -> int:
    return int(s.url.rsplit(":", 1)[1])


async def measure_latency(engine: _Served, gw: _Served, cfg: GatewayBenchConfig,
                          stream: bool) -> LatencyResult:
    """Interleaved sequential pairs; the first of each pair alternates."""
    cd, cg = _Conn(_port(engine)), _Conn(_port(gw))
    d_reqs, g_reqs = _requests(cd.port, cfg, stream), _requests(cg.port, cfg, stream)
    d_ms: list[float] = []
    g_ms: list[float] = []
    cpu0: float | None = None
    try:
        for i in range(cfg.warmup + cfg.requests):
            if i == cfg.warmup:
                cpu0 = gw.cpu_s()
            k = i % cfg.sessions
            if i % 2 == 0:
                d = await cd.call(d_reqs[k])
                g = await cg.call(g_reqs[k])
            else:
                g = await cg.call(g_reqs[k])
                d = await cd.call(d_reqs[k])
            if i >= cfg.warmup:
                d_ms.append(d)
                g_ms.append(g)
    finally:
        cd.close()
        cg.close()
    cpu1 = gw.cpu_s()
    diff = [g - d for d, g in zip(d_ms, g_ms, strict=True)]
    return LatencyResult(
        stream, len(d_ms), _ms(d_ms, 50), _ms(d_ms, 99), _ms(g_ms, 50), _ms(g_ms, 99),
        _ms(diff, 50), _ms(diff, 99), _ms(g_ms, 50) - _ms(d_ms, 50),
        _ms(g_ms, 99) - _ms(d_ms, 99),
        None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000.0 / len(d_ms),
        tuple(x * 1000 for x in d_ms), tuple(x * 1000 for x in g_ms))


async def measure_throughput(target: _Served, name: str, cfg: GatewayBenchConfig,
                             stream: bool) -> ThroughputResult:
    """``concurrency`` closed-loop clients, a connection each, for ``seconds`` (after one
    warm-up call each)."""
    conns = [_Conn(_port(target)) for _ in range(cfg.concurrency)]
    reqs = _requests(conns[0].port, cfg, stream)
    lat: list[float] = []
    errors = 0

    async def client_loop(k: int, end: float) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < end:
            try:
                lat.append(await conns[k].call(reqs[i % len(reqs)]))
            except BenchError:
                errors += 1
            i += cfg.concurrency

    try:
        await asyncio.gather(*(c.call(reqs[k % len(reqs)]) for k, c in enumerate(conns)))
        cpu0, own0, t0 = target.cpu_s(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(client_loop(k, t0 + cfg.seconds)
                               for k in range(cfg.concurrency)))
        elapsed, cpu1, own1 = time.perf_counter() - t0, target.cpu_s(), time.process_time()
    finally:
        for c in conns:
            c.close()
    n = max(len(lat), 1)
    cpu_ms = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000.0 / n
    return ThroughputResult(name, stream, cfg.concurrency, elapsed, len(lat), errors,
                            len(lat) / elapsed, _ms(lat, 50), _ms(lat, 99), cpu_ms,
                            (own1 - own0) * 1000.0 / n)


async def _measure(engine: _Served, gateway: _Served,
                   cfg: GatewayBenchConfig) -> tuple[list[LatencyResult], list[ThroughputResult]]:
    modes = (False, True) if cfg.stream else (False,)
    latency = []
    throughput = []
    for s in modes:  # each phase is bounded: a server that stops answering ends the bench
        async with _bounded(60.0 + 0.1 * (cfg.warmup + cfg.requests), "latency"):
            latency.append(await measure_latency(engine, gateway, cfg, s))
    for s in modes:
        for target, name in ((engine, "direct"), (gateway, "gateway")):
            async with _bounded(60.0 + cfg.seconds, f"{name} throughput"):
                throughput.append(await measure_throughput(target, name, cfg, s))
    return latency, throughput


@contextlib.asynccontextmanager
async def _bounded(seconds: float, phase: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise BenchError(f"the {phase} phase did not finish within {seconds:.0f} s: a server "
                         "stopped answering (see the logs under --out)") from None


def run_gateway_bench(cfg: GatewayBenchConfig, log_dir: Path | None = None) -> GatewayBenchResult:
    """Start the engine and the gateway, measure, stop them (the profile is written then)."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ModuleNotFoundError:
        loop_factory = None
    before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="saga-gwb-")))
        log_dir.mkdir(parents=True, exist_ok=True)
        engine, gateway = stack.enter_context(serving(cfg, log_dir))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            latency, throughput = runner.run(_measure(engine, gateway, cfg))
    after = os.getloadavg()
    return GatewayBenchResult(cfg, latency, throughput, os.cpu_count() or 1,
                              (before[0], before[1], before[2]), (after[0], after[1], after[2]))


def write_results(result: GatewayBenchResult, out: Path) -> list[Path]:
    """``gateway_bench.json`` (the summary), ``gateway_bench_latency.csv`` (every measured pair)
    and ``gateway_bench_throughput.csv`` (one row per phase) under ``out``."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "gateway_bench.json", out / "gateway_bench_latency.csv",
             out / "gateway_bench_throughput.csv"]
    paths[0].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    with paths[1].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stream", "pair", "direct_ms", "gateway_ms", "added_ms"])
        for r in result.latency:
            for i, (d, g) in enumerate(zip(r.direct_ms, r.gateway_ms, strict=True)):
                w.writerow([r.stream, i, f"{d:.4f}", f"{g:.4f}", f"{g - d:.4f}"])
    rows = [asdict(t) for t in result.throughput]
    with paths[2].open("w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=list(rows[0]))
        dw.writeheader()
        dw.writerows(rows)
    return paths


# -- the served side (a child process) ---------------------------------------------------------
def _serve(port: int, engine_url: str | None, preset: str, profile: str | None) -> None:
    """Serve the trivial engine or the gateway on 127.0.0.1:``port`` until SIGTERM."""
    import uvicorn

    app: Any
    if engine_url is None:
        from saga.coordinator.gateway.trivial_engine import TrivialEngine

        app = TrivialEngine()
    else:
        from saga.coordinator.gateway.app import GatewayConfig, create_app

        app = create_app(GatewayConfig(engines=(engine_url,), preset=preset))
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="auto", http="auto", log_level="warning",
        access_log=False, lifespan="on", timeout_graceful_shutdown=2))
    if profile is None:
        server.run()
        return
    import cProfile
    import signal

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the SIGTERM it caught once it has shut down; exit through `finally`.
    signal.signal(signal.SIGTERM, _exit)
    prof = cProfile.Profile(time.process_time)  # CPU time: the cores are shared
    prof.enable()
    try:
        server.run()
    finally:
        prof.disable()
        prof.dump_stats(profile)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m saga.coordinator.gateway.bench",
                                description="Serve one side of `saga gateway bench`.")
    p.add_argument("--port", type=int, required=True)
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--engine-only", action="store_true", help="serve the trivial engine")
    side.add_argument("--gateway", metavar="ENGINE_URL", help="serve the gateway before it")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--profile", metavar="FILE", help="write the gateway's cProfile stats here")
    a = p.parse_args(argv)
    _serve(a.port, None if a.engine_only else a.gateway, a.preset, a.profile)


if __name__ == "__main__":
    main()
