"""Signing keys: the development ES256 key pair on disk, JWKS loading, and minting tokens."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from services.auth.identity import PublicKeys, Role, VerifyingKey, key_algorithm

DEFAULT_KEYS_DIR = Path(".ridemesh") / "keys"
PRIVATE_FILE = "dev-private.pem"
PUBLIC_FILE = "dev-public.pem"
JWKS_FILE = "jwks.json"
# Every development key id starts with this, so production can refuse to run with one.
DEV_KID_PREFIX = "ridemesh-dev-"
DEV_ISSUER = "ridemesh-dev"
DEV_AUDIENCE = "ridemesh"


@dataclass(frozen=True)
class DevKeys:
    """The development key pair's files and key id."""

    directory: Path
    kid: str

    @property
    def private_path(self) -> Path:
        return self.directory / PRIVATE_FILE

    @property
    def public_path(self) -> Path:
        return self.directory / PUBLIC_FILE

    @property
    def jwks_path(self) -> Path:
        return self.directory / JWKS_FILE

    def private_pem(self) -> bytes:
        return self.private_path.read_bytes()


def ensure_dev_keys(directory: Path = DEFAULT_KEYS_DIR) -> DevKeys:
    """Create the development key pair under `directory`, or reuse the one already there."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_key = _load_or_create_private(directory / PRIVATE_FILE)
    public_key = private_key.public_key()
    kid = DEV_KID_PREFIX + _thumbprint(public_key)[:16]
    public_pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Derived files are rewritten when stale, so they always match the private key.
    _write_if_changed(directory / PUBLIC_FILE, public_pem)
    _write_if_changed(directory / JWKS_FILE, (jwks_json({kid: public_key}) + "\n").encode())
    return DevKeys(directory=directory, kid=kid)


def _load_or_create_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        # O_EXCL: two processes starting at once end up sharing one key, never overwriting.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC private key") from None
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return key


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint, base64url: stable for a key, different between keys."""
    jwk = json.loads(ECAlgorithm.to_jwk(key))
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode())
    return jwt.utils.base64url_encode(digest.finalize()).decode()


def is_development_kid(kid: str) -> bool:
    """True for key ids made by `ensure_dev_keys`."""
    return kid.startswith(DEV_KID_PREFIX)


def has_development_key(keys: PublicKeys) -> bool:
    """True when any key is a development key (production refuses to start with one)."""
    return any(is_development_kid(kid) for kid in keys)


def jwks_json(keys: Mapping[str, VerifyingKey]) -> str:
    """A JWKS document (RFC 7517) publishing `keys` with their kid, alg and use."""
    entries = []
    for kid, key in keys.items():
        algorithm = key_algorithm(key)
        entry: dict[str, Any] = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(key))
        entry.update({"kid": kid, "alg": algorithm, "use": "sig"})
        entries.append(entry)
    return json.dumps({"keys": entries}, indent=2)


def parse_jwks(text: str) -> dict[str, VerifyingKey]:
    """Public keys by kid from a JWKS document; every key must have a kid and be ES256 or RS256."""
    try:
        document = json.loads(text)
        entries = document["keys"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a JWKS document: {exc}") from None
    keys: dict[str, VerifyingKey] = {}
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not kid:
            raise ValueError("JWKS key without a 'kid'")
        key = jwt.PyJWK.from_dict(entry).key
        if not isinstance(key, VerifyingKey):
            raise ValueError(f"JWKS key {kid!r} is not an EC or RSA public key")
        key_algorithm(key)  # rejects curves ES256 cannot use
        keys[kid] = key
    return keys


def load_jwks(path: Path) -> dict[str, VerifyingKey]:
    """Public keys by kid from a JWKS file."""
    return parse_jwks(Path(path).read_text())


def load_public_pem(path: Path, kid: str) -> dict[str, VerifyingKey]:
    """One public key from a PEM file, published under `kid`."""
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, VerifyingKey):
        raise ValueError(f"{path} is not an EC or RSA public key")
    key_algorithm(key)
    return {kid: key}


def mint_token(
    private_key_pem: bytes,
    kid: str,
    *,
    sub: str,
    role: Role,
    ttl_s: int,
    issuer: str = DEV_ISSUER,
    audience: str = DEV_AUDIENCE,
    now: float | None = None,
) -> str:
    """A signed JWT for `sub` in `role`, valid for `ttl_s` seconds from `now`."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    if not sub:
        raise ValueError("sub must not be empty")
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("signing key must be an EC (ES256) or RSA (RS256) private key")
    algorithm = key_algorithm(key.public_key())
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "role": Role(role).value,
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})
