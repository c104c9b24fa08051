"""The whole pipeline as real processes, for end-to-end tests: see the ``pipeline`` fixture in
conftest.py. The handle it yields is :class:`herald.demo.System` (the one ``herald demo`` uses),
bound to the test's own topics and schema."""

from __future__ import annotations

from herald.demo import System
from herald.devstack.process import free_port
from tests.integration.delivery_util import wait_for

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
