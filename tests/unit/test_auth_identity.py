"""Token verification: the one way in, and every way a token is turned away, each named."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from services.auth.identity import (
    Identity,
    PublicKeys,
    Role,
    TokenVerifier,
    verify_token,
)
from services.auth.keys import DevKeys, ensure_dev_keys, load_jwks, mint_token
from services.domain.errors import Unauthenticated

ISSUER = "ridemesh-test"
AUDIENCE = "ridemesh"


@pytest.fixture(scope="module")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> DevKeys:
    return ensure_dev_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def keys(dev_keys: DevKeys) -> PublicKeys:
    return load_jwks(dev_keys.jwks_path)


@pytest.fixture(scope="module")
def private_key(dev_keys: DevKeys) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(dev_keys.private_pem(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "driver-7",
        "role": "driver",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: Any, kid: str | None, alg: str = "ES256", **overrides: Any) -> str:
    return _sign_with(key, kid, overrides, alg)


def _sign_with(key: Any, kid: str | None, overrides: dict[str, Any], alg: str = "ES256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(_claims(**overrides), key, algorithm=alg, headers=headers)


def _verify(token: str | None, keys: PublicKeys) -> Identity:
    return verify_token(token, keys, issuer=ISSUER, audience=AUDIENCE, leeway_s=5)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def test_valid_token_gives_the_identity(dev_keys: DevKeys, keys: PublicKeys) -> None:
    token = mint_token(
        dev_keys.private_pem(),
        dev_keys.kid,
        sub="rider-1",
        role=Role.RIDER,
        ttl_s=60,
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    assert _verify(token, keys) == Identity("rider-1", Role.RIDER)


def test_verifier_object_uses_its_settings(dev_keys: DevKeys, keys: PublicKeys) -> None:
    token = mint_token(dev_keys.private_pem(), dev_keys.kid, sub="ops-1", role=Role.OPS, ttl_s=60)
    verifier = TokenVerifier(keys, issuer="ridemesh-dev", audience="ridemesh")
    assert verifier.verify(token) == Identity("ops-1", Role.OPS)


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(keys: PublicKeys, token: str | None) -> None:
    with pytest.raises(Unauthenticated, match="missing bearer token"):
        _verify(token, keys)


@pytest.mark.parametrize("token", ["abc", "a.b.c", "eyJ.eyJ.sig", "é.é.é", "...."])
def test_malformed_token(keys: PublicKeys, token: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed token"):
        _verify(token, keys)


def test_expired_token(private_key: Any, dev_keys: DevKeys, keys: PublicKeys) -> None:
    old = int(time.time()) - 3600
    token = _sign(private_key, dev_keys.kid, iat=old, exp=old + 60)
    with pytest.raises(Unauthenticated, match="token expired"):
        _verify(token, keys)


def test_expiry_within_leeway_is_accepted(
    private_key: Any, dev_keys: DevKeys, keys: PublicKeys
) -> None:
    now = int(time.time())
    token = _sign(private_key, dev_keys.kid, iat=now - 60, exp=now - 2)
    assert _verify(token, keys).sub == "driver-7"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_from_the_future_is_not_yet_valid(
    private_key: Any, dev_keys: DevKeys, keys: PublicKeys, claim: str
) -> None:
    later = int(time.time()) + 600
    token = _sign_with(private_key, dev_keys.kid, {claim: later, "exp": later + 600})
    with pytest.raises(Unauthenticated, match="not yet valid"):
        _verify(token, keys)


def test_wrong_issuer(private_key: Any, dev_keys: DevKeys, keys: PublicKeys) -> None:
    with pytest.raises(Unauthenticated, match="wrong issuer"):
        _verify(_sign(private_key, dev_keys.kid, iss="someone-else"), keys)


def test_wrong_audience(private_key: Any, dev_keys: DevKeys, keys: PublicKeys) -> None:
    with pytest.raises(Unauthenticated, match="wrong audience"):
        _verify(_sign(private_key, dev_keys.kid, aud="payments"), keys)


def test_forged_signature(dev_keys: DevKeys, keys: PublicKeys) -> None:
    # Same kid, another key: what a forger without the private key can do.
    forger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        _verify(_sign(forger, dev_keys.kid), keys)


def test_altered_claims_break_the_signature(
    private_key: Any, dev_keys: DevKeys, keys: PublicKeys
) -> None:
    header, _, signature = _sign(private_key, dev_keys.kid).split(".")
    forged = _b64(json.dumps(_claims(role="ops")).encode())
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        _verify(f"{header}.{forged}.{signature}", keys)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(dev_keys: DevKeys, keys: PublicKeys, alg: str) -> None:
    token = _unsigned({"alg": alg, "typ": "JWT", "kid": dev_keys.kid}, _claims()) + "."
    with pytest.raises(Unauthenticated, match=r"algorithm .* is not accepted"):
        _verify(token, keys)


def test_hs256_with_the_public_key_as_secret_is_refused(
    dev_keys: DevKeys, keys: PublicKeys
) -> None:
    # The classic algorithm confusion: an HMAC "signed" with the published public key.
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": dev_keys.kid}, _claims())
    secret = dev_keys.public_path.read_bytes()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthenticated, match="'HS256' is not accepted"):
        _verify(f"{signing_input}.{_b64(mac)}", keys)


def test_algorithm_must_match_the_key(private_key: Any, dev_keys: DevKeys) -> None:
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    keys = {dev_keys.kid: rsa_public}
    with pytest.raises(Unauthenticated, match="does not match key"):
        _verify(_sign(private_key, dev_keys.kid), keys)


def test_rs256_tokens_verify_with_rsa_keys() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = _sign(private, "r1", alg="RS256", role="service", sub="ride-service")
    assert _verify(token, {"r1": private.public_key()}) == Identity("ride-service", Role.SERVICE)


def test_unknown_kid(private_key: Any, keys: PublicKeys) -> None:
    with pytest.raises(Unauthenticated, match="unknown key id 'rotated-away'"):
        _verify(_sign(private_key, "rotated-away"), keys)


def test_missing_kid(private_key: Any, keys: PublicKeys) -> None:
    with pytest.raises(Unauthenticated, match="no 'kid' header"):
        _verify(_sign(private_key, None), keys)


@pytest.mark.parametrize("claim", ["sub", "role", "exp", "iss", "aud"])
def test_missing_claim(private_key: Any, dev_keys: DevKeys, keys: PublicKeys, claim: str) -> None:
    with pytest.raises(Unauthenticated, match=f"no '{claim}' claim"):
        _verify(_sign_with(private_key, dev_keys.kid, {claim: None}), keys)


@pytest.mark.parametrize("sub", ["", "x" * 129, "d\x00river", "line\nbreak", 42, ["a"]])
def test_invalid_sub(private_key: Any, dev_keys: DevKeys, keys: PublicKeys, sub: object) -> None:
    with pytest.raises(Unauthenticated, match="invalid 'sub' claim"):
        _verify(_sign(private_key, dev_keys.kid, sub=sub), keys)


@pytest.mark.parametrize("role", ["admin", "DRIVER", "", 1, ["driver"], {"r": 1}])
def test_invalid_role(private_key: Any, dev_keys: DevKeys, keys: PublicKeys, role: object) -> None:
    with pytest.raises(Unauthenticated, match="invalid 'role' claim"):
        _verify(_sign(private_key, dev_keys.kid, role=role), keys)


@given(
    sub=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=128,
    ).filter(str.isprintable),
    role=st.sampled_from(list(Role)),
)
def test_any_valid_sub_and_role_round_trip(dev_keys: DevKeys, sub: str, role: Role) -> None:
    keys = load_jwks(dev_keys.jwks_path)
    token = mint_token(
        dev_keys.private_pem(),
        dev_keys.kid,
        sub=sub,
        role=role,
        ttl_s=60,
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    assert _verify(token, keys) == Identity(sub, role)


@given(garbage=st.text(max_size=300))
def test_garbage_is_only_ever_unauthenticated(dev_keys: DevKeys, garbage: str) -> None:
    keys = load_jwks(dev_keys.jwks_path)
    with pytest.raises(Unauthenticated):
        _verify(garbage, keys)


@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-"))
def test_any_changed_character_is_refused(
    dev_keys: DevKeys, position: int, replacement: str
) -> None:
    keys = load_jwks(dev_keys.jwks_path)
    token = mint_token(
        dev_keys.private_pem(),
        dev_keys.kid,
        sub="d",
        role=Role.DRIVER,
        ttl_s=60,
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    index = position % len(token)
    if token[index] in (replacement, "."):
        return
    changed = token[:index] + replacement + token[index + 1 :]
    try:
        identity = _verify(changed, keys)
    except Unauthenticated:
        return
    # base64url's last character may carry unused bits; then the decoded bytes are unchanged.
    assert identity == Identity("d", Role.DRIVER)
