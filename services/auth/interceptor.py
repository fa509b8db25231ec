"""The server interceptor that verifies every call's bearer token and exposes the caller."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from services.auth.identity import Identity
from services.domain.errors import Unauthenticated
from services.server.handlers import Handler, rewrap

# Entries ending in "/" or "." are prefixes (a whole service or package); others are exact names.
HEALTH_METHODS = "/grpc.health.v1.Health/"
REFLECTION_METHODS = "/grpc.reflection."
DEFAULT_OPEN_METHODS = frozenset({HEALTH_METHODS, REFLECTION_METHODS})
_BEARER = "bearer "

Verifier = Callable[[str | None], Identity]

_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("ridemesh_identity")


def current_identity() -> Identity:
    """The verified caller of the RPC being handled; Unauthenticated outside one."""
    try:
        return _identity.get()
    except LookupError:
        raise Unauthenticated("no verified caller for this call") from None


def is_open(method: str, open_methods: frozenset[str]) -> bool:
    """True when `method` ("/pkg.Service/Method") may be called without a token."""
    if method in open_methods:
        return True
    return any(m.endswith(("/", ".")) and method.startswith(m) for m in open_methods)


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token from `authorization: Bearer <jwt>`; None when absent, Unauthenticated if odd."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value.lower().startswith(_BEARER):
        raise Unauthenticated("authorization metadata is not 'Bearer <jwt>'")
    return value[len(_BEARER) :].strip() or None


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Verifies the bearer token of every call except `open_methods`; aborts UNAUTHENTICATED."""

    def __init__(
        self, verifier: Verifier, *, open_methods: frozenset[str] = DEFAULT_OPEN_METHODS
    ) -> None:
        self._verifier = verifier
        self._open_methods = open_methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or is_open(handler_call_details.method, self._open_methods):
            return handler
        # Verified once here, before any handler code runs; the wrapper only applies the result.
        outcome = self._check(handler_call_details)
        return rewrap(handler, lambda method: _wrap(method, outcome))

    def _check(self, details: grpc.HandlerCallDetails) -> Identity | Unauthenticated:
        try:
            token = bearer_token(details.invocation_metadata)
            return self._verifier(token)
        except Unauthenticated as exc:
            return exc


def _wrap(method: Handler, outcome: Identity | Unauthenticated) -> Handler:
    if inspect.isasyncgenfunction(method):
        return _wrap_generator(method, outcome)
    return _wrap_coroutine(method, outcome)


def _wrap_coroutine(method: Handler, outcome: Identity | Unauthenticated) -> Handler:
    # Also covers streaming handlers written as coroutines that call context.write().
    async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(outcome, Unauthenticated):
            await context.abort(outcome.code, str(outcome))
        # Each RPC runs in its own task with its own context, so the value dies with the call.
        _identity.set(outcome)
        return await method(request, context)

    return wrapper


def _wrap_generator(method: Handler, outcome: Identity | Unauthenticated) -> Handler:
    async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(outcome, Unauthenticated):
            await context.abort(outcome.code, str(outcome))
        # Set in the task that iterates this generator, which also iterates the servicer's
        # generator below, so every step of the handler sees it.
        _identity.set(outcome)
        async for response in method(request, context):
            yield response

    return wrapper
