"""The work one worker does for all, on the worker holding partition 0 of the recipients topic
(:meth:`~services.router.runtime.Runtime.leads`):

- ``release_held``: a timer (``ROUTER_QUIET_RELEASE_INTERVAL_MS``) producing the held
  deliveries whose quiet hours have ended to their channel topics (services.router.holds);
- ``weekly_digest``: a crontab (``ROUTER_DIGEST_CRON``) publishing the weekly digest events
  (herald.digest);
- ``retention``: a crontab (``RETENTION_CRON``) deleting what is past its retention age
  (herald.retention).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from herald.digest import run_digest
from herald.metrics import ERRORS
from herald.retention import RetentionSettings, run_retention
from services.router.app import SERVICE
from services.router.runtime import Runtime, log


def register(runtime: Runtime) -> None:
    """Add the leader's timers to the worker's app."""
    router = runtime.router
    own = router.router_settings

    async def release_held() -> None:
        """Produce the held deliveries whose quiet hours have ended; one worker only (the rows
        are locked ``SKIP LOCKED``, so two would not collide either)."""
        if not runtime.leads():
            return
        batch = own.quiet_release_batch
        try:
            while True:
                released = await asyncio.to_thread(runtime.hold_store.release_due, batch)
                if released:
                    log.info("held deliveries released", extra={"count": released})
                if released < batch:
                    return
        except Exception:  # the next tick tries again; the rows are still there
            ERRORS.labels(SERVICE, "quiet_hours.release").inc()
            log.exception("releasing held deliveries failed")

    router.app.timer(own.quiet_release_interval_ms / 1000, name="release_held")(release_held)

    if own.digest_cron:

        async def weekly_digest() -> None:
            """Publish every user's weekly digest event (herald.digest); one worker only."""
            if not runtime.leads():
                return
            try:
                digests = await asyncio.to_thread(run_digest, router.settings, datetime.now(UTC))
            except Exception:  # a failed run must not stop the router; the next one retries
                log.exception("weekly digest failed")
                return
            log.info("weekly digest published", extra={"users": len(digests)})

        router.app.crontab(own.digest_cron, timezone=UTC)(weekly_digest)

    retention = RetentionSettings()
    if retention.cron:

        async def apply_retention() -> None:
            """Delete what is past its retention age, in batches; one worker only."""
            if not runtime.leads():
                return
            try:
                report = await asyncio.to_thread(
                    run_retention, router.settings.database, datetime.now(UTC), retention
                )
            except Exception:  # the next run deletes what this one left
                ERRORS.labels(SERVICE, "retention").inc()
                log.exception("retention run failed")
                return
            log.info("retention run done", extra={"rows": report.rows})

        router.app.crontab(retention.cron, timezone=UTC)(apply_retention)
