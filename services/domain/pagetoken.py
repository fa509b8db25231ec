"""Opaque AIP-158 page tokens: where a page ended, bound to the request that made it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from services.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """0 means the default; above the maximum is coerced down (AIP-158); negative is an error."""
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative, got {requested}")
    return min(requested or default, maximum)


def encode(position: dict[str, Any], request_key: str) -> str:
    """A token holding `position` (JSON-able) and a fingerprint of the request's other fields."""
    document = {"p": position, "k": _fingerprint(request_key)}
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, request_key: str) -> dict[str, Any]:
    """The position in a token from `encode`; InvalidArgument when it is not one of ours or was
    made for a request with other fields (they must not change between pages)."""
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, fingerprint = document["p"], document["k"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            "page_token is not valid: pass the next_page_token of the previous response unchanged"
        ) from exc
    if fingerprint != _fingerprint(request_key) or not isinstance(position, dict):
        raise InvalidArgument(
            "page_token was made for a request with other fields; keep them unchanged between "
            "pages or start again without a page_token"
        )
    return position


def _fingerprint(request_key: str) -> str:
    return hashlib.sha256(request_key.encode()).hexdigest()[:16]
