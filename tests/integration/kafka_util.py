"""Reading topics back in tests: everything from the beginning up to the high watermarks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from herald.settings import KafkaSettings
from schemas import Catalogue


def read_all(kafka: KafkaSettings, topic: str, timeout: float = 20.0) -> list[Message]:
    """Every record now in ``topic`` (all partitions), in partition/offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {p: _high_watermark(consumer, topic, p) for p in partitions}
        wanted = {p: end for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        out: list[Message] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} records of {topic}, partitions {done} done")
            for message in consumer.consume(500, 0.5):
                if message.error():
                    continue
                out.append(message)
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= wanted[partition]:
                    done.add(partition)
        return sorted(out, key=lambda m: (m.partition() or 0, m.offset() or 0))
    finally:
        consumer.close()


def _high_watermark(consumer: Consumer, topic: str, partition: int, timeout: float = 15.0) -> int:
    """The partition's end offset; retried while a just-created topic's leadership settles
    (the broker may briefly answer NOT_LEADER_FOR_PARTITION)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), 5)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def committed_and_end(
    kafka: KafkaSettings, group: str, topics: list[str]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Per partition of ``topics``: the offset ``group`` committed (negative when it never
    committed there) and the end offset. Committed offsets are read first, so records the
    group's own service produces to these topics before it commits are counted too."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        committed = consumer.committed(partitions, 10)
        return {
            (tp.topic, tp.partition): (tp.offset, consumer.get_watermark_offsets(tp, 10)[1])
            for tp in committed
        }
    finally:
        consumer.close()


def committed_to_end(kafka: KafkaSettings, group: str, topics: list[str]) -> bool:
    """Whether ``group`` has committed every record now on ``topics`` (a partition that never
    held a record has nothing to commit; its committed offset stays unset)."""
    offsets = committed_and_end(kafka, group, topics).values()
    return all(end == 0 or committed >= end for committed, end in offsets)


def downstream_caught_up(
    kafka: KafkaSettings, catalogue: Catalogue, channels: Sequence[str]
) -> bool:
    """Whether the senders of ``channels`` and then the in-app store have committed every
    record now on the topics they consume (a sender's deliveries topic and its retry tiers;
    the store's notifications, in-app and status topics). Each commits a batch only once its
    effects are done (sent, statuses acknowledged, rows committed: herald.streaming.BatchLoop),
    so whatever reached those topics before the call has had its effects when this is true:
    a test that waits for "nothing more happens" downstream polls this instead of sleeping."""
    prefix = kafka.topic_prefix
    for channel in channels:
        spec = catalogue.for_channel(channel)
        topics = [spec.name, *spec.retry_topic_names]
        if not committed_to_end(kafka, f"{prefix}{channel}_sender", topics):
            return False
    store = [
        catalogue.notifications.name,
        catalogue.for_channel("inapp").name,
        catalogue.delivery_status.name,
    ]
    return committed_to_end(kafka, f"{prefix}inapp_store", store)


#: Broker answers that pass on their own (a fresh topic's leader settling, a slow broker).
_PASSING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}


def poll_safely(check: Callable[[], bool]) -> Callable[[], bool]:
    """``check`` for ``wait_for``, answering False (look again) when the broker briefly cannot
    answer, instead of failing the test on a busy shared broker."""

    def safe() -> bool:
        try:
            return check()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and (error.retriable() or error.code() in _PASSING):
                return False
            raise

    return safe
