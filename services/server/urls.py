"""Store URLs as people paste them, normalised to the drivers Ridemesh uses (asyncpg, redis-py)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# PostgreSQL: psql's and libpq's forms, and SQLAlchemy's for the one driver installed.
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})
DATABASE_URL_FORMS = "postgresql://, postgres:// or postgresql+asyncpg://"
# libpq's sslmode (in most operators' secrets) is asyncpg's ssl, with the same values.
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
REDIS_URL_FORMS = (
    "redis://, rediss:// (TLS), unix:// or, for a Redis Cluster, "
    "redis+cluster://host:port[,host:port...] (rediss+cluster:// with TLS)"
)


class InvalidUrl(ValueError):
    """A URL Ridemesh cannot use; the message names the setting and the forms it accepts."""


def database_url(raw: str, setting: str = "RIDEMESH_DATABASE_URL") -> str:
    """`raw` as a postgresql+asyncpg:// URL for SQLAlchemy; libpq's sslmode becomes ssl."""
    parts = urlsplit(raw.strip())
    if parts.scheme.lower() not in _POSTGRES_SCHEMES or not parts.netloc:
        raise InvalidUrl(_refusal(setting, raw, DATABASE_URL_FORMS))
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "sslmode":
            if value not in _SSLMODES:
                raise InvalidUrl(
                    f"setting {setting}: sslmode={value!r} is not one of "
                    f"{', '.join(sorted(_SSLMODES))}"
                )
            key = "ssl"
        query.append((key, value))
    return urlunsplit(
        ("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), parts.fragment)
    )


def redis_url(raw: str, setting: str = "RIDEMESH_REDIS_URL") -> str:
    """`raw` checked to be a URL redis-py connects to (its scheme picks plain, TLS or a socket)."""
    text = raw.strip()
    parts = urlsplit(text)
    has_place = parts.netloc if parts.scheme != "unix" else parts.path
    if parts.scheme.lower() not in _REDIS_SCHEMES or not has_place:
        raise InvalidUrl(_refusal(setting, raw, REDIS_URL_FORMS))
    partitions = dict(parse_qsl(parts.query)).get("partitions")
    if partitions is not None and not (partitions.isdigit() and 1 <= int(partitions) <= 256):
        raise InvalidUrl(
            f"setting {setting}: partitions={partitions!r} must be a whole number from 1 to 256 "
            "(the same in every process of the mesh)"
        )
    return text


def _refusal(setting: str, raw: str, forms: str) -> str:
    # Only the scheme is echoed: the rest of a URL may carry a password.
    scheme, separator, _ = raw.strip().partition("://")
    shown = f"a {scheme}:// URL" if separator and scheme.isascii() else "a URL without a scheme"
    return f"setting {setting} must be a {forms} URL, got {shown}"
