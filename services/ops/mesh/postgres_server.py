"""A PostgreSQL + PostGIS cluster on a loopback port, run as `postgres` when we are root."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from services.ops.mesh.binaries import PG_BIN, BinaryNotFound
from services.ops.mesh.ports import free_port
from services.ops.mesh.process import ManagedProcess, ProcessError, ServerProcess, primary_group

DATABASE = "ridemesh"
SUPERUSER = "postgres"


def pg_binary(name: str) -> Path:
    """Path of a PostgreSQL 15 server binary."""
    path = PG_BIN / name
    if path.is_file():
        return path
    found = shutil.which(name)
    if found is None:
        raise BinaryNotFound(f"{path} not found; run `make install`")
    return Path(found)


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root, so root runs it as the `postgres` user."""
    return SUPERUSER if os.geteuid() == 0 else None


def _as_user(user: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` run as `user` through setpriv, which changes ids and execs (the PID stays the
    server's). Not subprocess's user=: that forks the whole Python process, and a fork of a
    process running gRPC's threads can crash in gRPC's fork handlers before the exec."""
    if user is None:
        return list(argv)
    group = primary_group(user)
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "--", *argv]


def _give_to(user: str, directory: Path) -> None:
    """Make `directory` owned by `user` and reachable through every ancestor."""
    entry = pwd.getpwnam(user)
    gid = entry.pw_gid
    os.chown(directory, entry.pw_uid, gid)
    directory.chmod(0o700)
    for ancestor in directory.resolve().parents:
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            ancestor.chmod(mode | stat.S_IXOTH)


class PostgresServer(ServerProcess):
    """A cluster in `data_dir` (initdb when empty, reused otherwise) serving database `ridemesh`."""

    stop_grace = 30.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        fsync: bool = True,
        settings: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port if port is not None else free_port()
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.ready_timeout = ready_timeout
        self.user = _run_as()
        self.process = ManagedProcess(
            "postgres",
            _as_user(self.user, self._postgres_argv()),
            log_path or self.data_dir.parent / f"{self.data_dir.name}.log",
            env=self._env(),
            stop_signal=signal.SIGINT,  # SIGINT is PostgreSQL's "fast" shutdown
        )

    @property
    def url(self) -> str:
        """SQLAlchemy async URL of the `ridemesh` database."""
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        """Plain libpq/asyncpg DSN of the `ridemesh` database."""
        return self.dsn_for(DATABASE)

    def dsn_for(self, database: str) -> str:
        """Plain libpq/asyncpg DSN of another database in this cluster."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    # A primary makes sure `ridemesh` exists once started; a read-only standby cannot.
    creates_database = True

    def start(self) -> Self:
        """Initialise the cluster if needed, start it and make sure `ridemesh` exists."""
        self._initdb()
        self.process.start()
        self.process.wait_ready(self._accepting, self.ready_timeout)
        if self.creates_database:
            self.create_database(DATABASE)
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command through psql over TCP and return its unaligned output."""
        argv = [str(pg_binary("psql")), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database]
        return self._run([*argv, "-c", sql]).strip()

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists != "1":
            self.psql(f'CREATE DATABASE "{name}"')

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _give_to(self.user, self.data_dir)
        self._run(self._create_argv())

    def _create_argv(self) -> list[str]:
        """The command that fills an empty data directory."""
        argv = [str(pg_binary("initdb")), "-D", str(self.data_dir), "-U", SUPERUSER]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]
        return argv

    def _postgres_argv(self) -> list[str]:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",  # TCP only: no socket path length or permission issues
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            **self.settings,
        }
        argv = [str(pg_binary("postgres")), "-D", str(self.data_dir)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        if self.user is not None:
            env["HOME"] = pwd.getpwnam(self.user).pw_dir
        return env

    def _accepting(self) -> bool:
        argv = [str(pg_binary("pg_isready")), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(argv, check=False, env=self._env()).returncode == 0

    def _run(self, argv: Sequence[str]) -> str:
        result = subprocess.run(
            _as_user(self.user, argv),
            capture_output=True,
            text=True,
            check=False,
            env=self._env(),
            cwd="/",
        )
        if result.returncode != 0:
            raise ProcessError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout


class PostgresReplica(PostgresServer):
    """A hot standby of `primary`: its data directory cloned with `pg_basebackup -R` (which
    writes the standby signal and primary_conninfo), then streaming the primary's WAL. Read-only;
    initdb's defaults on the primary (wal_level replica, trusted replication from 127.0.0.1)
    are all it needs."""

    creates_database = False

    def __init__(
        self,
        primary: PostgresServer,
        data_dir: Path,
        port: int | None = None,
        fsync: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.primary = primary
        super().__init__(data_dir, port=port, fsync=fsync, log_path=log_path)

    def replay_caught_up(self) -> bool:
        """Whether this standby has replayed everything the primary had written when asked."""
        written = self.primary.psql("SELECT pg_current_wal_lsn()")
        return self.psql(f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn") == "t"

    def _create_argv(self) -> list[str]:
        argv = [str(pg_binary("pg_basebackup")), "-D", str(self.data_dir), "-R", "-X", "stream"]
        argv += ["--checkpoint=fast"]  # the default waits for a spread checkpoint: minutes
        argv += ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", SUPERUSER, "--no-sync"]
        return argv
