"""The client side: a token source that re-mints before expiry, and an interceptor that sends it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grpc import aio

from services.auth.identity import Role
from services.auth.keys import PRIVATE_FILE, ensure_dev_keys, mint_token
from services.server.config import MissingSetting, Settings

SERVICE_SUB = "ride-service"
SERVICE_TTL_S = 3600
# A minted token is replaced when less than this fraction of its lifetime is left.
REFRESH_FRACTION = 0.2


class TokenSource:
    """A bearer token that stays valid: a fixed one, or one minted again before it expires."""

    def __init__(
        self,
        mint: Callable[[], str] | None = None,
        *,
        fixed: str = "",
        ttl_s: float = SERVICE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mint is None and not fixed:
            raise ValueError("a TokenSource needs a mint function or a fixed token")
        self._mint = mint
        self._token = fixed
        self._refresh_s = ttl_s * (1 - REFRESH_FRACTION)
        self._clock = clock
        self._minted_at = -float("inf")

    def token(self) -> str:
        """The current token, minted again when it is close to expiring."""
        if self._mint is not None and self._clock() - self._minted_at >= self._refresh_s:
            self._token = self._mint()
            self._minted_at = self._clock()
        return self._token


def service_tokens(settings: Settings) -> TokenSource:
    """RideService's token: RIDEMESH_SERVICE_TOKEN, or (development) minted with the dev key."""
    if settings.service_token:
        return TokenSource(fixed=settings.service_token)
    keys_dir = Path(settings.auth_keys_dir)
    if settings.production or not (keys_dir / PRIVATE_FILE).is_file():
        raise MissingSetting(
            "setting RIDEMESH_SERVICE_TOKEN is required (a `service` token for calls through "
            f"the mesh) unless the development key is in {keys_dir} outside production"
        )
    keys = ensure_dev_keys(keys_dir)
    pem = keys.private_pem()

    def mint() -> str:
        return mint_token(
            pem,
            keys.kid,
            sub=SERVICE_SUB,
            role=Role.SERVICE,
            ttl_s=SERVICE_TTL_S,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
        )

    return TokenSource(mint, ttl_s=SERVICE_TTL_S)


def _with_token(details: aio.ClientCallDetails, tokens: TokenSource) -> aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    if any(key == "authorization" for key, _ in metadata):
        return details  # the call names its own caller
    metadata.append(("authorization", f"Bearer {tokens.token()}"))
    return aio.ClientCallDetails(
        details.method,
        details.timeout,
        aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class _Bearer:
    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens


# grpc.aio files each interceptor under the first call kind it implements, so one class per kind.
class _UnaryUnary(_Bearer, aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._tokens), request)


class _UnaryStream(_Bearer, aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._tokens), request)


class _StreamUnary(_Bearer, aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self._tokens), requests)


class _StreamStream(_Bearer, aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_token(details, self._tokens), requests)


def bearer_interceptors(tokens: TokenSource | str) -> list[Any]:
    """Client interceptors adding `authorization: Bearer <token>` to every call on a channel
    that does not name its own caller."""
    source = tokens if isinstance(tokens, TokenSource) else TokenSource(fixed=tokens)
    return [_UnaryUnary(source), _UnaryStream(source), _StreamUnary(source), _StreamStream(source)]


def bearer_channel(
    target: str, tokens: TokenSource | str, *, more: Sequence[Any] = (), **kwargs: Any
) -> aio.Channel:
    """An insecure grpc.aio channel whose every call carries the bearer token (and passes through
    `more` interceptors, e.g. tracing)."""
    interceptors = [*bearer_interceptors(tokens), *more]
    return aio.insecure_channel(target, interceptors=interceptors, **kwargs)
