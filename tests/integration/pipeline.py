"""The whole pipeline as real processes, for end-to-end tests: see the ``pipeline`` fixture in
conftest.py. The handle it yields is :class:`herald.demo.System` (the one ``herald demo`` uses),
bound to the test's own topics and schema."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from herald.demo import System

__all__ = ["PIPELINE_SERVICES", "Pipeline", "free_port", "wait_for"]

#: What an end-to-end test runs: every service (the read API too).
PIPELINE_SERVICES = (
    "services.inapp_store",
    "services.router",
    "services.email_sender",
    "services.sms_sender",
    "services.ingest",
    "services.inapp_store.api",
)

Pipeline = System


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
