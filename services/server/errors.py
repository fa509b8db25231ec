"""The one interceptor that turns domain errors, and dependencies that are away, into gRPC status
codes and messages a person can act on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc import aio

from services.domain.errors import DomainError, InvalidArgument
from services.server.failures import unavailable
from services.server.handlers import Deserializer, Handler, rewrap

log = logging.getLogger(__name__)

Context = aio.ServicerContext[Any, Any]


class DomainErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps DomainError raised by any servicer method to its status code and message, and a
    failure of Redis, PostgreSQL or an upstream service to UNAVAILABLE naming it (never UNKNOWN
    with an address or a class name)."""

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
        if handler.unary_stream or handler.stream_stream:
            return rewrap(handler, _mapped_stream, decode=_decode)
        return rewrap(handler, _mapped_unary, decode=_decode)


def _decode(deserializer: Deserializer, raw: bytes) -> Any:
    try:
        return deserializer(raw)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not the message
        raise InvalidArgument(
            f"the request is not a valid protobuf message of this method ({exc})"
        ) from exc


def _mapped_unary(method: Handler) -> Handler:
    async def wrapper(request: Any, context: Context) -> Any:
        try:
            return await method(request, context)
        except Exception as exc:
            await _abort(exc, context)

    return wrapper


def _mapped_stream(method: Handler) -> Handler:
    async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in method(request, context):
                yield response
        except Exception as exc:
            await _abort(exc, context)

    return wrapper


async def _abort(exc: Exception, context: Context) -> NoReturn:
    """Ends the call with the status `exc` stands for; anything else goes up unchanged."""
    if isinstance(exc, DomainError):
        await context.abort(exc.code, str(exc))
    failure = unavailable(exc)
    if failure is None:
        raise exc  # a bug (or grpc's own abort): grpc reports it as it would have
    log.warning("answered UNAVAILABLE: %s (%s: %s)", failure, type(exc).__name__, exc)
    await context.abort(failure.code, str(failure))
