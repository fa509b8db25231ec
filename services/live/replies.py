"""Redis replies as Python values: members and names arrive as bytes or str."""

from __future__ import annotations


def text(value: object) -> str:
    """A reply value as str (bytes are UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)
