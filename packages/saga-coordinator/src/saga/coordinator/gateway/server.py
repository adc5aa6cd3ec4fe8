"""Run an ASGI app (the gateway, or the trivial engine) with uvicorn on loopback or a host.

:class:`ServerThread` serves in a thread of this process (tests, the overhead bench); it binds
before it returns, so its URL is live at once, and stops within seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from saga.coordinator.gateway.launch import free_port
from saga.policy.errors import SagaError

__all__ = ["ServerThread", "free_port"]


class ServerThread:
    """``app`` served by uvicorn in a daemon thread; ``url`` once started."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 log_level: str = "warning") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=self.port, log_level=log_level, access_log=False,
            lifespan="on", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name=f"uvicorn-{self.port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SagaError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
