"""Prometheus metrics of one service process, served over HTTP at /metrics on its metrics port.

RPCs are counted by a server interceptor (every method, every status code, the time unary calls
take, the streams open now); the location pipeline counts its own events where they happen.
Labels stay bounded: method names, status codes and rejection reasons, never ids (except webhook
subscription ids: a handful, made by staff)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.server.handlers import Handler, rewrap, stream_responses

RPC_LABELS = ("grpc_service", "grpc_method", "grpc_code")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_HANDLED = Counter(
    "ridemesh_rpc_handled_total", "RPCs finished, by method and status code.", RPC_LABELS
)
RPC_SECONDS = Histogram(
    "ridemesh_rpc_duration_seconds",
    "How long unary RPCs take in the service, by method and status code.",
    RPC_LABELS,
    buckets=LATENCY_BUCKETS,
)
STREAMS_OPEN = Gauge(
    "ridemesh_streams_open", "Streaming RPCs open now.", ("grpc_service", "grpc_method")
)
FIXES_ACCEPTED = Counter("ridemesh_fixes_accepted_total", "Driver fixes accepted.")
FIXES_REJECTED = Counter(
    "ridemesh_fixes_rejected_total",
    "Driver fixes rejected, by reason (the status code sent back in-band).",
    ("reason",),
)
FIXES_FILTERED = Counter(
    "ridemesh_fixes_filtered_total",
    "Driver fixes caught by a quality filter, by filter: accuracy, speed_jump and duplicate are "
    "refused; stationary_jitter is stored without moving the live position.",
    ("filter",),
)
FIXES_STORED_ONLY = Counter(
    "ridemesh_fixes_stored_only_total",
    "Fixes stored to history without reaching the live state or firing events, by source: "
    "late (taken long before they arrived on a stream) or upload (UploadLocations).",
    ("source",),
)
SAMPLING_HINTS = Counter(
    "ridemesh_sampling_hints_total",
    "Sampling hints sent to driver apps, by the driver's activity.",
    ("activity",),
)
FIX_REQUESTS = Counter(
    "ridemesh_fix_requests_total",
    "Fix-now requests for driver apps: sent, or merged into one sent moments before.",
    ("outcome",),
)
FIXES_LOST = Counter(
    "ridemesh_fixes_lost_total",
    "Accepted fixes found missing from PostgreSQL after Redis lost them; each ends its stream "
    "so the app sends them again.",
)
FANOUT_DROPPED = Counter(
    "ridemesh_fanout_dropped_total",
    "Messages a slow watcher's mailbox dropped for newer ones (latest: WatchDriver and friends; "
    "keyed: WatchArea's per-driver conflation).",
    ("mailbox",),
)
PERSIST_LAG = Histogram(
    "ridemesh_persist_lag_seconds",
    "A fix accepted to its row committed in PostgreSQL.",
    buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0),
)
PERSIST_BATCH_ROWS = Histogram(
    "ridemesh_persist_batch_rows",
    "Rows per committed batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
PERSIST_ROWS = Counter("ridemesh_persist_rows_total", "Fix rows committed to PostgreSQL.")
PERSIST_DEAD_LETTERS = Counter(
    "ridemesh_persist_dead_letters_total",
    "Ingest entries that could never be stored, moved to the dead-letter stream.",
)
WEBHOOK_DELIVERIES = Counter(
    "ridemesh_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (a 2xx answer), retried (a failed attempt "
    "tried again), dead_lettered (given up after the subscription's retry time).",
    ("outcome",),
)
WEBHOOK_LAG = Gauge(
    "ridemesh_webhook_lag_seconds",
    "Age of the oldest event a webhook subscription still owes, per subscription and event log "
    "partition (0 when it is caught up). Subscriptions are few, made by staff: their ids are a "
    "bounded label.",
    ("webhook_id", "partition"),
)
WEBHOOK_CURSOR_RESETS = Counter(
    "ridemesh_webhook_cursor_resets_total",
    "Webhook cursors the event log no longer covered (trimmed past them, or Redis lost the log), "
    "moved to the oldest event kept: events in between were never delivered.",
)
EXPORT_BYTES = Counter(
    "ridemesh_export_bytes_total",
    "Bytes of exported track documents sent (ExportDriverTrack), by format.",
    ("format",),
)
EXPORT_FIXES = Counter(
    "ridemesh_export_fixes_total",
    "Stored fixes read for exported track documents, by format (GeoJSON reads each twice).",
    ("format",),
)
REPLAY_FIXES = Counter(
    "ridemesh_replay_fixes_total", "Stored fixes played back to ReplayFleet callers."
)
REPLAY_LATE = Histogram(
    "ridemesh_replay_late_seconds",
    "How long after its due time (on the replay's wall clock) each replayed fix went out: "
    "PostgreSQL reads or a slow reader holding the replay back.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
GC_PAUSES = Histogram(
    "ridemesh_gc_pause_seconds",
    "How long each cyclic garbage collection stopped the process, by generation.",
    ("generation",),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

DROPPED_LATEST = FANOUT_DROPPED.labels("latest")
DROPPED_KEYED = FANOUT_DROPPED.labels("keyed")
WEBHOOK_DELIVERED = WEBHOOK_DELIVERIES.labels("delivered")
WEBHOOK_RETRIED = WEBHOOK_DELIVERIES.labels("retried")
WEBHOOK_DEAD_LETTERED = WEBHOOK_DELIVERIES.labels("dead_lettered")


def serve_metrics(host: str, port: int) -> int:
    """Serves /metrics on host:port in a daemon thread (port 0 picks one); returns the port."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)


def _split(full_method: str) -> tuple[str, str]:
    """'/ridemesh.v1.LocationService/StreamLocations' -> ('ridemesh.v1.LocationService', ...)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _code(context: aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The status the call ended with: what the handler set, else what its ending implies."""
    code: grpc.StatusCode | None = context.code()  # None until a status is set (stubs omit it)
    if code is not None:
        return code.name
    if error is None:
        return "OK"
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC by method and final status, times unary ones and gauges open streams.
    Installed first, so refusals by the token check and the limits are counted too."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split(handler_call_details.method)
        if handler.unary_stream or handler.stream_stream:
            return rewrap(handler, _counting_stream(service, method))
        return rewrap(handler, _timing_unary(service, method))


def _timing_unary(service: str, method_name: str) -> Callable[[Handler], Handler]:
    def wrap(method: Handler) -> Handler:
        async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await method(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _code(context, error)
                RPC_HANDLED.labels(service, method_name, code).inc()
                RPC_SECONDS.labels(service, method_name, code).observe(time.perf_counter() - start)

        return wrapper

    return wrap


def _counting_stream(service: str, method_name: str) -> Callable[[Handler], Handler]:
    open_now = STREAMS_OPEN.labels(service, method_name)

    def wrap(method: Handler) -> Handler:
        async def wrapper(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            open_now.inc()
            error: BaseException | None = None
            try:
                async for response in stream_responses(method, request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                open_now.dec()
                RPC_HANDLED.labels(service, method_name, _code(context, error)).inc()

        return wrapper

    return wrap
