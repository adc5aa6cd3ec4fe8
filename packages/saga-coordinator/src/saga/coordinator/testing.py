"""Helpers for tests and examples: a coordinator on loopback, driven with asyncio.run, and the
one rule for tests that start Ray (:func:`ray_skip_reason`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from saga.coordinator.client import CoordinatorClient
from saga.coordinator.core import CoordinatorCore
from saga.coordinator.server import CoordinatorServer, ServerConfig
from saga.coordinator.tls import ClientTLS

T = TypeVar("T")
__all__ = ["NETNS_ENV", "TOKEN", "coordinator", "ray_skip_reason", "run"]
TOKEN = "test-secret"
NETNS_ENV = "SAGA_TEST_NETNS"
"""Set by the repository's root conftest.py: ``private`` when the test run moved itself into a
network namespace of its own with only ``lo``; ``unavailable: <why>`` or ``off`` otherwise."""


def ray_skip_reason() -> str | None:
    """Why a test that starts Ray must not run here, or None when it may.

    Tests may send traffic only to loopback. Only inside the run's private network namespace is
    that certain for Ray: outside it, even with every Ray process on 127.0.0.1 (see
    :func:`saga.coordinator.cluster.start_ray`), Ray's dashboard process probes cloud metadata
    services (HTTP to 169.254.169.254 and a DNS lookup of metadata.google.internal) whatever
    the node address, and Ray has no setting that stops it.
    """
    state = os.environ.get(NETNS_ENV, "off")
    if state == "private":
        return None
    return (f"starts Ray, which keeps to loopback only in the test run's private network "
            f"namespace; {NETNS_ENV}={state}")


def run(coro_fn: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
    """Run an async test body with a hard time limit."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout_s)
    return asyncio.run(bounded())


@asynccontextmanager
async def coordinator(core: CoordinatorCore | None = None, *, tls: ClientTLS | None = None,
                      **config: Any
                      ) -> AsyncIterator[tuple[CoordinatorServer, CoordinatorClient]]:
    """A started coordinator on 127.0.0.1 (free port) and a client holding the right token
    (over TLS with ``tls``; the server's TLS files come in ``config``)."""
    server = CoordinatorServer(ServerConfig(token=TOKEN, **config), core)
    address = await server.start()
    client = CoordinatorClient(address, TOKEN, retry_s=2.0, tls=tls)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()
