"""Locating the server binaries the mesh runs; a missing one is an error, never a skip."""

import shutil
import sys
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class BinaryNotFound(FileNotFoundError):
    """A server binary the mesh needs is not installed (run `make install`)."""


def find_binary(name: str, *extra_dirs: Path) -> Path:
    """Find `name` next to the running Python (the venv), in `extra_dirs`, then on PATH."""
    for directory in (Path(sys.executable).parent, *extra_dirs):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise BinaryNotFound(f"{name} not found; run `make install`")
    return Path(found)
