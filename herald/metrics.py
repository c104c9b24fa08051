"""Prometheus metrics every service shares (labelled by service), the health of a service
that keeps trying through a fault, and the /metrics, /healthz, /readyz server."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

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


@cache
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per process: for counters updated for every
    record. prometheus_client's ``labels()`` validates, builds a key and takes a lock on each
    call, under the GIL that a sender shares with hundreds of sending threads (about a sixth
    of the SMS sender's Python time at peak, issue 10). Label values are bounded by design
    (channels, statuses, topics); children removed with ``metric.remove`` must not be used
    here (only the consumer-lag gauge does that)."""
    return metric.labels(*values)


AUTH_FAILURES = Counter(
    "herald_auth_failures_total",
    "Requests refused for a wrong credential (unknown API key, forged user token)",
)
AUTH_FAILURES_REFUSED = Counter(
    "herald_auth_failures_limited_total",
    "Requests refused with 429 because their address used up its failed authentications",
)
SERVICE_DEGRADED = Gauge(
    "herald_service_degraded",
    "1 while a service cannot make progress for this reason (it keeps trying; alert on it)",
    ["service", "reason"],
)


class Health:
    """What keeps this process from making progress right now, by service and reason.

    A service that meets a transient fault (database down, broker away, commits refused)
    does not exit: it says so here (``herald_service_degraded`` is 1, ``/readyz`` answers 503
    naming the reason) and keeps trying; :meth:`recovered` clears it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[tuple[str, str], str] = {}

    def degraded(self, service: str, reason: str, detail: str = "") -> None:
        """``service`` cannot make progress because of ``reason`` (e.g. ``database``)."""
        with self._lock:
            new = (service, reason) not in self._problems
            self._problems[(service, reason)] = detail[:300]
        SERVICE_DEGRADED.labels(service, reason).set(1)
        if new:
            log.error("%s degraded: %s", service, reason, extra={"detail": detail[:300]})

    def recovered(self, service: str, reason: str) -> None:
        """``reason`` no longer holds ``service`` back."""
        with self._lock:
            was = self._problems.pop((service, reason), None) is not None
        SERVICE_DEGRADED.labels(service, reason).set(0)
        if was:
            log.info("%s recovered: %s", service, reason)

    def problems(self) -> dict[str, str]:
        """``"service/reason" -> detail`` for every current problem."""
        with self._lock:
            return {f"{s}/{r}": detail for (s, r), detail in self._problems.items()}


#: The process's health (one per process, like the metrics registry).
HEALTH = Health()


@dataclass
class Backoff:
    """Growing pauses between attempts: ``initial`` doubling up to ``maximum``."""

    initial: float = 0.2
    maximum: float = 10.0
    current: float = 0.0

    def next(self) -> float:
        """The pause before the next attempt (and grow the one after)."""
        self.current = self.initial if not self.current else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "application/json", b'{"status": "ok"}')
        elif path == "/readyz":
            problems = HEALTH.problems()
            body = {"status": "degraded" if problems else "ready", "problems": problems}
            self._send(503 if problems else 200, "application/json", json.dumps(body).encode())
        else:
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds would drown the service's own log


#: The interface the metrics server binds (``HERALD_METRICS_HOST``): loopback unless a pod's
#: or container's address must be reachable by Prometheus and the kubelet. The port is
#: unauthenticated (metrics, health): expose it only inside the cluster.
METRICS_HOST_ENV = "HERALD_METRICS_HOST"


def serve_metrics(port: int, host: str | None = None) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` (503 while :data:`HEALTH` has a
    problem) on ``host``:``port`` (0 disables) from a background thread. ``host`` defaults to
    ``HERALD_METRICS_HOST``, else 127.0.0.1."""
    if port:
        host = host or os.environ.get(METRICS_HOST_ENV) or "127.0.0.1"
        server = ThreadingHTTPServer((host, port), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
