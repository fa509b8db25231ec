"""The `ridemesh` command: `up` runs the mesh, `serve` one service, `migrate` the schema,
`maintain` the history partitions, `token` mints a development token, `simulate` drives a
simulated city against a running mesh, `status` shows a running mesh at a glance."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from services.auth.identity import Role
from services.auth.keys import DEFAULT_KEYS_DIR
from services.ops import commands
from services.server.config import MissingSetting
from services.server.urls import DATABASE_URL_FORMS, REDIS_URL_FORMS

# `ridemesh`'s subcommands; each _add_* function adds one and points it at ops/commands.py.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except MissingSetting as exc:
        print(f"ridemesh: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ridemesh", description=__doc__)
    subcommands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_up(subcommands)
    _add_serve(subcommands)
    _add_migrate(subcommands)
    _add_maintain(subcommands)
    _add_token(subcommands)
    _add_status(subcommands)
    _add_simulate(subcommands)
    return parser


def _add_up(subcommands: Commands) -> None:
    up = subcommands.add_parser("up", help="run Redis, PostgreSQL, every service and Envoy")
    up.add_argument("--port", type=int, default=8080, help="Envoy's port for gRPC and gRPC-Web")
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy's admin port")
    up.add_argument("--replicas", type=int, default=1, help="processes per service")
    up.add_argument("--data-dir", type=Path, default=Path(".ridemesh"))
    up.add_argument(
        "--tls-cert", type=Path, help="serve TLS at Envoy with this certificate chain (PEM)"
    )
    up.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    up.add_argument(
        "--postgres-replica",
        action="store_true",
        help="also start a streaming replica of the PostgreSQL started here, for history reads",
    )
    up.add_argument(
        "--redis-cluster",
        action="store_true",
        help="start a Redis Cluster (three masters, each with a replica) instead of one Redis",
    )
    up.add_argument(
        "--production",
        action="store_true",
        help="refuse the development key; health and reflection need tokens too",
    )
    demo = up.add_argument_group("the demo city (on unless --no-demo or RIDEMESH_DEMO=0)")
    demo.add_argument(
        "--no-demo",
        dest="demo",
        action="store_false",
        default=os.environ.get("RIDEMESH_DEMO", "1").strip().lower() not in ("0", "false", "no"),
        help="start no simulated city",
    )
    demo.add_argument("--demo-drivers", type=int, default=200, help="simulated drivers")
    demo.add_argument("--demo-ride-rate", type=float, default=6.0, help="rides per minute")
    _add_tiles(up)
    _add_store_urls(up)
    up.set_defaults(func=commands.up)


def _add_serve(subcommands: Commands) -> None:
    serve = subcommands.add_parser(
        "serve", help="run one service process, or the live map's static upstream (web)"
    )
    serve.add_argument("service", choices=(*commands.SERVICES, "web"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    _add_store_urls(serve)
    serve.add_argument(
        "--database-read-url",
        help="a streaming replica for history reads that may lag; $RIDEMESH_DATABASE_READ_URL",
    )
    page = serve.add_argument_group("web only")
    page.add_argument("--dist", type=Path, help="the built page (default: web/dist)")
    page.add_argument(
        "--dev-keys-dir",
        type=Path,
        help="hand the page an ops token minted with this development key (never in production)",
    )
    _add_tiles(page)
    serve.set_defaults(func=commands.serve)


def _add_migrate(subcommands: Commands) -> None:
    migrate = subcommands.add_parser("migrate", help="bring the PostgreSQL schema up to date")
    _add_store_urls(migrate)
    migrate.set_defaults(func=commands.migrate)


def _add_maintain(subcommands: Commands) -> None:
    maintain = subcommands.add_parser(
        "maintain",
        help="create history partitions ahead; archive, then drop, those past the retention",
    )
    maintain.add_argument("--database-url", help=f"{DATABASE_URL_FORMS}; $RIDEMESH_DATABASE_URL")
    maintain.add_argument(
        "--retention-days", type=int, help="keep this many days; $RIDEMESH_RETENTION_DAYS or 30"
    )
    maintain.add_argument(
        "--archive-dir", help="where archives go; $RIDEMESH_ARCHIVE_DIR or .ridemesh/archive"
    )
    maintain.set_defaults(func=commands.maintain)


def _add_token(subcommands: Commands) -> None:
    token = subcommands.add_parser(
        "token", help="mint a development token (creates the development key pair if absent)"
    )
    token.add_argument("--sub", required=True, help="the caller's id: a driver, rider or service")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    token.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    token.set_defaults(func=commands.token)


def _add_status(subcommands: Commands) -> None:
    status = subcommands.add_parser(
        "status", help="the running mesh at a glance: health, streams, fixes/s, persistence lag"
    )
    status.add_argument("--data-dir", type=Path, default=Path(".ridemesh"))
    status.add_argument("--window", type=float, default=1.0, help="seconds between scrapes")
    status.set_defaults(func=commands.status)


def _add_simulate(subcommands: Commands) -> None:
    simulate = subcommands.add_parser(
        "simulate", help="drive a simulated city (drivers and riders) against a running mesh"
    )
    simulate.add_argument("--target", default="127.0.0.1:8080", help="Envoy's gRPC address")
    simulate.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    simulate.add_argument("--drivers", type=int, default=200)
    simulate.add_argument("--ride-rate", type=float, default=6.0, help="rides per minute")
    simulate.add_argument("--center", default="12.9716,77.5946", help="LAT,LNG of the city")
    simulate.add_argument(
        "--duration", type=float, default=0.0, help="seconds; 0 runs until Ctrl-C"
    )
    simulate.add_argument("--seed", type=int, help="for a repeatable city")
    simulate.add_argument(
        "--ignore-hints",
        action="store_true",
        help="send every 3-5 s whatever the server's sampling hints and fix requests say",
    )
    simulate.add_argument(
        "--parked", type=float, default=0.0, help="share of drivers parked, 0 to 1"
    )
    simulate.set_defaults(func=commands.simulate)


def _add_store_urls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help=f"{REDIS_URL_FORMS}; $RIDEMESH_REDIS_URL")
    parser.add_argument("--database-url", help=f"{DATABASE_URL_FORMS}; $RIDEMESH_DATABASE_URL")


def _add_tiles(parser: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile-url",
        default=os.environ.get("RIDEMESH_TILE_URL"),
        help="the live map's tile layer, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png; "
        "default $RIDEMESH_TILE_URL, else a plain grid (works offline)",
    )
    parser.add_argument(
        "--tile-attribution",
        default=os.environ.get("RIDEMESH_TILE_ATTRIBUTION"),
        help="the tile layer's attribution text; $RIDEMESH_TILE_ATTRIBUTION",
    )


if __name__ == "__main__":
    sys.exit(main())
