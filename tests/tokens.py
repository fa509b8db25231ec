"""Test tokens: a development key pair in a test directory, tokens minted with it, and the
interceptor a test server installs to verify them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpc import aio

from services.auth.identity import Role, TokenVerifier
from services.auth.interceptor import AuthInterceptor
from services.auth.keys import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DevKeys,
    ensure_dev_keys,
    load_jwks,
    mint_token,
)
from services.auth.tokens import bearer_channel

OPS = "ops-test"
# Call metadata, as `bearer` builds it.
Metadata = tuple[tuple[str, str], ...]


def make_keys(directory: Path) -> DevKeys:
    """A development key pair under `directory` (reused when already there)."""
    return ensure_dev_keys(directory)


def token(keys: DevKeys, sub: str = OPS, role: Role | str = Role.OPS, ttl_s: int = 3600) -> str:
    """A token for `sub` in `role`, signed with the test keys."""
    return mint_token(keys.private_pem(), keys.kid, sub=sub, role=Role(role), ttl_s=ttl_s)


def auth_env(keys: DevKeys) -> dict[str, str]:
    """Environment for a service process that verifies tokens signed with `keys`."""
    return {"RIDEMESH_AUTH_KEYS_DIR": str(keys.directory)}


def server_auth(keys: DevKeys) -> AuthInterceptor:
    """The interceptor a test server installs, verifying tokens signed with `keys`."""
    verifier = TokenVerifier(load_jwks(keys.jwks_path), issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
    return AuthInterceptor(verifier.verify)


def ops_channel(keys: DevKeys, target: str, **kwargs: Any) -> aio.Channel:
    """A plaintext channel to `target` whose calls carry an ops token (unless they bring one)."""
    return bearer_channel(target, token(keys), **kwargs)


def bearer(value: str) -> Metadata:
    """Call metadata naming the caller of one call."""
    return (("authorization", f"Bearer {value}"),)
