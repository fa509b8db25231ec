"""Authentication from Settings: keys, open methods, production refusals, the service token."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.auth.identity import Role, TokenVerifier
from services.auth.interceptor import HEALTH_METHODS, REFLECTION_METHODS
from services.auth.keys import ensure_dev_keys, load_jwks
from services.auth.tokens import SERVICE_SUB, TokenSource, service_tokens
from services.auth.wiring import auth_interceptor, load_keys, open_methods
from services.server.config import MissingSetting, Settings, UnsafeSetting


def _settings(keys_dir: Path, **changes: object) -> Settings:
    return Settings("redis://r", "postgresql://p", auth_keys_dir=str(keys_dir)).with_overrides(
        **changes
    )


def test_keys_come_from_the_jwks_in_the_keys_dir(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    assert set(load_keys(_settings(tmp_path))) == {keys.kid}


def test_a_missing_jwks_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(MissingSetting, match="RIDEMESH_AUTH_KEYS_DIR"):
        load_keys(_settings(tmp_path / "nowhere"))


def test_production_refuses_the_development_key(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path)
    with pytest.raises(UnsafeSetting, match="development key"):
        auth_interceptor(_settings(tmp_path, production=True, open_reflection=False))


def test_production_refuses_open_reflection(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSetting, match="RIDEMESH_OPEN_REFLECTION=0"):
        open_methods(_settings(tmp_path, production=True))


def test_health_is_always_open_and_reflection_by_setting(tmp_path: Path) -> None:
    assert open_methods(_settings(tmp_path)) == {HEALTH_METHODS, REFLECTION_METHODS}
    assert open_methods(_settings(tmp_path, open_reflection=False)) == {HEALTH_METHODS}


def test_a_token_source_mints_again_before_expiry() -> None:
    now = [0.0]
    minted: list[str] = []

    def mint() -> str:
        minted.append(f"t{len(minted)}")
        return minted[-1]

    source = TokenSource(mint, ttl_s=100, clock=lambda: now[0])
    assert source.token() == "t0"
    now[0] = 79.0
    assert source.token() == "t0"
    now[0] = 80.0  # 20 % of the lifetime left
    assert source.token() == "t1"


def test_the_fixed_service_token_wins(tmp_path: Path) -> None:
    assert service_tokens(_settings(tmp_path, service_token="abc")).token() == "abc"


def test_the_development_service_token_verifies_as_the_ride_service(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    settings = _settings(tmp_path)
    verifier = TokenVerifier(
        load_jwks(keys.jwks_path), settings.auth_issuer, settings.auth_audience
    )
    identity = verifier.verify(service_tokens(settings).token())
    assert (identity.sub, identity.role) == (SERVICE_SUB, Role.SERVICE)


def test_production_needs_a_service_token(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path)
    with pytest.raises(MissingSetting, match="RIDEMESH_SERVICE_TOKEN"):
        service_tokens(_settings(tmp_path, production=True))
