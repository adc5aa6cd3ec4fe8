"""A trivial OpenAI-shaped engine: answers at once, for measuring the gateway's own overhead.

It speaks the part of vLLM's OpenAI server the gateway uses (``/v1/chat/completions``,
``/v1/completions`` with and without SSE streaming, ``/v1/models``, ``/health``, Prometheus
``/metrics`` with vLLM's load metric names) and does no inference: a fixed short answer whose
usage reports the prompt's length and, for a prompt it has seen before, that prompt as cached.
It is a plain ASGI callable, so the time it adds is as small as Python allows. ``saga gateway
bench`` and the gateway's unit tests use it; every test of serving uses real vLLM engines.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["TrivialEngine"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


class TrivialEngine:
    """An ASGI app; ``requests`` counts what it served, ``seen`` the last request bodies."""

    def __init__(self, model: str = "trivial", stream_chunks: int = 3,
                 delay_s: float = 0.0) -> None:
        self.model = model
        self.stream_chunks = stream_chunks
        self.delay_s = delay_s
        self.most_running = 0
        self.requests = 0
        self.running = 0
        self.seen: list[dict[str, Any]] = []
        self._prompts: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            await _reply(send, 200, b"{}")
        elif method == "GET" and path == "/metrics":
            text = (f"vllm:num_requests_running{{model_name=\"{self.model}\"}} {self.running}\n"
                    f"vllm:num_requests_waiting{{model_name=\"{self.model}\"}} 0\n"
                    f"vllm:kv_cache_usage_perc{{model_name=\"{self.model}\"}} 0.0\n")
            await _reply(send, 200, text.encode(), [(b"content-type", b"text/plain")])
        elif method == "GET" and path == "/v1/models":
            await _reply(send, 200, json.dumps({"object": "list", "data": [
                {"id": self.model, "object": "model", "owned_by": "saga"}]}).encode())
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            await self._complete(path, receive, send)
        else:
            await _reply(send, 404, b'{"error": {"message": "not found"}}')

    async def _complete(self, path: str, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        body = json.loads(raw)
        self.requests += 1
        if self.delay_s > 0:  # a busy engine, for queueing tests
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            await asyncio.sleep(self.delay_s)
            self.running -= 1
        self.seen = [*self.seen[-63:], body]
        prompt = json.dumps(body.get("messages", body.get("prompt")), sort_keys=True)
        cached = len(prompt) // 4 if prompt in self._prompts else 0
        self._prompts.add(prompt)
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 2,
                 "total_tokens": len(prompt) // 4 + 2,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        chat = path.endswith("chat/completions")
        created = int(time.time())
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": "ok"},
                       "finish_reason": "stop"} if chat else
                      {"index": 0, "text": "ok", "finish_reason": "stop"})
            out = {"id": "cmpl-trivial", "object": "chat.completion" if chat else
                   "text_completion", "created": created, "model": self.model,
                   "choices": [choice], "usage": usage}
            await _reply(send, 200, json.dumps(out).encode())
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        for i in range(self.stream_chunks):
            delta = {"index": 0, "delta": {"content": f"t{i}"}} if chat else \
                {"index": 0, "text": f"t{i}"}
            chunk = {"id": "cmpl-trivial", "object": "chat.completion.chunk",
                     "created": created, "model": self.model, "choices": [delta]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(chunk).encode() + b"\n\n"})
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"id": "cmpl-trivial", "object": "chat.completion.chunk", "created": created,
                    "model": self.model, "choices": [], "usage": usage}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(last).encode() + b"\n\n"})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _reply(send: Send, status: int, body: bytes,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or _JSON})
    await send({"type": "http.response.body", "body": body})
