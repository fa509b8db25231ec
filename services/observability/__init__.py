"""What an on-call engineer sees: Prometheus metrics, OpenTelemetry traces and JSON logs."""
