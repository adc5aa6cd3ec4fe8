"""Helpers for tests and examples: a coordinator on loopback, driven with asyncio.run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from saga.coordinator.client import CoordinatorClient
from saga.coordinator.core import CoordinatorCore
from saga.coordinator.server import CoordinatorServer, ServerConfig

T = TypeVar("T")
__all__ = ["TOKEN", "coordinator", "run"]
TOKEN = "test-secret"


def run(coro_fn: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
    """Run an async test body with a hard time limit."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout_s)
    return asyncio.run(bounded())


@asynccontextmanager
async def coordinator(core: CoordinatorCore | None = None, **config: Any
                      ) -> AsyncIterator[tuple[CoordinatorServer, CoordinatorClient]]:
    """A started coordinator on 127.0.0.1 (free port) and a client holding the right token."""
    server = CoordinatorServer(ServerConfig(token=TOKEN, **config), core)
    address = await server.start()
    client = CoordinatorClient(address, TOKEN, retry_s=2.0)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()
