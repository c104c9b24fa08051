"""Reading topics back in tests: everything from the beginning up to the high watermarks."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from herald.settings import KafkaSettings


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
