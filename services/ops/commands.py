"""What each `ridemesh` command does (ops/cli.py parses the command line and calls one)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path

from services.auth.identity import Role
from services.auth.keys import DEFAULT_KEYS_DIR, ensure_dev_keys, mint_token
from services.history.maintenance import MaintenanceReport, utc_today
from services.history.maintenance import maintain as maintain_history
from services.history.migrate import run_migrations
from services.history.store import HistoryStore, create_engine
from services.ops.mesh.envoy_config import EnvoyTls
from services.ops.mesh.ports import free_port, port_open
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh
from services.ops.status import STATE_FILE
from services.server.config import Settings, normalise_store_urls

SERVICES = ("location", "ride", "geo")
DEFAULT_REDIS_PORT = 16379
DEFAULT_POSTGRES_PORT = 15432


def status(args: argparse.Namespace) -> int:
    from services.ops.status import STATE_FILE, load_state, report

    try:
        state = load_state(args.data_dir)
    except FileNotFoundError:
        print(
            f"ridemesh: no running mesh in {args.data_dir} (no {STATE_FILE}): start one with "
            "`make run`, or pass --data-dir",
            file=sys.stderr,
        )
        return 2
    text, healthy = report(state, args.window)
    print(text)
    return 0 if healthy else 1


def simulate(args: argparse.Namespace) -> int:
    from services.ops.simulator.run import simulate
    from services.ops.simulator.settings import SimSettings

    try:
        lat, lng = (float(part) for part in args.center.split(","))
    except ValueError:
        print(f"ridemesh: --center must be LAT,LNG, got {args.center!r}", file=sys.stderr)
        return 2
    if not 0.0 <= args.parked <= 1.0:
        print(f"ridemesh: --parked must be 0 to 1, got {args.parked}", file=sys.stderr)
        return 2
    if args.drivers < 0 or args.ride_rate < 0 or args.duration < 0:
        print(
            "ridemesh: --drivers, --ride-rate and --duration must not be negative", file=sys.stderr
        )
        return 2
    settings = SimSettings(
        target=args.target,
        drivers=args.drivers,
        ride_rate_per_min=args.ride_rate,
        center=(lat, lng),
        duration_s=args.duration,
        seed=args.seed,
        honour_hints=not args.ignore_hints,
        parked_fraction=args.parked,
    )
    stats = asyncio.run(simulate(settings, args.keys_dir))
    print(f"ridemesh: simulation stopped: {stats.summary()}", flush=True)
    return 0


def _serve_web(args: argparse.Namespace) -> int:
    from services.ops.webapp import WEB_DIST, PageConfig, make_server

    page = PageConfig(
        keys_dir=args.dev_keys_dir,
        tile_url=args.tile_url,
        tile_attribution=args.tile_attribution,
    )
    server = make_server(args.host, args.port, args.dist or WEB_DIST, page)
    # serve_forever runs in a thread; SIGTERM/SIGINT end it and the process exits 0.
    stop = _stop_on_signals()
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


def serve(args: argparse.Namespace) -> int:
    from services.observability.logs import configure_logging
    from services.observability.tracing import configure_tracing

    if args.service == "web":
        return _serve_web(args)
    settings = Settings.from_env(
        redis_url=args.redis_url,
        database_url=args.database_url,
        database_read_url=args.database_read_url,
    )
    configure_logging(json_lines=settings.log_format == "json")
    tracing = configure_tracing(args.service)
    address = f"{args.host}:{args.port}"
    if args.service == "location":
        from services.location.main import run
    elif args.service == "ride":
        from services.ride.main import run
    else:
        from services.geo.main import run
    try:
        if settings.uvloop:
            import uvloop

            uvloop.run(run(settings, address, tracing=tracing))
        else:
            asyncio.run(run(settings, address, tracing=tracing))
    finally:
        if tracing is not None:
            tracing.shutdown()  # exports the spans still buffered
    return 0


def migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env(required=("database_url",), database_url=args.database_url)
    run_migrations(settings.database_url)
    print("schema is up to date")
    return 0


def maintain(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        required=("database_url",),  # maintenance never touches Redis
        database_url=args.database_url,
        retention_days=args.retention_days,
        archive_dir=args.archive_dir,
    )
    if settings.retention_days < 0:
        print(
            f"ridemesh: --retention-days must be 0 or more, got {settings.retention_days}",
            file=sys.stderr,
        )
        return 2
    report = asyncio.run(_maintain_once(settings))
    for line in report.lines():
        print(line)
    return 1 if report.problems else 0


async def _maintain_once(settings: Settings) -> MaintenanceReport:
    history = HistoryStore(create_engine(settings.database_url))
    try:
        return await maintain_history(
            history,
            today=utc_today(),
            retention_days=settings.retention_days,
            archive_dir=Path(settings.archive_dir),
            days_ahead=settings.partitions_ahead_days,
        )
    finally:
        await history.dispose()


def token(args: argparse.Namespace) -> int:
    if args.ttl <= 0:
        print(f"ridemesh: --ttl must be positive, got {args.ttl}", file=sys.stderr)
        return 2
    keys = ensure_dev_keys(args.keys_dir)
    print(
        mint_token(keys.private_pem(), keys.kid, sub=args.sub, role=Role(args.role), ttl_s=args.ttl)
    )
    return 0


def up(args: argparse.Namespace) -> int:
    stores = normalise_store_urls(
        {
            "redis_url": args.redis_url or os.environ.get("RIDEMESH_REDIS_URL"),
            "database_url": args.database_url or os.environ.get("RIDEMESH_DATABASE_URL"),
        }
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        print("ridemesh: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.postgres_replica and stores["database_url"]:
        print(
            "ridemesh: --postgres-replica replicates the PostgreSQL `up` starts; with your own "
            "database, set RIDEMESH_DATABASE_READ_URL for the services instead",
            file=sys.stderr,
        )
        return 2
    if args.redis_cluster and stores["redis_url"]:
        print(
            "ridemesh: --redis-cluster starts a cluster of its own; to use yours, give its "
            "nodes as RIDEMESH_REDIS_URL=redis+cluster://host:port,host:port instead",
            file=sys.stderr,
        )
        return 2
    tls = EnvoyTls(args.tls_cert.resolve(), args.tls_key.resolve()) if args.tls_cert else None
    settings = MeshSettings(
        run_dir=args.data_dir.resolve(),
        replicas=dict.fromkeys(SERVICES, args.replicas),
        envoy_port=args.port,
        envoy_admin_port=args.admin_port,
        redis_port=_port_or_free(DEFAULT_REDIS_PORT),
        postgres_port=_port_or_free(DEFAULT_POSTGRES_PORT),
        durable=True,
        redis_url=stores["redis_url"] or None,
        database_url=stores["database_url"] or None,
        postgres_replica=args.postgres_replica,
        redis_cluster=args.redis_cluster,
        production=args.production,
        tls=tls,
        web=True,
        tile_url=args.tile_url,
        tile_attribution=args.tile_attribution,
    )

    def migrate(mesh: Mesh) -> None:
        assert mesh.database_url is not None
        run_migrations(mesh.database_url)

    stop = _stop_on_signals()
    mesh = start_mesh(settings, before_services=migrate)
    state_file = settings.run_dir / STATE_FILE
    try:
        demo = _start_demo(mesh, settings, args)
        state_file.write_text(json.dumps(mesh.describe(), indent=2))
        print(_banner(mesh, demo), flush=True)
        while not stop.wait(0.5):
            pass
        print("ridemesh: stopping…", flush=True)
    finally:
        state_file.unlink(missing_ok=True)
        mesh.stop()
    print("ridemesh: stopped", flush=True)
    return 0


def _start_demo(mesh: Mesh, settings: MeshSettings, args: argparse.Namespace) -> str:
    """Starts the simulated city against the mesh unless turned off; says what it did."""
    if not args.demo:
        return "off (--no-demo or RIDEMESH_DEMO=0)"
    if settings.production or settings.tls is not None:
        return "off: the simulator uses development tokens over plaintext"
    assert mesh.envoy is not None
    argv = [
        sys.executable, "-m", "services.ops.cli", "simulate",
        "--target", mesh.envoy.address, "--keys-dir", str(settings.keys_path),
        "--drivers", str(args.demo_drivers), "--ride-rate", str(args.demo_ride_rate),
    ]  # fmt: skip
    log = mesh.run_dir / "logs" / "simulator.log"
    mesh.start(ManagedProcess("simulator", argv, log))
    return f"{args.demo_drivers} drivers, {args.demo_ride_rate:g} rides/min (log: {log})"


def _stop_on_signals() -> threading.Event:
    """An event SIGINT (Ctrl-C) or SIGTERM sets, for a process whose main thread waits on it."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _port_or_free(preferred: int) -> int:
    """The fixed default port (so `psql` commands in the README work) unless it is taken."""
    return free_port() if port_open(preferred) else preferred


