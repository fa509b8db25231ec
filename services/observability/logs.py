"""Structured JSON logs: one object per line with the time, level, logger and message, the
current trace and span ids when a trace is active, and whatever ids a call site adds with
`extra={"driver_id": ...}` or `extra={"ride_id": ...}`. Positions are never logged at INFO or
above: where a fix matters, log its driver and seq."""

from __future__ import annotations

import logging
import sys
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class TraceJsonFormatter(JsonFormatter):
    """JSON with `trace_id` and `span_id` of the span active where the record was made."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            log_data["trace_id"] = format(context.trace_id, "032x")
            log_data["span_id"] = format(context.span_id, "016x")


def configure_logging(json_lines: bool, level: int = logging.INFO) -> None:
    """Root logging to stderr: JSON lines for services, plain text for people at a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            TraceJsonFormatter(FORMAT, rename_fields={"asctime": "time", "levelname": "level"})
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
