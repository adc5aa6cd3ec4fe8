"""`saga serve`: SAGA as an OpenAI-compatible gateway in front of several vLLM engines.

Starts N vLLM OpenAI servers running SAGA's scheduler (child processes on 127.0.0.1, or Ray
actors with ``--ray``), attaches to engines the user runs (``--engine-url``), and serves the
gateway (``saga.coordinator.gateway``) until SIGINT or SIGTERM, then stops the engines it
started. Point any OpenAI client at it and name the session with an ``X-Session-Id`` header or
``prompt_cache_key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from saga.cli.errors import user_errors
from saga.cli.render import console
from saga.coordinator.core import DEFAULT_PRESET
from saga.coordinator.gateway.app import GatewayConfig, create_app
from saga.coordinator.gateway.launch import EngineProcesses, EngineSpec, RayEngines
from saga.coordinator.gateway.tenants import load_api_keys
from saga.policy.errors import SagaConfigError
from saga.policy.presets import get_preset

app = typer.Typer(help="SAGA as an OpenAI-compatible gateway in front of vLLM engines.")

TOKEN_ENV = "SAGA_COORDINATOR_TOKEN"


@app.callback(invoke_without_command=True)
def serve(
    engines: Annotated[int | None, typer.Option(min=0, help="vLLM engines to start (default: "
                                                "2, or 0 with --engine-url).")] = None,
    model: Annotated[str, typer.Option(help="tiny, small (random models with a tokenizer) "
                                       "or a local Hugging Face model directory.")] = "tiny",
    preset: Annotated[str, typer.Option(help="Policy preset of the gateway's router and the "
                                        "engines' scheduler (saga show presets).")
                      ] = DEFAULT_PRESET,
    engine_url: Annotated[list[str] | None, typer.Option(
        "--engine-url", help="A running vLLM OpenAI server to route to (repeatable).")] = None,
    ray: Annotated[str | None, typer.Option(help="Start the engines as Ray actors on this "
                                            "Ray cluster (address).")] = None,
    coordinator: Annotated[str | None, typer.Option(help="Share this gRPC coordinator "
                                                    "(host:port) with other gateways; token "
                                                    f"in ${TOKEN_ENV}.")] = None,
    host: Annotated[str, typer.Option(help="Address the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    api_keys: Annotated[Path | None, typer.Option(help="File of `key tenant` lines (or JSON); "
                                                  "default $SAGA_API_KEYS; none: keys off.")
                        ] = None,
    kv_blocks: Annotated[int | None, typer.Option(min=2, help="KV pool per started engine, "
                                                  "in 32-token blocks.")] = None,
    max_num_seqs: Annotated[int, typer.Option(min=1, help="Requests an engine runs at once."
                                              )] = 8,
    log_dir: Annotated[Path | None, typer.Option(help="Engine logs (default: a temp dir)."
                                                 )] = None,
    kv_store: Annotated[Path | None, typer.Option(help="Node-local KV store every started "
                                                  "engine shares: a session the gateway moves "
                                                  "(re-home, steal, failover) loads its KV "
                                                  "from it instead of recomputing it.")
                        ] = None,
    kv_store_max_gb: Annotated[float, typer.Option(min=0.001, help="Size cap of --kv-store "
                                                   "in GiB (entries used longest ago go "
                                                   "first).")] = 4.0,
    start_timeout: Annotated[float, typer.Option(min=1, help="Seconds the started engines "
                                                 "get to answer /health.")] = 600.0,
) -> None:
    """Serve the gateway; stop with Ctrl-C (its engines stop with it)."""
    with user_errors():
        get_preset(preset)  # an unknown preset is named before anything starts
        urls = list(engine_url or [])
        n = engines if engines is not None else (0 if urls else 2)
        if n == 0 and not urls:
            raise SagaConfigError("nothing to route to: give --engines N (N >= 1) or "
                                  "--engine-url URL")
        _check_port(host, port)
        keys = load_api_keys(api_keys)
        token = os.environ.get(TOKEN_ENV, "")
        spec = EngineSpec(model=model, preset=preset, kv_blocks=kv_blocks,
                          max_num_seqs=max_num_seqs,
                          kv_store=None if kv_store is None else str(kv_store.absolute()),
                          kv_store_max_gb=kv_store_max_gb if kv_store is not None else None)
        config = GatewayConfig(("http://engines-not-started-yet",), preset, keys,
                               slots=max_num_seqs, coordinator=coordinator,
                               coordinator_token=token)  # checked before engines start
        asyncio.run(_run(spec, n, urls, ray, log_dir, config, host, port, start_timeout))


def _check_port(host: str, port: int) -> None:
    """Refuse a port already taken before any engine starts (they take minutes)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SagaConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose "
                                  "another --port or --host") from None


async def _run(spec: EngineSpec, n: int, urls: list[str], ray: str | None,
               log_dir: Path | None, base: GatewayConfig, host: str, port: int,
               start_timeout_s: float) -> None:
    """Start the engines, serve until a signal, stop the engines (also on failure)."""
    main = asyncio.current_task()
    stopping = False
    loop = asyncio.get_running_loop()

    def on_signal(*_: Any) -> None:
        if not stopping and main is not None:
            loop.call_soon_threadsafe(main.cancel)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    launcher: EngineProcesses | RayEngines | None = None
    try:
        if n:
            launcher = (RayEngines(n, spec, ray) if ray is not None
                        else EngineProcesses(n, spec, log_dir))
            console.print(f"starting {n} vLLM engine(s) ({spec.model}, preset {spec.preset})...")
            urls = urls + await launcher.start(timeout_s=start_timeout_s)
        config = dataclasses.replace(base, engines=tuple(urls))
        server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port,
                                               log_level="warning", access_log=False))
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            console.print(f"SAGA gateway on http://{host}:{port} ({len(urls)} engines: "
                          f"{', '.join(urls)}; preset {base.preset})", highlight=False,
                          soft_wrap=True)
        await task
    except asyncio.CancelledError:
        pass
    finally:
        stopping = True
        if launcher is not None:
            console.print("stopping the engines...")
            with contextlib.suppress(asyncio.CancelledError):
                await launcher.stop()
        for s, h in old.items():
            signal.signal(s, h)
