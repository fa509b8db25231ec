"""Runs one service process: serve, flip health, wait for SIGTERM or Ctrl-C, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from grpc import aio
from opentelemetry.sdk.trace import TracerProvider

from services.auth.interceptor import AuthInterceptor
from services.auth.limits import LimitInterceptor, Limits
from services.observability.metrics import MetricsInterceptor, serve_metrics
from services.observability.tracing import server_interceptors
from services.server import collector
from services.server.builder import add_health, add_reflection, create_server, set_serving
from services.server.config import Settings

log = logging.getLogger(__name__)

Register = Callable[[aio.Server], None]
Drain = Callable[[], Awaitable[None]]


async def serve(
    name: str,
    address: str,
    register: Register,
    settings: Settings,
    *,
    auth: AuthInterceptor,
    drain: Drain | None = None,
    stop: asyncio.Event | None = None,
    tracing: TracerProvider | None = None,
) -> None:
    """Serves until `stop` is set (or a signal arrives), then drains and stops gracefully.
    Metrics are served on settings.metrics_port (same host) when set; RPCs are traced with
    `tracing` when given."""
    limits = LimitInterceptor(Limits.from_settings(settings))
    observers = [*server_interceptors(tracing), MetricsInterceptor()]
    server, port = create_server(address, auth, limits, observers)
    host = address.rsplit(":", 1)[0]
    if settings.metrics_port:
        metrics_port = serve_metrics(host, settings.metrics_port)
        log.info("%s metrics on http://%s:%d/metrics", name, host, metrics_port)
    register(server)
    health = add_health(server)
    add_reflection(server)
    await server.start()
    collector.freeze_startup_heap()
    await set_serving(health, True)
    log.info("%s listening on %s:%d", name, host, port)
    stop = stop or _stop_on_signals()
    await stop.wait()
    log.info("%s stopping: draining", name)
    # Health first, so Envoy routes new calls elsewhere while this replica finishes its work.
    await set_serving(health, False)
    if drain is not None:
        await drain()
    await server.stop(settings.shutdown_grace_s)
    log.info("%s stopped", name)


def _stop_on_signals() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event
