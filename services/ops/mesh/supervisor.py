"""The Mesh: Redis, PostgreSQL, service replicas and Envoy, started in order, stopped in reverse."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.auth.keys import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    JWKS_FILE,
    DevKeys,
    ensure_dev_keys,
    has_development_key,
    load_jwks,
)
from services.ops.mesh.envoy_config import CLUSTERS, EnvoyJwt, EnvoyTls
from services.ops.mesh.envoy_proxy import EnvoyProxy
from services.ops.mesh.ports import free_port, http_ok
from services.ops.mesh.postgres_server import PostgresReplica, PostgresServer
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_cluster import RedisClusterServer
from services.ops.mesh.redis_server import RedisServer
from services.server.config import UnsafeSetting


class Part(Protocol):
    """Anything the mesh can start and later stop."""

    @property
    def pids(self) -> list[int]: ...

    def start(self) -> Self: ...

    def stop(self, grace: float = ...) -> object: ...


P = TypeVar("P", bound=Part)


def grpc_serving(port: int, service: str = "", timeout: float = 0.5) -> bool:
    """True when grpc.health.v1 on 127.0.0.1:port reports `service` SERVING."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def service_argv(service: str, port: int, redis_url: str, database_url: str) -> list[str]:
    """The command line of one service replica."""
    return [
        sys.executable, "-m", "services.ops.cli", "serve", service, "--port", str(port),
        "--redis-url", redis_url, "--database-url", database_url,
    ]  # fmt: skip


