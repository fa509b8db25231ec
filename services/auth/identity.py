"""Who is calling: the verified identity behind a bearer token, and how a token is checked."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from services.domain.errors import Unauthenticated

VerifyingKey = EllipticCurvePublicKey | RSAPublicKey
# Key id -> public key; the token's `kid` header picks one.
PublicKeys = Mapping[str, VerifyingKey]

# Asymmetric only: accepting HS256 would let anyone holding the public key forge tokens, and
# `none` would accept unsigned ones (algorithm confusion).
ACCEPTED_ALGORITHMS = ("ES256", "RS256")
MAX_SUB_LENGTH = 128
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub", "role")
_ROLE_VALUES = frozenset({"driver", "rider", "ops", "service"})


class Role(enum.StrEnum):
    """What kind of caller a token speaks for."""

    DRIVER = "driver"
    RIDER = "rider"
    OPS = "ops"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller whose token verified: its id (`sub`) and role."""

    sub: str
    role: Role


@dataclass(frozen=True)
class TokenVerifier:
    """Checks tokens against fixed keys, issuer and audience; `verify` is the whole API."""

    keys: PublicKeys
    issuer: str
    audience: str
    leeway_s: float = 30.0

    def verify(self, token: str | None) -> Identity:
        """The identity in `token`, or Unauthenticated saying precisely what is wrong."""
        return verify_token(
            token, self.keys, issuer=self.issuer, audience=self.audience, leeway_s=self.leeway_s
        )


def key_algorithm(key: VerifyingKey) -> str:
    """The one algorithm a key may verify: ES256 for P-256 keys, RS256 for RSA keys."""
    if isinstance(key, RSAPublicKey):
        return "RS256"
    if key.curve.name != "secp256r1":
        raise ValueError(f"EC key on {key.curve.name}; ES256 needs P-256")
    return "ES256"


def verify_token(
    token: str | None,
    keys: PublicKeys,
    *,
    issuer: str,
    audience: str,
    leeway_s: float = 30.0,
) -> Identity:
    """Verify signature, expiry, issuer and audience, then read `sub` and `role`."""
    if not token:
        raise Unauthenticated("missing bearer token: send metadata 'authorization: Bearer <jwt>'")
    key, algorithm = _key_for(token, keys)
    claims = _decode(token, key, algorithm, issuer=issuer, audience=audience, leeway_s=leeway_s)
    return _identity(claims)


def _key_for(token: str, keys: PublicKeys) -> tuple[VerifyingKey, str]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"malformed token: {exc}") from None
    alg = header.get("alg")
    if alg not in ACCEPTED_ALGORITHMS:
        raise Unauthenticated(
            f"token algorithm {alg!r} is not accepted; only {', '.join(ACCEPTED_ALGORITHMS)}"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("token has no 'kid' header naming its signing key")
    key = keys.get(kid)
    if key is None:
        raise Unauthenticated(f"token signed with unknown key id {kid!r}")
    expected = key_algorithm(key)
    if alg != expected:
        # The key decides the algorithm, never the token: an RSA key must not verify ES256.
        raise Unauthenticated(f"token algorithm {alg} does not match key {kid!r} ({expected})")
    return key, expected


def _decode(
    token: str, key: VerifyingKey, algorithm: str, *, issuer: str, audience: str, leeway_s: float
) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer,
            audience=audience,
            leeway=leeway_s,
            # `sub` is checked below with our own rules and message.
            options={"require": list(REQUIRED_CLAIMS), "verify_sub": False},
        )
    except jwt.InvalidSignatureError:
        raise Unauthenticated("token signature does not verify (forged or altered)") from None
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthenticated("token not yet valid (nbf or iat is in the future)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise Unauthenticated(f"wrong issuer: token is not issued by {issuer!r}") from None
    except jwt.InvalidAudienceError:
        raise Unauthenticated(f"wrong audience: token is not for {audience!r}") from None
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"malformed token: {exc}") from None
    return claims


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or not sub.isprintable():
        raise Unauthenticated(
            f"invalid 'sub' claim: want 1 to {MAX_SUB_LENGTH} printable characters"
        )
    role = claims["role"]
    if not isinstance(role, str) or role not in _ROLE_VALUES:
        allowed = ", ".join(r.value for r in Role)
        raise Unauthenticated(f"invalid 'role' claim {role!r}: want one of {allowed}")
    return Identity(sub=sub, role=Role(role))
