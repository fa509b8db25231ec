"""Rebuilds a grpc method handler around a wrapped behaviour: the one place interceptors do it."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

Handler = Callable[..., Any]


def rewrap(handler: Any, wrap: Callable[[Handler], Handler]) -> Any:
    """The same handler (kind, serializers) with its behaviour function passed through `wrap`."""
    for kind, factory in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        method = getattr(handler, kind)
        if method is not None:
            return factory(
                wrap(method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


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
