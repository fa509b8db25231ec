"""Development keys on disk, JWKS loading and minting: files, modes, reuse and refusals."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.auth.identity import Role
from services.auth.keys import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DEV_KID_PREFIX,
    ensure_dev_keys,
    has_development_key,
    is_development_kid,
    jwks_json,
    load_jwks,
    load_public_pem,
    mint_token,
    parse_jwks,
)


def test_creates_private_public_and_jwks(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path / "keys")
    assert stat.S_IMODE(keys.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700
    assert keys.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    (entry,) = json.loads(keys.jwks_path.read_text())["keys"]
    assert entry["kid"] == keys.kid
    assert entry["alg"] == "ES256"
    assert entry["crv"] == "P-256"
    assert "d" not in entry  # the private part never reaches the JWKS


def test_development_key_is_marked(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    assert keys.kid.startswith(DEV_KID_PREFIX)
    assert is_development_kid(keys.kid)
    assert has_development_key(load_jwks(keys.jwks_path))
    assert not is_development_kid("prod-2025-01")


def test_second_run_reuses_the_key(tmp_path: Path) -> None:
    first = ensure_dev_keys(tmp_path)
    private = first.private_path.read_bytes()
    second = ensure_dev_keys(tmp_path)
    assert second.kid == first.kid
    assert second.private_path.read_bytes() == private


def test_lost_public_files_are_rebuilt_from_the_private_key(tmp_path: Path) -> None:
    first = ensure_dev_keys(tmp_path)
    jwks = first.jwks_path.read_text()
    first.jwks_path.unlink()
    first.public_path.unlink()
    second = ensure_dev_keys(tmp_path)
    assert second.jwks_path.read_text() == jwks
    assert second.public_path.exists()


def test_different_directories_get_different_keys(tmp_path: Path) -> None:
    assert ensure_dev_keys(tmp_path / "a").kid != ensure_dev_keys(tmp_path / "b").kid


def test_minted_token_carries_the_claims(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    token = mint_token(keys.private_pem(), keys.kid, sub="d-1", role=Role.DRIVER, ttl_s=60, now=1e9)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["kid"] == keys.kid
    assert claims["sub"] == "d-1"
    assert claims["role"] == "driver"
    assert claims["iss"] == DEV_ISSUER
    assert claims["aud"] == DEV_AUDIENCE
    assert claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(("sub", "ttl_s"), [("", 60), ("d-1", 0), ("d-1", -5)])
def test_mint_refuses_empty_sub_and_non_positive_ttl(tmp_path: Path, sub: str, ttl_s: int) -> None:
    keys = ensure_dev_keys(tmp_path)
    with pytest.raises(ValueError, match="must"):
        mint_token(keys.private_pem(), keys.kid, sub=sub, role=Role.RIDER, ttl_s=ttl_s)


def test_public_pem_loads_under_the_given_kid(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    loaded = load_public_pem(keys.public_path, "k1")
    assert list(loaded) == ["k1"]
    assert jwks_json(loaded) != ""


def test_rsa_keys_round_trip_through_jwks() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (entry,) = json.loads(jwks_json({"r1": key}))["keys"]
    assert entry["alg"] == "RS256"
    assert isinstance(parse_jwks(jwks_json({"r1": key}))["r1"], rsa.RSAPublicKey)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not a JWKS"),
        ('{"no": "keys"}', "not a JWKS"),
        ('{"keys": [{"kty": "EC"}]}', "without a 'kid'"),
    ],
)
def test_bad_jwks_is_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_jwks(text)


def test_keys_es256_cannot_use_are_rejected(tmp_path: Path) -> None:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    path = tmp_path / "p384.pem"
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        load_public_pem(path, "k")
