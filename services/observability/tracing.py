"""OpenTelemetry tracing of every RPC, off unless the standard environment asks for it.

`OTEL_TRACES_EXPORTER` turns it on (`otlp`, `console`, or both comma-separated; unset or `none`
leaves it off); the exporter reads its own `OTEL_EXPORTER_OTLP_*` settings, the service name comes
from `OTEL_SERVICE_NAME` (default `ridemesh-<service>`), `OTEL_SDK_DISABLED=true` wins over all.
The trace context travels in the `traceparent` header: Envoy forwards it untouched, and
RideService's calls to GeoQueryService carry it on."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from services.server.config import MissingSetting


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; empty when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n and n != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        # Imported only when asked for: it brings a gRPC exporter with its own channel.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise MissingSetting(f"OTEL_TRACES_EXPORTER names {name!r}; use otlp, console or none")


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider exporting as the environment says, or None when tracing is off."""
    env = os.environ if env is None else env
    names = exporter_names(env)
    if not names:
        return None
    name = env.get("OTEL_SERVICE_NAME") or f"ridemesh-{service}"
    resource = Resource.create({SERVICE_NAME: name})
    provider = TracerProvider(resource=resource)
    for exporter in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    return provider


def server_interceptors(provider: TracerProvider | None) -> list[Any]:
    """The server span of every RPC, continuing the caller's trace; none when off."""
    if provider is None:
        return []
    return [aio_server_interceptor(tracer_provider=provider)]  # type: ignore[no-untyped-call]


def client_interceptors(provider: TracerProvider | None) -> list[Any]:
    """A client span per outgoing call, passing the trace on in its metadata; none when off."""
    if provider is None:
        return []
    return list(aio_client_interceptors(tracer_provider=provider))  # type: ignore[no-untyped-call]
