"""The coordinator's gRPC method table, with requests parsed inside the handlers.

grpc's own deserializer hook turns bytes that are not the method's message into ``INTERNAL``
("Exception deserializing request"), which tells a client that the server broke. Here every
method takes raw bytes, checks the token first, then parses them with
:func:`saga.coordinator.validate.decode`, so undecodable bytes are the client's
``INVALID_ARGUMENT`` like any other malformed field (and counted in the rejection metrics).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from saga.coordinator._proto import saga_coordinator_pb2 as pb
from saga.coordinator.validate import InvalidField, decode

__all__ = ["SERVICE", "coordinator_handler"]

SERVICE = "saga.coordinator.v1.Coordinator"

_Unary = Callable[[Any, Any], Awaitable[Any]]
_Stream = Callable[[AsyncIterator[Any], Any], AsyncIterator[Any]]


def _unary(servicer: Any, behavior: _Unary, cls: Any) -> _Unary:
    async def handle(raw: bytes, context: Any) -> Any:
        await servicer._auth(context)
        try:
            request = decode(cls, raw)
        except InvalidField as exc:
            await servicer._fail(context, exc)
        return await behavior(request, context)
    return handle


def _stream(servicer: Any, behavior: _Stream, cls: Any) -> _Stream:
    async def handle(raw_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        await servicer._auth(context)

        async def requests() -> AsyncIterator[Any]:
            async for raw in raw_iterator:
                try:
                    message = decode(cls, raw)
                except InvalidField as exc:
                    await servicer._fail(context, exc)
                yield message

        async for reply in behavior(requests(), context):
            yield reply
    return handle


def coordinator_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """Every method of the Coordinator service (from the proto's descriptor) bound to
    ``servicer``'s coroutine of the same name, taking and returning raw bytes."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["Coordinator"].methods:
        request_cls = getattr(pb, method.input_type.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream(servicer, behavior, request_cls), response_serializer=serialize)
        elif not (method.client_streaming or method.server_streaming):
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(servicer, behavior, request_cls), response_serializer=serialize)
        else:  # the proto has no half-streaming method; a new one needs its wrapper here
            raise TypeError(f"{method.full_name}: half-streaming methods are not wrapped")
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
