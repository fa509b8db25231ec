"""A Redis server on a loopback port, throwaway by default."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Self

from services.ops.mesh.binaries import find_binary
from services.ops.mesh.ports import free_port
from services.ops.mesh.process import ManagedProcess, ServerProcess


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when the Redis at host:port answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ServerProcess):
    """`redis-server` in `directory`; no persistence unless `persist=True` (append-only file)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        persist: bool = False,
        ready_timeout: float = 15.0,
    ) -> None:
        self.directory = Path(directory)
        self.port = port if port is not None else free_port()
        self.persist = persist
        self.ready_timeout = ready_timeout
        self.process = ManagedProcess("redis", self._argv(), self.directory / "redis.log")

    @property
    def url(self) -> str:
        """redis-py URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [str(find_binary("redis-server")), "--port", str(self.port)]
        argv += ["--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--protected-mode", "no", "--daemonize", "no"]
        if self.persist:
            return [*argv, "--appendonly", "yes", "--save", ""]
        return [*argv, "--appendonly", "no", "--save", ""]

    def start(self) -> Self:
        """Start Redis and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process.start()
        self.process.wait_ready(lambda: redis_ping(self.port), self.ready_timeout)
        return self