def _banner(mesh: Mesh, demo: str) -> str:
    assert mesh.envoy is not None
    plaintext = "" if mesh.envoy.config.tls is not None else "-plaintext "
    lines = [
        "",
        "Ridemesh is up.",
        f"  live map            {mesh.envoy.url}/   <- open this in a browser",
        f"  simulated city      {demo}",
        f"  gRPC and gRPC-Web   {mesh.envoy.url}",
        f"  Envoy admin         {mesh.envoy.admin_url}",
    ]
    if mesh.keys is not None:
        keys_dir = mesh.keys.directory
        flag = "" if keys_dir == DEFAULT_KEYS_DIR.resolve() else f" --keys-dir {keys_dir}"
        example = mint_token(
            mesh.keys.private_pem(), mesh.keys.kid, sub="d-42", role=Role.DRIVER, ttl_s=3600
        )
        lines += [
            f"  a token             TOKEN=$(ridemesh token --sub d-42 --role driver{flag})",
            f"  (d-42, 1 h)         TOKEN={example}",
            f'  call                grpcurl {plaintext}-H "authorization: Bearer $TOKEN" '
            f"{mesh.envoy.address} list",
        ]
    for service, ports in mesh.services.items():
        lines.append(f"  {service:<19} " + ", ".join(f"127.0.0.1:{p}" for p in ports))
    if mesh.redis is not None:
        lines.append(f"  Redis               {mesh.redis.url}")
    if mesh.postgres is not None:
        lines.append(f"  PostgreSQL          psql {mesh.postgres.dsn}")
    for service, ports in mesh.services.items():
        metrics = ", ".join(f"http://127.0.0.1:{mesh.metrics_ports[p]}/metrics" for p in ports)
        lines.append(f"  {service} metrics{' ' * (11 - len(service))} {metrics}")
    lines += [
        f"  logs                {mesh.run_dir / 'logs'}",
        "  at a glance         ridemesh status",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
