"""What an operator watches that no single record tells: consumer lag, DLQ depth, and how long a
delivery takes from the event's publication to its final status.

- :class:`KafkaMetrics` is a background thread each consuming service starts next to its
  metrics server. Every ``HERALD_KAFKA_METRICS_INTERVAL_SECONDS`` (15) it asks Kafka — two
  ``ListOffsets`` and one ``OffsetFetch`` request, never the consumer itself — for its group's
  committed offsets and the end offsets of the partitions it consumes, and for the start and end
  offsets of the dead-letter topics it writes, and sets
  ``herald_consumer_lag{group,topic,partition}`` (end offset - committed offset; the whole log
  when the group committed nothing) and ``herald_dlq_depth{topic}`` (records on the DLQ: end -
  start offset, summed over its partitions). This is what ``kafka-consumer-groups`` and KEDA
  compute, so the numbers agree with theirs; every replica of a service reports the whole
  group (take ``max`` across instances).
- ``x-published-at`` (:data:`H_PUBLISHED_AT`, epoch seconds) is stamped by the router on every
  record it makes from an event: the Kafka timestamp of the event's record, i.e. when it was
  published. Retry tiers keep it (headers Herald does not own pass through), so the sender or
  inapp_store that decides a delivery's final status observes
  ``herald_delivery_latency_seconds{channel,status}`` (:func:`observe_final`). The header is
  informational: an unreadable one is ignored, never poison.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import Gauge, Histogram
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from herald.metrics import labelled
from herald.settings import KafkaSettings
from schemas import Catalogue, UnknownTopicError

log = logging.getLogger(__name__)

#: When the event a record comes from was published (epoch seconds, the event record's Kafka
#: timestamp), stamped by the router on everything it makes from the event.
H_PUBLISHED_AT = "x-published-at"

CONSUMER_LAG = Gauge(
    "herald_consumer_lag",
    "Records on a partition the consumer group has not committed yet (end offset - committed "
    "offset), as Kafka reports them",
    ["group", "topic", "partition"],
)
DLQ_DEPTH = Gauge(
    "herald_dlq_depth",
    "Records on a dead-letter topic (end offset - start offset over its partitions)",
    ["topic"],
)
KAFKA_METRICS_UPDATED = Gauge(
    "herald_kafka_metrics_updated_timestamp_seconds",
    "When herald_consumer_lag and herald_dlq_depth were last read from Kafka",
    ["group"],
)
DELIVERY_LATENCY = Histogram(
    "herald_delivery_latency_seconds",
    "From the event's publication (its record's Kafka timestamp) to the delivery's final "
    "status (sent, delivered, failed, dead), retries included",
    ["channel", "status"],
    buckets=(
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
        900,
        1800,
        3600,
        7200,
    ),
)


def published_at(headers: Any) -> float | None:
    """The ``x-published-at`` of a record's headers (a list of pairs or a mapping), or None
    when absent or unreadable."""
    if not headers:
        return None
    pairs = headers.items() if hasattr(headers, "items") else headers
    try:
        for name, value in pairs:
            if name == H_PUBLISHED_AT and value is not None:
                text = value.decode() if isinstance(value, bytes) else str(value)
                when = float(text)
                return when if 0 < when < 1e11 else None
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return None


def publication_header(message: Any) -> tuple[str, bytes] | None:
    """The ``x-published-at`` header for what the router makes from ``message`` (a Faust
    message): the one it carries already (a recipient's copy of an event), else its Kafka
    timestamp; None when neither is known."""
    when = published_at(getattr(message, "headers", None))
    if when is None:
        timestamp = getattr(message, "timestamp", None)
        if not isinstance(timestamp, int | float) or timestamp <= 0:
            return None
        when = float(timestamp)
    return (H_PUBLISHED_AT, f"{when:.3f}".encode())


def observe_final(channel: str, status: str, headers: Any, now: float | None = None) -> None:
    """Observe ``herald_delivery_latency_seconds`` for a delivery that reached its final
    ``status``, when its record carries ``x-published-at``."""
    when = published_at(headers)
    if when is not None:
        elapsed = (time.time() if now is None else now) - when
        labelled(DELIVERY_LATENCY, channel, status).observe(max(0.0, elapsed))


def observe_published(
    channel: str, status: str, published: Iterable[float], now: float | None = None
) -> None:
    """Observe ``herald_delivery_latency_seconds`` for deliveries published at ``published``
    (``x-published-at`` values already read) that reached their final ``status`` now."""
    now = time.time() if now is None else now
    histogram = labelled(DELIVERY_LATENCY, channel, status)
    for when in published:
        histogram.observe(max(0.0, now - when))


def dlq_topics_of(catalogue: Catalogue, topics: Iterable[str]) -> list[str]:
    """The dead-letter topics that records of ``topics`` (retry tiers included) go to."""
    found: list[str] = []
    for topic in topics:
        try:
            spec = catalogue.by_name(topic)
        except UnknownTopicError:
            continue
        if spec.dlq and spec.dlq_name not in found:
            found.append(spec.dlq_name)
    return found


class KafkaMetricsSettings(BaseSettings):
    """``HERALD_KAFKA_METRICS_INTERVAL_SECONDS``: how often lag and DLQ depth are read
    (0: never)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_KAFKA_METRICS_", extra="ignore")

    interval_seconds: float = Field(default=15.0, ge=0, le=3600)


class KafkaMetrics:
    """Reads one consumer group's lag and some DLQs' depth from Kafka, on a daemon thread."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        group: str,
        topics: Sequence[str],
        dlq_topics: Sequence[str] = (),
        interval: float = 15.0,
        timeout: float = 10.0,
    ) -> None:
        self.group = group
        self.topics = list(topics)
        self.dlq_topics = list(dlq_topics)
        self.interval = interval
        self.timeout = timeout
        self._admin = AdminClient(
            {"bootstrap.servers": kafka.bootstrap_servers, "client.id": f"{group}-metrics"}
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lag_labels: set[tuple[str, str, str]] = set()
        self._failing = False

    @classmethod
    def start_for(
        cls,
        kafka: KafkaSettings,
        *,
        group: str,
        topics: Sequence[str],
        dlq_topics: Sequence[str] = (),
        enabled: bool = True,
    ) -> KafkaMetrics | None:
        """Start reading (every ``HERALD_KAFKA_METRICS_INTERVAL_SECONDS``) unless disabled
        there or by ``enabled`` (a service without a metrics port); the running monitor."""
        interval = KafkaMetricsSettings().interval_seconds
        if not enabled or interval <= 0:
            return None
        monitor = cls(kafka, group=group, topics=topics, dlq_topics=dlq_topics, interval=interval)
        monitor.start()
        return monitor

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.collect()
            except Exception as exc:  # the broker away, a topic not created yet: try later
                if not self._failing:
                    log.warning(
                        "could not read consumer lag and DLQ depth from Kafka; trying again",
                        extra={"group": self.group, "error": str(exc)[:300]},
                    )
                self._failing = True
            else:
                if self._failing:
                    log.info(
                        "reading consumer lag and DLQ depth again", extra={"group": self.group}
                    )
                self._failing = False
            self._stop.wait(self.interval)

    def _partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        partitions: list[TopicPartition] = []
        for topic in topics:
            metadata = self._admin.list_topics(topic=topic, timeout=self.timeout)
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                continue  # not created (yet): nothing to report
            partitions += [TopicPartition(topic, p) for p in sorted(info.partitions)]
        return partitions

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[Any, int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets(
            {TopicPartition(tp.topic, tp.partition): spec for tp in partitions},
            request_timeout=self.timeout,
        )
        return {
            (tp.topic, tp.partition): future.result(self.timeout).offset
            for tp, future in futures.items()
        }

    def collect(self) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
        """Read and set the metrics once; return (lag by (topic, partition), depth by DLQ)."""
        consumed = self._partitions(self.topics)
        dlq = self._partitions(self.dlq_topics)
        end = self._offsets(consumed + dlq, OffsetSpec.latest())
        start = self._offsets(consumed + dlq, OffsetSpec.earliest())
        committed: dict[tuple[str, int], int] = {}
        if consumed:
            request = ConsumerGroupTopicPartitions(self.group, consumed)
            futures = self._admin.list_consumer_group_offsets(
                [request], request_timeout=self.timeout
            )
            result = futures[self.group].result(self.timeout)
            committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
        lag: dict[tuple[str, int], int] = {}
        for tp in consumed:
            key = (tp.topic, tp.partition)
            high, low = end.get(key, 0), start.get(key, 0)
            position = committed.get(key, -1)
            lag[key] = max(0, high - (position if position >= 0 else low))
        depth: dict[str, int] = {topic: 0 for topic in {tp.topic for tp in dlq}}
        for tp in dlq:
            key = (tp.topic, tp.partition)
            depth[tp.topic] += max(0, end.get(key, 0) - start.get(key, 0))
        labels = set()
        for (topic, partition), value in lag.items():
            label = (self.group, topic, str(partition))
            CONSUMER_LAG.labels(*label).set(value)
            labels.add(label)
        for gone in self._lag_labels - labels:
            CONSUMER_LAG.remove(*gone)
        self._lag_labels = labels
        for topic, value in depth.items():
            DLQ_DEPTH.labels(topic).set(value)
        KAFKA_METRICS_UPDATED.labels(self.group).set(time.time())
        return lag, depth
