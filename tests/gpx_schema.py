"""The official GPX 1.1 schema (tests/data/gpx-1.1.xsd), for tests that validate exported GPX."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

SCHEMA_PATH = Path(__file__).parent / "data" / "gpx-1.1.xsd"


@cache
def _schema() -> Any:
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))


def assert_valid_gpx(document: bytes) -> Any:
    """Parses `document`, fails with the schema's own error list unless it is valid GPX 1.1, and
    returns the root element."""
    root = etree.fromstring(document)
    schema = _schema()
    if not schema.validate(root):
        errors = "\n".join(f"line {e.line}: {e.message}" for e in schema.error_log)
        raise AssertionError(f"not valid GPX 1.1:\n{errors}")
    return root
