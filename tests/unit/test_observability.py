"""JSON logs with trace ids and call-site ids, and the status report's arithmetic on scraped
metrics."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.observability.logs import TraceJsonFormatter, configure_logging
from services.ops.status import Samples, histogram_quantile, total


def _json_line(record_logger: logging.Logger, stream: io.StringIO) -> dict[str, object]:
    line = stream.getvalue().strip().splitlines()[-1]
    parsed: dict[str, object] = json.loads(line)
    return parsed


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        TraceJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level"},
        )
    )
    logger = logging.getLogger("ridemesh.test.json")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_a_log_line_is_one_json_object_with_the_ids_the_call_site_adds(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.warning("driver %s is slow", "d-1", extra={"driver_id": "d-1"})
    line = _json_line(logger, stream)
    assert line["message"] == "driver d-1 is slow"
    assert line["level"] == "WARNING"
    assert line["name"] == "ridemesh.test.json"
    assert line["driver_id"] == "d-1"
    assert "time" in line
    assert "trace_id" not in line  # no span active


def test_a_log_line_inside_a_span_carries_its_trace_and_span_ids(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("RequestRide") as span:
        logger.info("dispatching", extra={"ride_id": "r-1"})
        context = span.get_span_context()
    line = _json_line(logger, stream)
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["ride_id"] == "r-1"


def test_configure_logging_installs_one_handler_in_the_chosen_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(json_lines=True)
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, TraceJsonFormatter)
        configure_logging(json_lines=False)
        assert not isinstance(root.handlers[0].formatter, TraceJsonFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def _buckets(name: str, counts: dict[float, float]) -> Samples:
    return {(f"{name}_bucket", (("le", str(le)),)): v for le, v in counts.items()}


def test_the_quantile_comes_from_the_buckets_filled_between_two_scrapes() -> None:
    inf = float("inf")
    before = _buckets("lag", {0.5: 10, 1.0: 10, 2.0: 10, inf: 10})
    after = _buckets("lag", {0.5: 10, 1.0: 60, 2.0: 109, inf: 110})  # 100 new: 50 <=1, 49 <=2
    assert histogram_quantile(before, after, "lag", 0.5) == 1.0
    assert histogram_quantile(before, after, "lag", 0.99) == 2.0
    assert histogram_quantile(before, after, "lag", 1.0) == inf
    # Nothing new between the scrapes: since the start.
    assert histogram_quantile(after, after, "lag", 0.5) == 1.0
    assert histogram_quantile({}, {}, "lag", 0.5) is None


def test_total_sums_the_samples_whose_labels_match() -> None:
    samples: Samples = {
        ("rpc", (("code", "OK"), ("method", "A"))): 3.0,
        ("rpc", (("code", "OK"), ("method", "B"))): 4.0,
        ("rpc", (("code", "NOT_FOUND"), ("method", "A"))): 5.0,
        ("other", ()): 100.0,
    }
    assert total(samples, "rpc") == 12.0
    assert total(samples, "rpc", code="OK") == 7.0
    assert total(samples, "rpc", code="OK", method="A") == 3.0
    assert total(samples, "missing") == 0.0
