"""Domain exceptions, and the one interceptor that turns them into gRPC status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio


class DomainError(Exception):
    """Raised by domain code; its message is shown to the caller as the status message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


Handler = Callable[..., Any]


class DomainErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps DomainError raised by any servicer method to its status code and message."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None
        # Requests that come alone are decoded here rather than by grpc, so bytes that are not the
        # message are INVALID_ARGUMENT (grpc itself would answer UNKNOWN).
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(_decoding(handler.unary_unary, handler.request_deserializer)),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(_decoding_stream(handler.unary_stream, handler.request_deserializer)),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _decode(deserializer: Callable[[bytes], Any] | None, raw: Any) -> Any:
    if deserializer is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not the message
        raise InvalidArgument(
            f"the request is not a valid protobuf message of this method ({exc})"
        ) from exc


def _decoding(method: Handler, deserializer: Callable[[bytes], Any] | None) -> Handler:
    async def handler(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        return await method(_decode(deserializer, raw), context)

    return handler


def _decoding_stream(method: Handler, deserializer: Callable[[bytes], Any] | None) -> Handler:
    async def handler(raw: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for response in method(_decode(deserializer, raw), context):
            yield response

    return handler


def _wrap_unary(method: Handler) -> Handler:
    async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(request, context)
        except DomainError as exc:
            await context.abort(exc.code, str(exc))

    return wrapper


def _wrap_stream(method: Handler) -> Handler:
    async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in method(request, context):
                yield response
        except DomainError as exc:
            await context.abort(exc.code, str(exc))

    return wrapper
