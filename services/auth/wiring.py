"""Authentication built from Settings: the server interceptor every replica installs first."""

from __future__ import annotations

from pathlib import Path

from services.auth.identity import PublicKeys, TokenVerifier
from services.auth.interceptor import HEALTH_METHODS, REFLECTION_METHODS, AuthInterceptor
from services.auth.keys import JWKS_FILE, has_development_key, load_jwks
from services.server.config import MissingSetting, Settings, UnsafeSetting


def load_keys(settings: Settings) -> PublicKeys:
    """The verifying keys from `auth_keys_dir`/jwks.json; production refuses development keys."""
    path = Path(settings.auth_keys_dir) / JWKS_FILE
    if not path.is_file():
        raise MissingSetting(
            f"no JWKS at {path}: set RIDEMESH_AUTH_KEYS_DIR to the directory holding {JWKS_FILE} "
            "(`ridemesh up` and `ridemesh token` create a development one)"
        )
    keys = load_jwks(path)
    if settings.production and has_development_key(keys):
        raise UnsafeSetting(
            f"production mode refuses the development key in {path} "
            "(RIDEMESH_AUTH_KEYS_DIR must hold the production JWKS)"
        )
    return keys


def open_methods(settings: Settings) -> frozenset[str]:
    """Health is always open (Envoy's health checks carry no token); reflection by setting."""
    if settings.production and settings.open_reflection:
        raise UnsafeSetting(
            "production mode refuses open reflection: set RIDEMESH_OPEN_REFLECTION=0"
        )
    if settings.open_reflection:
        return frozenset({HEALTH_METHODS, REFLECTION_METHODS})
    return frozenset({HEALTH_METHODS})


def verifier(settings: Settings) -> TokenVerifier:
    """The token verifier for this process's issuer, audience and keys."""
    return TokenVerifier(
        load_keys(settings),
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        leeway_s=settings.auth_leeway_s,
    )


def auth_interceptor(settings: Settings) -> AuthInterceptor:
    """The interceptor `serve` installs before domain-error mapping."""
    methods = open_methods(settings)
    return AuthInterceptor(verifier(settings).verify, open_methods=methods)
