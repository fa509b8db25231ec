"""Starts standalone LocationService processes for tests that kill or stop them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.auth.keys import DevKeys
from services.ops.mesh.ports import free_port
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.supervisor import grpc_serving
from tests.tokens import auth_env


def start_location(
    log_dir: Path, redis_url: str, database_url: str, env: dict[str, str], keys: DevKeys
) -> tuple[ManagedProcess, int]:
    """One `ridemesh serve location` process on a free port, verifying tokens signed with `keys`,
    ready when its health says so."""
    port = free_port()
    argv = [sys.executable, "-m", "services.ops.cli", "serve", "location", "--port", str(port)]
    argv += ["--redis-url", redis_url, "--database-url", database_url]
    log = log_dir / f"location-{port}.log"
    process = ManagedProcess(
        "location", argv, log, env={**os.environ, **auth_env(keys), **env}
    ).start()
    try:
        process.wait_ready(lambda: grpc_serving(port), timeout=30)
    except BaseException:
        process.stop()
        raise
    return process, port
