"""Rebuilds a grpc method handler around a wrapped behaviour: the one place interceptors do it."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

Handler = Callable[..., Any]
Deserializer = Callable[[bytes], Any]
# Turns a request's bytes into its message, given the method's deserializer (or raises).
Decode = Callable[[Deserializer, bytes], Any]

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def rewrap(
    handler: Any, wrap: Callable[[Handler], Handler], *, decode: Decode | None = None
) -> Any:
    """The same handler (kind, serializers) with its behaviour function passed through `wrap`.

    With `decode`, a method that takes one request gets its bytes from grpc and decodes them
    itself (inside `wrap`), so a decoding failure can raise what the caller chooses."""
    for kind, factory in _KINDS:
        method = getattr(handler, kind)
        if method is None:
            continue
        deserializer = handler.request_deserializer
        if decode is not None and deserializer is not None and kind.startswith("unary_"):
            method = _decoding(method, deserializer, decode, streaming=kind == "unary_stream")
            deserializer = None
        return factory(
            wrap(method),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _decoding(
    method: Handler, deserializer: Deserializer, decode: Decode, streaming: bool
) -> Handler:
    def message(raw: Any) -> Any:
        return decode(deserializer, raw) if isinstance(raw, bytes) else raw

    async def unary(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        return await method(message(raw), context)

    async def stream(raw: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for response in method(message(raw), context):
            yield response

    return stream if streaming else unary


async def stream_responses(
    method: Handler, request: Any, context: aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    """Iterates a streaming handler written either as an async generator or as a coroutine that
    calls context.write()."""
    if inspect.isasyncgenfunction(method):
        async for response in method(request, context):
            yield response
    else:
        await method(request, context)
