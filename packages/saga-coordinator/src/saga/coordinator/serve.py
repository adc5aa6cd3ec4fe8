"""Run one coordinator in this process until stopped: ``python -m saga.coordinator``.

The shared secret comes from ``$SAGA_COORDINATOR_TOKEN`` (never the command line, which other
users can read). The first line on stdout is ``listening on HOST:PORT``, so a parent process that
asked for port 0 learns the port. ``--tls-cert``/``--tls-key`` serve TLS; ``--tls-client-ca``
also requires client certificates (mutual TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import sys

from saga.coordinator.core import DEFAULT_PRESET
from saga.coordinator.server import CoordinatorServer, ServerConfig
from saga.policy.errors import SagaError

__all__ = ["TOKEN_ENV", "main", "serve"]

TOKEN_ENV = "SAGA_COORDINATOR_TOKEN"


async def serve(config: ServerConfig, metrics_port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    server = CoordinatorServer(config)
    address = await server.start()
    if config.tls_cert is None and not _is_local(config.host):
        print(f"warning: serving plaintext on {config.host}: the token crosses the network "
              "unencrypted; give --tls-cert and --tls-key", file=sys.stderr, flush=True)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=config.host, registry=server.metrics.registry)
    print(f"listening on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def _is_local(host: str) -> bool:
    """Whether clients can reach ``host`` only from this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saga.coordinator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help="the preset whose policies the coordinator runs (saga show presets)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate (chain) to serve TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", default=None,
                        help="PEM CA: require client certificates it signed (mutual TLS)")
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"error: set ${TOKEN_ENV} to the shared secret workers and clients use",
              file=sys.stderr)
        return 2
    try:
        config = ServerConfig(token=token, host=args.host, port=args.port, preset=args.preset,
                              tls_cert=args.tls_cert, tls_key=args.tls_key,
                              tls_client_ca=args.tls_client_ca)
        asyncio.run(serve(config, args.metrics_port))
    except SagaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
