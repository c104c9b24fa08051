"""Prometheus metrics every service shares (labelled by service), and the /metrics server."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECORDS_IN = Counter("herald_records_in_total", "Records consumed", ["service", "topic"])
RECORDS_OUT = Counter("herald_records_out_total", "Records produced", ["service", "topic"])
ERRORS = Counter(
    "herald_errors_total", "Records that failed, by error class", ["service", "error_class"]
)
PROCESSING_SECONDS = Histogram(
    "herald_batch_processing_seconds",
    "Time to process one consumed batch, commit included",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "herald_batch_size",
    "Records per consumed batch",
    ["service"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
DELIVERIES = Counter(
    "herald_deliveries_total", "Delivery outcomes by channel and status", ["channel", "status"]
)


def serve_metrics(port: int) -> None:
    """Expose /metrics on ``port`` (0 disables) from a background thread."""
    if port:
        start_http_server(port, addr="127.0.0.1")
