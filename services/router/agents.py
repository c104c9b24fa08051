"""The router worker, assembled by :func:`build`: the Faust app and its tables
(services.router.app), the shared plumbing (services.router.runtime), and the agents, each in
its module:

- stage 1, ``expand_events`` (services.router.stage1): events → recipients, routed here when
  this worker holds the user's tables, else written to ``herald.recipients.v1``;
- stage 2, ``route_recipients`` (services.router.stage2): recipients → notification, delivery
  requests and statuses, from the user, preferences and event type tables;
- the table feeders (services.router.tables);
- the leader's timers: releasing quiet-hours holds, the weekly digest (services.router.leader);
- ``serve_outputs`` and ``repair_gaps`` (below).

Poison (undecodable bytes, an unknown schema, an unknown or inactive event type, an unknown
user, a template that cannot render) goes to the events DLQ with the design's ``x-*`` headers;
the stream goes on. Both stages iterate their streams without Faust's automatic acks and hand
what each record made to :class:`services.router.outputs.Outputs`: one confluent-kafka
producer, pipelined, which reports a record finished to the ledger (services.router.ledger)
only when the broker acknowledged every record it produced. Every
``ROUTER_COMMIT_INTERVAL_MS`` the consumer commits, per partition, up to the first record not
finished, so a commit never runs ahead of the output (at least once; every output has a
deterministic id and the consumers downstream are idempotent). ``repair_gaps`` routes the
records a stream skipped, read from the broker, so that no skip holds a partition back.

Nothing happens at import: ``build()`` makes the app and registers everything on it.
"""

from __future__ import annotations

import time
from typing import Any

from faust.types import TP
from faust.types.tuples import Message
from prometheus_client import Counter

from herald.settings import Settings
from services.router import digests, leader, stage1, stage2, tables
from services.router.app import create_router
from services.router.repair import GapReader, repair
from services.router.runtime import Runtime, log
from services.router.settings import RouterSettings

REPAIRED = Counter(
    "herald_router_gap_records_total",
    "Records the router's stream skipped and the router routed from the broker instead "
    "(services.router.ledger); each is a Faust skip that would otherwise hold a commit back.",
    ["topic"],
)


def build(
    settings: Settings | None = None, router_settings: RouterSettings | None = None
) -> Runtime:
    """One router worker: the app with every agent, task and timer registered."""
    runtime = Runtime(create_router(settings, router_settings))
    app = runtime.app
    recipients = runtime.router.recipients_topic.get_topic_name()
    stage1.register(runtime)
    stage2.register(runtime)
    tables.register(runtime)
    leader.register(runtime)
    digests.register(runtime)

    def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        runtime.ready_at = time.time()
        mine = sorted(tp.partition for tp in assigned if tp.topic == recipients)
        # Operators (and the multi-worker test) read who routes which users from this line.
        log.info("partitions assigned", extra={"recipients_partitions": mine})

    # mode's handler type (mypy_extensions NamedArg in a Union) matches no plain function.
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    async def serve_outputs() -> None:
        """Serve the producer's delivery reports: finish the records whose outputs are on the
        broker, produce refused records again."""
        await runtime.outputs.serve()

    app.task(serve_outputs)

    gap_reader = GapReader(runtime.router.settings.kafka, f"{app.conf.id}-gaps")
    for topic in (runtime.router.events_topic.get_topic_name(), recipients):
        REPAIRED.labels(topic)  # exported at 0 from the start

    async def route_gap_record(message: Message) -> None:
        REPAIRED.labels(message.topic).inc()
        await runtime.stages[message.topic].route(message)

    async def repair_gaps() -> None:
        """Route the records a stream skipped (services.router.ledger, .repair)."""
        await repair(runtime.ledger, gap_reader, route_gap_record, time.monotonic())

    app.timer(0.5, name="repair_gaps")(repair_gaps)

    async def flush_outputs(app: Any, **kwargs: Any) -> None:
        """On stop, wait for what was produced (finished records are committed by the final
        commit; the rest is consumed again by the next owner)."""
        runtime.outputs.flush(10.0)  # on the loop's thread: the reports' callbacks run here
        await runtime.outputs.serve_once(0)

    app.on_before_shutdown.connect(flush_outputs)  # type: ignore[arg-type]
    return runtime
