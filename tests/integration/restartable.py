"""A real Redis of a test's own, on a fixed port, that the test can kill and start again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from services.ops.mesh.redis_server import RedisServer


class Restartable:
    """A Redis on a fixed port that a test can kill and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server = RedisServer(directory).start()

    def kill(self) -> None:
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=10)
        self.server.stop()  # closes its log; the process is already gone

    def start(self) -> None:
        self.server = RedisServer(self.directory, self.server.port).start()
