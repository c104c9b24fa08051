"""``python -m services.router``: run one router worker until SIGTERM or SIGINT.

Run more copies to share the partitions (one consumer group per topic prefix). On a signal
the worker stops its agents, flushes what they produced, commits, leaves the group and exits.
"""

from __future__ import annotations

import shutil
import sys

import mode.loop
from aiokafka.codec import has_lz4
from faust.worker import Worker

from herald.logs import configure
from herald.metrics import serve_metrics
from herald.observability import KafkaMetrics, dlq_topics_of
from herald.topics import create_declared_topics


def main() -> None:
    """Start the worker: JSON logs, /healthz, /readyz and /metrics, then Faust until told
    to stop."""
    from services.router.runtime import log
    from services.router.settings import RouterSettings

    if RouterSettings().event_loop == "uvloop":
        # Before anything makes a loop: Faust's per-message tasks and futures cost less on it.
        mode.loop.use("uvloop")
    from services.router import agents

    runtime = agents.build()
    router, app = runtime.router, runtime.app
    router_settings, data_dir = router.router_settings, router.data_dir
    configure(router_settings.log_level)
    if not has_lz4():
        # Herald's producers compress with lz4 (herald.streaming.producer_config), and any
        # producer of the public events topic may use lz4, snappy or zstd; without cramjam
        # aiokafka reads none of them and the worker would crash on the first such batch.
        log.critical("aiokafka cannot decompress lz4: install cramjam (the aiokafka[lz4] extra)")
        sys.exit(2)
    create_declared_topics(router.settings.kafka, router.changelog_topics())
    # /healthz, /readyz (false while an agent has crashed or the broker refuses records) and
    # /metrics, on the metrics port.
    serve_metrics(router_settings.metrics_port)
    # herald_consumer_lag of the two routed topics (the group Faust joins is the app id) and
    # herald_dlq_depth of the events DLQ, when served.
    routed = [router.catalogue.events.name, router.catalogue.recipients.name]
    KafkaMetrics.start_for(
        router.settings.kafka,
        group=app.conf.id,
        topics=routed,
        dlq_topics=dlq_topics_of(router.catalogue, routed),
        enabled=router_settings.metrics_port != 0,
    )
    owns_data_dir = router_settings.data_dir is None and not data_dir.exists()
    worker = Worker(
        app,
        loglevel=router_settings.log_level,
        # Keep herald.logs' JSON lines; Faust would install its own handlers.
        override_logging=False,
        quiet=True,
    )
    log.info(
        "router starting",
        extra={"app_id": app.conf.id, "data_dir": str(data_dir), "broker": str(app.conf.broker)},
    )
    try:
        worker.execute_from_commandline()
    finally:
        if owns_data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
