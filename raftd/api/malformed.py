"""Bytes that do not parse as the method's request are the caller's fault: INVALID_ARGUMENT, naming what
was expected, where gRPC answered UNKNOWN ("Unexpected DecodeError"), which reads as the server's fault.

The services are registered through RefusingMalformed, which wraps each method's handler once, at
registration: its deserializer turns a DecodeError into a Malformed value, and its behaviour answers that
value (or, on a stream, the first such message) with the status. No interceptor runs on every call.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class Malformed:
    """A request that did not parse; handed to the behaviour instead of raising inside gRPC."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class RefusingMalformed:
    """Stands in for the server in the generated add_*Servicer_to_server calls."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The generated code registers each method twice; add_registered_method_handlers has them all."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        guarded = {name: _guarded(handler, f"{service}/{name}") for name, handler in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        self.server.add_registered_method_handlers(service, guarded)  # type: ignore[attr-defined]


def _refusal(method: str, request: Malformed) -> str:
    return f"the request is not a valid message for {method}: {request.error}"


def _guarded(typed: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    handler: Any = typed  # grpc-stubs types the behaviours as the threaded server's
    parse: Callable[[bytes], Any] = handler.request_deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as e:
            return Malformed(str(e))

    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if type(request) is Malformed:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request))
            yield request

    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if type(request) is Malformed:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request))
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
    if handler.unary_stream is not None:
        producer = handler.unary_stream
        if not inspect.isasyncgenfunction(producer):
            raise TypeError(f"{method}: a server-streaming handler must be an async generator")

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if type(request) is Malformed:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request))
            async for response in producer(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
    if handler.stream_unary is not None:
        consumer = handler.stream_unary

        async def stream_unary(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            return await consumer(checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
    both = handler.stream_stream
    if inspect.isasyncgenfunction(both):
        raise TypeError(f"{method}: a bidirectional handler here answers with context.write()")

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await both(checked(requests, context), context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
