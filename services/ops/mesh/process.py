"""A child process we started, with its log file, readiness polling and a PID-targeted stop."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self


class ProcessError(RuntimeError):
    """A managed process failed to start, exited early or never became ready."""


def primary_group(user: str) -> str:
    """The name of `user`'s primary group."""
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


class ManagedProcess:
    """One subprocess owned by us; `stop` signals only the PID we started."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The PID of the started process."""
        return self._require().pid

    @property
    def pids(self) -> list[int]:
        """Every process of this part: the one."""
        return [self.pid]

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while running."""
        return self._require().poll()

    @property
    def running(self) -> bool:
        """True while the process has been started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> Self:
        """Start the process with stdout and stderr going to the log file."""
        if self._popen is not None:
            raise ProcessError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # keep terminal Ctrl-C from reaching children twice
        )
        return self

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll `check` until it returns True; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            code = self.returncode
            if code is not None:
                raise ProcessError(f"{self.name} exited with {code}; log:\n{self.log_tail()}")
            if check():
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                raise ProcessError(f"{self.name} not ready after {timeout}s; log:\n{tail}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit by itself; returns its exit code."""
        return self._require().wait(timeout=timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        """Signal our PID, SIGKILL it after `grace` seconds; return the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(self.stop_signal)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return popen.returncode

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last bytes of the log, for error messages."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, os.path.getsize(self.log_path) - max_bytes))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _require(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise ProcessError(f"{self.name} not started")
        return self._popen

    def __enter__(self) -> Self:
        return self if self._popen is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess:
    """Base of the servers the mesh runs: one ManagedProcess, stopped by its PID on exit."""

    process: ManagedProcess
    stop_grace: float = 10.0

    @property
    def pid(self) -> int:
        """PID of the server process we started."""
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """Every process of this part: the one."""
        return [self.pid]

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, grace: float | None = None) -> None:
        """Stop the server by PID (its stop signal, then SIGKILL after `grace`)."""
        self.process.stop(self.stop_grace if grace is None else grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
