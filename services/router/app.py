"""The router's Faust app, built by :func:`create_router`: its topics and its tables (the
agents are registered on it by services.router.agents.build). Nothing happens at import.

Topic names come from the catalogue, with ``KAFKA_TOPIC_PREFIX``; so does the app id, so that
tests on uuid-prefixed topics never share a consumer group or a changelog topic. Keys and values
travel as raw bytes: records are Avro single-object encoded and decoded by :mod:`herald.serde`.

Tables (in memory, rebuilt at start-up from their changelog topics
``<app id>-<table>-changelog``, see :func:`changelog_topics`) hold the records as they came,
Avro bytes keyed by id:

- ``event_types``: a global table (every worker holds every type), fed from the event types
  topic. Its partition count is that topic's, since the feeding agent writes each change to
  the changelog partition it read it from. Faust applies a global table's standby changes one
  by one; ``recovery_buffer_size=1`` does the same for the partition a worker owns, and keeps
  it read after recovery (Faust's advice for a global table shared by several workers).
- ``known_devices``: each user's devices (services.router.devices), keyed by user id like
  ``users``; written by the recipients agent when it routes a ``user.login``.
- ``digest_windows``: each user's open digest windows (services.router.digests), keyed by user
  id like ``known_devices``; written by that module straight into the store, with its
  changelog records produced as the routed record's outputs.
- ``users`` and ``preferences``: keyed by user id, co-partitioned with the recipients topic
  (same partition count, same murmur2 keying), so the worker that routes a user's records
  holds that user's rows.

The consumer commits the two routed topics from the app's ledger (services.router.ledger).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message
from mode import Service, ServiceT

from herald.settings import KafkaSettings, Settings, get_settings
from schemas import CATALOGUE, Catalogue, TopicDeclaration, TopicSpec
from services.router.ledger import Ledger
from services.router.settings import RouterSettings

#: The ``service`` label of Herald's shared metrics.
SERVICE = "router"

#: How many records the consumer hands to the agents between two yields to the event loop
#: (Faust's own ``_drain_messages`` yields every 100 too).
YIELD_EVERY = 100

#: How long one fetch may wait for records while a partition is held back because its
#: stream buffer is under pressure (see LedgerConsumer._fetch_timeout).
BUFFERED_FETCH_TIMEOUT = 0.01


def broker_url(kafka: KafkaSettings) -> str:
    """``host:port,host2:port2`` as Faust wants it: ``kafka://host:port;kafka://host2:port2``."""
    return ";".join(f"kafka://{server}" for server in kafka.bootstrap_servers.split(","))


def data_dir(router: RouterSettings, app_id: str) -> Path:
    """Faust's data directory: the configured one, else one per process (tables are in
    memory; the directory only has to exist and not be shared)."""
    if router.data_dir is not None:
        return router.data_dir
    return Path(tempfile.gettempdir()) / f"{app_id}-{os.getpid()}"


class RouterConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with the fetch wait of the router's settings.

    Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to
    change it. The broker holds a fetch that finds no data that long, and aiokafka sends no
    other fetch to that broker meanwhile. Faust stops fetching a partition whose stream
    buffer is under pressure, so at peak the fetch in flight often covers only the idle
    partitions (tables, the recipients topic); when the buffer drains, the partitions it
    resumes wait for that fetch to come back. py-spy showed the router idle 0.5 to 1.7 s at a
    time, every few seconds, with 100,000 events waiting on the broker (issue 10)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher.
        consumer._fetch_max_wait_ms = cast(RouterApp, self.app).fetch_max_wait_ms
        return consumer


class LedgerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, committing the routed topics from the app's
    :class:`~services.router.ledger.Ledger` (the tables' topics keep Faust's own
    bookkeeping): see services.router.ledger for why."""

    @property
    def ledger(self) -> Ledger:
        return cast(RouterApp, self.app).ledger

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return RouterConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        # Positioned at the committed offsets (None: none yet, so the log's start).
        self.ledger.assigned({tp: self._committed_offset.get(tp) for tp in self.assignment()})

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.ledger.revoked(revoked)
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        """Faust's fetch loop (``faust.transport.consumer.Consumer._drain_messages``, 0.15.3)
        with one change: a fetched batch is handed to the agents' channels in one task that a
        flow suspension (a rebalance) cancels, instead of one ``wait_first`` per record.
        Faust's ``wait_first`` makes four tasks and an ``asyncio.wait`` for every record,
        about a tenth of the router's CPU at peak (issue 10). What a suspension does is
        unchanged: delivery stops there, and the records not delivered are fetched again
        after the seek to the committed offsets that follows every rebalance."""
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                batch = [item async for item in self.getmany(timeout=self._fetch_timeout())]
                # Yield at least once a fetch: getmany may return at once, again and again.
                await self.sleep(0)
                if batch and not self.should_stop:
                    commit_every = self._commit_every
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await self.wait_first(self._deliver(batch), self.suspend_flow.wait())
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def _fetch_timeout(self) -> float:
        """How long a fetch may wait for records. Faust's loop waits up to a second; but a
        partition whose stream buffer is under pressure is left out of the fetch, and is not
        taken again before the fetch returns, however soon its agent drains the buffer. After
        a large batch that was every time: the agent idled while the fetch waited a second
        for records of the idle partitions alone (issue 10). So while a partition is held
        back, fetch with a short wait and look again."""
        return BUFFERED_FETCH_TIMEOUT if self._buffered_partitions else 1.0

    async def _deliver(self, batch: list[tuple[TP, Message]]) -> None:
        """Hand each record of a fetched batch to its channels (the conductor's callback), as
        Faust's loop does for one record: skip what is behind the read offset, note gaps in
        acked topics, and stop if the flow is suspended or the generation changes."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        generation = self.app.consumer_generation_id
        for index, (tp, message) in enumerate(batch, 1):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(tp.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                await callback(message)
                read_offset[tp] = offset
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Any:
        yield from super()._filter_tps_with_pending_acks(topics)
        for tp in self.ledger.owned():
            if topics is None or tp in topics or tp.topic in topics:
                yield tp

    def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
        tps = set(tps)
        own = {tp for tp in tps if self.ledger.tracks(tp)}
        offsets = super()._filter_committable_offsets(tps - own)
        for tp in own:
            offset = self.ledger.committable(tp)
            if offset is not None and self._should_commit(tp, offset):
                offsets[tp] = offset
        return offsets


class LedgerTransport(faust_aiokafka.Transport):
    Consumer = LedgerConsumer


class RouterApp(faust.App):
    """Faust's app with the :class:`LedgerConsumer` and its ledger."""

    ledger: Ledger
    #: The aiokafka consumer's ``fetch_max_wait_ms`` (see :class:`RouterConsumerThread`).
    fetch_max_wait_ms: int = 100

    def _new_transport(self) -> Any:
        return LedgerTransport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        """Faust's, less its Monitor sensor unless the web server (whose views read it) is on:
        the monitor keeps per-event stats (every event in and out, every table read) that
        the router's own Prometheus metrics make redundant, at about 2.5 % of its CPU at
        peak (issue 10). The consumer still updates the monitor object directly."""
        dependencies = super().on_init_dependencies()
        if not self.conf.web_enabled:
            self.sensors.remove(self.monitor)
        return dependencies


@dataclass
class Router:
    """One router worker's Faust app with its topics and tables (see the module docstring)."""

    settings: Settings
    router_settings: RouterSettings
    catalogue: Catalogue
    app: RouterApp
    data_dir: Path
    events_topic: faust.TopicT
    event_types_topic: faust.TopicT
    users_topic: faust.TopicT
    preferences_topic: faust.TopicT
    recipients_topic: faust.TopicT
    event_types: Any
    users: Any
    preferences: Any
    known_devices: Any
    #: Open digest windows by user id (services.router.digests), written by that module only.
    digest_windows: Any = None

    @property
    def ledger(self) -> Ledger:
        return self.app.ledger

    def changelog_topics(self) -> list[TopicDeclaration]:
        """The tables' changelog topics, declared as Faust declares them (compacted, one
        partition per partition of the table).

        Faust creates missing ones itself, but the group leader may compute the assignment
        before its metadata shows a topic it has just created, and then leaves the topic out:
        a table never recovers, and a global table's assignment fails and the worker hangs.
        So the router creates them first (herald.topics.create_declared_topics waits until
        they are served).
        """
        catalogue = self.catalogue
        tables: list[tuple[Any, TopicSpec]] = [
            (self.event_types, catalogue.event_types),
            (self.users, catalogue.users),
            (self.preferences, catalogue.preferences),
            (self.known_devices, catalogue.recipients),
            (self.digest_windows, catalogue.recipients),
        ]
        return [
            TopicDeclaration(
                table.changelog_topic.get_topic_name(),
                spec.partitions,
                spec.replication_factor,
                {"cleanup.policy": "compact", **_changelog_configs(spec)},
            )
            for table, spec in tables
        ]


def _changelog_configs(spec: TopicSpec) -> dict[str, str]:
    # The same compaction settings as the catalogue's compacted topics: Kafka's defaults would
    # leave a changelog uncompacted for a week and make every restart re-read all of it.
    return dict(spec.compact_config)


def create_router(
    settings: Settings | None = None, router_settings: RouterSettings | None = None
) -> Router:
    """The app, its topics and tables, from the environment unless given. Nothing connects
    until the worker starts."""
    settings = settings or get_settings()
    router_settings = router_settings or RouterSettings()
    catalogue = CATALOGUE.with_prefix(settings.kafka.topic_prefix)
    app_id = f"{settings.kafka.topic_prefix}herald-router"
    directory = data_dir(router_settings, app_id)
    session_timeout_s = settings.kafka.session_timeout_ms / 1000
    app = RouterApp(
        app_id,
        broker=broker_url(settings.kafka),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(directory),
        # Tables without an explicit count (none today) and Faust's own topics follow the user
        # tables, which the catalogue keeps co-partitioned.
        topic_partitions=catalogue.users.partitions,
        topic_replication_factor=catalogue.users.replication_factor,
        # Faust must create its changelog topics (the broker does not auto-create topics); it
        # never creates the catalogue's topics, which are not internal.
        topic_allow_declare=True,
        # No leader election topic: nothing here needs a leader.
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=max(session_timeout_s / 4, 0.5),
        broker_commit_interval=router_settings.commit_interval_ms / 1000,
        # Do not wait, on a rebalance or a stop, until every record being routed is finished:
        # a record can be held for long (the broker refuses its output, PostgreSQL is down for
        # a quiet-hours hold, the DLQ-flood guard tripped), and Faust's wait has no time
        # limit, so the worker would miss the rebalance or never stop. Nothing is lost by not
        # waiting: the ledger commits only finished records (services.router.ledger), and the
        # rest is routed again by the partition's next owner (the outputs have deterministic
        # ids; the consumers downstream are idempotent).
        stream_wait_empty=False,
        # Faust's own producer writes only the tables' changelogs (the agents' output goes
        # through services.router.outputs).
        producer_linger=router_settings.producer_linger_ms / 1000,
        web_enabled=router_settings.web_port != 0,
        web_port=router_settings.web_port or 6066,
        web_bind=router_settings.web_bind,
        web_host=router_settings.web_bind,
        # Faust reads its settings from ROUTER_FAUST_<NAME> (e.g. ROUTER_FAUST_WEB_PORT), never
        # from unprefixed variables another program may have set.
        env_prefix="ROUTER_FAUST",
    )
    #: Finished offsets of the two routed topics; the only source of their commits.
    app.fetch_max_wait_ms = router_settings.fetch_max_wait_ms
    app.ledger = Ledger(
        (catalogue.events.name, catalogue.recipients.name),
        repair_after=router_settings.repair_after_ms / 1000,
    )

    def topic(spec: TopicSpec) -> faust.TopicT:
        # allow_empty: tombstones (null values) reach the agents, which treat them explicitly.
        return app.topic(spec.name, key_type=bytes, value_type=bytes, allow_empty=True)

    def table(name: str, spec: TopicSpec, help: str, **kwargs: Any) -> Any:
        return app.Table(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=spec.partitions,
            extra_topic_configs=_changelog_configs(kwargs.pop("configs", spec)),
            help=help,
            **kwargs,
        )

    return Router(
        settings=settings,
        router_settings=router_settings,
        catalogue=catalogue,
        app=app,
        data_dir=directory,
        events_topic=topic(catalogue.events),
        event_types_topic=topic(catalogue.event_types),
        users_topic=topic(catalogue.users),
        preferences_topic=topic(catalogue.preferences),
        recipients_topic=topic(catalogue.recipients),
        event_types=app.GlobalTable(
            "event_types",
            key_type=bytes,
            value_type=bytes,
            partitions=catalogue.event_types.partitions,
            recovery_buffer_size=1,
            extra_topic_configs=_changelog_configs(catalogue.event_types),
            help="herald.EventType records (Avro bytes) by event type code.",
        ),
        users=table("users", catalogue.users, "herald.User records (Avro bytes) by user id."),
        preferences=table(
            "preferences",
            catalogue.preferences,
            "herald.Preferences records (Avro bytes) by user id.",
        ),
        # Written by stage 2, so its changelog partitions are the recipients topic's, which the
        # catalogue keeps equal to the users topic's.
        known_devices=table(
            "known_devices",
            catalogue.recipients,
            "Each user's known devices (JSON, see services.router.devices) by user id.",
            configs=catalogue.users,
        ),
        # Like known_devices: keyed by user id, on the recipients topic's partitions.
        digest_windows=table(
            "digest_windows",
            catalogue.recipients,
            "Each user's open digest windows (JSON, see services.router.digests) by user id.",
            configs=catalogue.users,
        ),
    )