@dataclass(frozen=True)
class MeshSettings:
    """How to lay out one mesh run; ports left as None are picked free."""

    run_dir: Path
    replicas: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(CLUSTERS, 1))
    envoy_port: int | None = None
    envoy_admin_port: int | None = None
    # Envoy's worker threads (`--concurrency`); None: one per hardware thread, Envoy's default.
    envoy_workers: int | None = None
    listen_address: str = "127.0.0.1"
    redis_port: int | None = None
    postgres_port: int | None = None
    durable: bool = False  # keep data across restarts (Redis AOF, PostgreSQL fsync)
    redis_url: str | None = None  # use this Redis instead of starting one
    database_url: str | None = None  # use this PostgreSQL instead of starting one
    # Also start a streaming replica of the PostgreSQL started here, for the services' history
    # reads (RIDEMESH_DATABASE_READ_URL).
    postgres_replica: bool = False
    # Start a Redis Cluster (three masters, each with a replica) instead of one Redis.
    redis_cluster: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0
    # Tokens: verified at Envoy (when `jwt`) and in every service against keys_dir/jwks.json;
    # None means run_dir/keys, where a development key pair is made once and reused.
    keys_dir: Path | None = None
    jwt: bool = True
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE
    # Production: the JWKS must not hold the development key; health and reflection need tokens
    # at the edge, and reflection in the services too.
    production: bool = False
    tls: EnvoyTls | None = None
    # The live map: a static upstream behind Envoy serving web/dist (`ridemesh serve web`).
    web: bool = False
    web_dist: Path | None = None
    tile_url: str | None = None
    tile_attribution: str | None = None

    @property
    def keys_path(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.run_dir / "keys"


class Mesh:
    """Owns the parts it started and stops them in reverse order, each by its own PID."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.parts: list[Part] = []
        self.redis: RedisServer | None = None
        self.redis_cluster: RedisClusterServer | None = None
        self.postgres: PostgresServer | None = None
        self.postgres_replica: PostgresReplica | None = None
        self.envoy: EnvoyProxy | None = None
        # The development key pair tokens are minted with; None in production.
        self.keys: DevKeys | None = None
        self.services: dict[str, list[int]] = {}
        # Each replica's Prometheus port, by its gRPC port.
        self.metrics_ports: dict[int, int] = {}
        self.web_port: int | None = None
        # Set from the servers started here, or given when Redis/PostgreSQL run elsewhere.
        self.redis_url: str | None = None
        self.database_url: str | None = None
        self.database_read_url: str | None = None

    def start(self, part: P) -> P:
        """Start `part` and take ownership of stopping it."""
        part.start()
        self.parts.append(part)
        return part

    def start_service(
        self, service: str, port: int, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> ManagedProcess:
        """Start one replica of `service` on `port` and wait for its health check to say SERVING."""
        if self.redis_url is None or self.database_url is None:
            raise RuntimeError("start (or name) Redis and PostgreSQL before the services")
        argv = service_argv(service, port, self.redis_url, self.database_url)
        metrics_port = free_port()
        child_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RIDEMESH_METRICS_PORT": str(metrics_port),
            **(env or {}),
        }
        log = self.run_dir / "logs" / f"{service}-{port}.log"
        process = self.start(ManagedProcess(f"{service}:{port}", argv, log, env=child_env))
        process.wait_ready(lambda: grpc_serving(port), timeout)
        self.services.setdefault(service, []).append(port)
        self.metrics_ports[port] = metrics_port
        return process

    def describe(self) -> dict[str, object]:
        """Where everything listens, as `ridemesh status` reads it from the run directory."""
        return {
            "envoy": None if self.envoy is None else self.envoy.address,
            "envoy_admin": None if self.envoy is None else self.envoy.admin_url,
            "services": {
                service: [{"port": p, "metrics_port": self.metrics_ports.get(p)} for p in ports]
                for service, ports in self.services.items()
            },
        }

    def stop(self, grace: float = 10.0) -> None:
        """Stop everything in reverse start order; one failure does not skip the rest."""
        errors: list[Exception] = []
        while self.parts:
            part = self.parts.pop()
            try:
                part.stop(grace)
            except Exception as exc:  # keep stopping the others; re-raised below
                errors.append(exc)
        if errors:
            raise ExceptionGroup("stopping the mesh", errors)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_mesh(
    settings: MeshSettings, before_services: Callable[[Mesh], None] | None = None
) -> Mesh:
    """Start Redis, PostgreSQL, `before_services` (e.g. migrations), the replicas, then Envoy."""
    mesh = Mesh(settings.run_dir)
    try:
        _start_all(mesh, settings, before_services)
    except BaseException:
        mesh.stop()
        raise
    return mesh


def _start_all(
    mesh: Mesh, settings: MeshSettings, before_services: Callable[[Mesh], None] | None
) -> None:
    run_dir = settings.run_dir
    # Keys before anything starts: production with the development key stops here.
    mesh.keys = prepare_keys(settings)
    if settings.redis_url is not None:
        mesh.redis_url = settings.redis_url
    elif settings.redis_cluster:
        mesh.redis_cluster = mesh.start(
            RedisClusterServer(run_dir / "redis-cluster", persist=settings.durable)
        )
        mesh.redis_url = mesh.redis_cluster.url
    else:
        mesh.redis = mesh.start(
            RedisServer(run_dir / "redis", settings.redis_port, persist=settings.durable)
        )
        mesh.redis_url = mesh.redis.url
    if settings.database_url is None:
        mesh.postgres = mesh.start(
            PostgresServer(
                run_dir / "postgres",
                settings.postgres_port,
                fsync=settings.durable,
                log_path=run_dir / "logs" / "postgres.log",
            )
        )
    mesh.database_url = settings.database_url or (mesh.postgres.url if mesh.postgres else None)
    if before_services is not None:
        before_services(mesh)
    if settings.postgres_replica:
        if mesh.postgres is None:
            raise RuntimeError("postgres_replica needs the PostgreSQL started here")
        # After the migrations (before_services), so the replica starts with the schema.
        mesh.postgres_replica = mesh.start(
            PostgresReplica(
                mesh.postgres,
                run_dir / "postgres-replica",
                fsync=settings.durable,
                log_path=run_dir / "logs" / "postgres-replica.log",
            )
        )
        mesh.database_read_url = mesh.postgres_replica.url
    # Envoy's port is fixed first: services call each other through it (RIDEMESH_MESH_TARGET).
    envoy_port = settings.envoy_port or free_port()
    env = {
        "RIDEMESH_MESH_TARGET": f"127.0.0.1:{envoy_port}",
        **auth_env(settings),
        **settings.env,
    }
    if mesh.database_read_url is not None:
        env["RIDEMESH_DATABASE_READ_URL"] = mesh.database_read_url
    for service, count in settings.replicas.items():
        for _ in range(count):
            mesh.start_service(service, free_port(), env, settings.ready_timeout)
    if settings.web:
        mesh.web_port = start_web(mesh, settings)
    envoy = EnvoyProxy(
        run_dir / "envoy",
        mesh.services,
        port=envoy_port,
        admin_port=settings.envoy_admin_port,
        listen_address=settings.listen_address,
        jwt=edge_jwt(settings) if settings.jwt else None,
        tls=settings.tls,
        web_port=mesh.web_port,
        concurrency=settings.envoy_workers,
    )
    mesh.envoy = mesh.start(envoy)


def start_web(mesh: Mesh, settings: MeshSettings) -> int:
    """Start the live map's static upstream; outside production it hands the page an ops token."""
    port = free_port()
    argv = [sys.executable, "-m", "services.ops.cli", "serve", "web", "--port", str(port)]
    if settings.web_dist is not None:
        argv += ["--dist", str(settings.web_dist)]
    if not settings.production:
        argv += ["--dev-keys-dir", str(settings.keys_path)]
    if settings.tile_url:
        argv += ["--tile-url", settings.tile_url]
    if settings.tile_attribution:
        argv += ["--tile-attribution", settings.tile_attribution]
    log = settings.run_dir / "logs" / f"web-{port}.log"
    process = mesh.start(ManagedProcess(f"web:{port}", argv, log))
    process.wait_ready(lambda: http_ok(port, "/healthz"), settings.ready_timeout)
    return port


def prepare_keys(settings: MeshSettings) -> DevKeys | None:
    """The development key pair (made once, reused across runs); production checks its JWKS."""
    if not settings.production:
        return ensure_dev_keys(settings.keys_path)
    jwks = settings.keys_path / JWKS_FILE
    if not jwks.is_file():
        raise UnsafeSetting(f"production mode needs the production JWKS at {jwks}")
    if has_development_key(load_jwks(jwks)):
        raise UnsafeSetting(f"production mode refuses the development key in {jwks}")
    return None


def auth_env(settings: MeshSettings) -> dict[str, str]:
    """What every service process is told about tokens."""
    env = {
        "RIDEMESH_AUTH_KEYS_DIR": str(settings.keys_path),
        "RIDEMESH_AUTH_ISSUER": settings.issuer,
        "RIDEMESH_AUTH_AUDIENCE": settings.audience,
    }
    if settings.production:
        env |= {"RIDEMESH_PRODUCTION": "1", "RIDEMESH_OPEN_REFLECTION": "0"}
    return env


def edge_jwt(settings: MeshSettings) -> EnvoyJwt:
    """Envoy's token check: the services' issuer, audience and JWKS; health and reflection open
    outside production."""
    return EnvoyJwt(
        settings.issuer,
        [settings.audience],
        (settings.keys_path / JWKS_FILE).read_text(),
        open_health_and_reflection=not settings.production,
    )
