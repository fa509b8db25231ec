"""The Envoy edge proxy as a process: its rendered config validated, written and run."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from services.ops.mesh.binaries import find_binary
from services.ops.mesh.envoy_config import (
    DEFAULT_RATE_LIMIT,
    LOCAL_ORIGINS,
    EnvoyConfig,
    EnvoyJwt,
    EnvoyRateLimit,
    EnvoyTls,
    render_config,
)
from services.ops.mesh.ports import free_port, http_ok
from services.ops.mesh.process import ManagedProcess, ProcessError, ServerProcess


def validate_config(path: Path) -> None:
    """Run `envoy --mode validate`; raise with Envoy's message when the config is rejected."""
    argv = [str(find_binary("envoy")), "--mode", "validate", "-c", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProcessError(f"envoy rejected {path}:\n{result.stdout}{result.stderr}")


def admin_ready(admin_port: int) -> bool:
    """True when Envoy's admin /ready answers 200 (all clusters and listeners initialised)."""
    return http_ok(admin_port, "/ready")


class EnvoyProxy(ServerProcess):
    """Envoy in front of the service replicas; config and log live in `run_dir`."""

    def __init__(
        self,
        run_dir: Path,
        upstreams: Mapping[str, Sequence[int]],
        port: int | None = None,
        admin_port: int | None = None,
        listen_address: str = "127.0.0.1",
        cors_origin_prefixes: Sequence[str] = LOCAL_ORIGINS,
        log_level: str = "warn",
        concurrency: int | None = None,
        ready_timeout: float = 30.0,
        jwt: EnvoyJwt | None = None,
        tls: EnvoyTls | None = None,
        rate_limit: EnvoyRateLimit | None = DEFAULT_RATE_LIMIT,
        web_port: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = EnvoyConfig(
            port=port if port is not None else free_port(),
            admin_port=admin_port if admin_port is not None else free_port(),
            upstreams=upstreams,
            listen_address=listen_address,
            cors_origin_prefixes=tuple(cors_origin_prefixes),
            jwt=jwt,
            tls=tls,
            rate_limit=rate_limit,
            web_port=web_port,
        )
        self.config_path = self.run_dir / "envoy.yaml"
        self.ready_timeout = ready_timeout
        argv = [str(find_binary("envoy")), "-c", str(self.config_path), "--use-dynamic-base-id"]
        argv += ["--log-level", log_level]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        self.process = ManagedProcess("envoy", argv, self.run_dir / "envoy.log")

    @property
    def port(self) -> int:
        """The listener port clients use."""
        return self.config.port

    @property
    def admin_port(self) -> int:
        """The admin port (loopback only)."""
        return self.config.admin_port

    @property
    def address(self) -> str:
        """host:port for a gRPC channel."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL for gRPC-Web clients."""
        scheme = "https" if self.config.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin interface."""
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self) -> Path:
        """Render the config into the run directory and return its path."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.config))
        return self.config_path

    def start(self) -> Self:
        """Write the config, start Envoy and wait for admin /ready."""
        self.write_config()
        self.process.start()
        self.process.wait_ready(lambda: admin_ready(self.admin_port), self.ready_timeout)
        return self
