"""``herald dlq replay`` and ``herald publish`` report what Kafka really accepted (issue 9,
item 6): a refused replay exits non-zero and leaves its dead letter on the DLQ, even with
``--purge``; a refused publish is not reported as published."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from herald import dlq
from herald.headers import H_ERROR_CLASS, H_ORIGINAL_TOPIC
from herald.settings import KafkaSettings
from herald.streaming import headers_dict, producer_config
from herald.topics import delete_topics
from schemas import Catalogue
from tests.integration.delivery_util import herald_dlq
from tests.integration.kafka_util import read_all

pytestmark = pytest.mark.integration

#: Larger than the retry tier accepts once the test lowers its max.message.bytes.
BIG = os.urandom(20_000)  # random: compression cannot shrink it under the limit


def limit(kafka: KafkaSettings, topic: str, max_bytes: int) -> None:
    """Make the broker refuse records larger than ``max_bytes`` on ``topic``."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    entry = ConfigEntry(
        "max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result()


def put_dead_letters(
    kafka: KafkaSettings, topics: Catalogue, values: list[bytes], keys: list[str] | None = None
) -> None:
    spec = topics.deliveries_sms
    producer = Producer(producer_config(kafka))
    for value, key in zip(values, keys or ["user-1"] * len(values), strict=True):
        producer.produce(
            spec.dlq_name,
            key=key,
            value=value,
            headers=[(H_ORIGINAL_TOPIC, spec.name), (H_ERROR_CLASS, "sms.5xx")],
        )
    assert producer.flush(10) == 0


def test_a_refused_replay_fails_and_its_dead_letter_stays(
    kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    spec = topics.deliveries_sms
    tier = spec.retry_topic_names[0]
    limit(kafka_settings, tier, 10_000)
    # Two keys on two partitions: in one partition the broker would refuse the whole batch.
    put_dead_letters(kafka_settings, topics, [b"small", BIG], keys=["user-1", "user-3"])

    result = herald_dlq(kafka_settings, "replay", "--purge")

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "2 matched, replayed 1" in result.stdout
    assert "NOT acknowledged by Kafka 1" in result.stdout
    assert f"{spec.dlq_name}[" in result.stdout and "not replayed" in result.stdout
    assert "still on the DLQ" in result.stderr
    assert [m.value() for m in read_all(kafka_settings, tier)] == [b"small"]
    # --purge deleted the acknowledged letter only; the refused one is still there.
    assert [letter.value for letter in dlq.scan(kafka_settings, [spec.dlq_name])] == [BIG]


def test_a_replay_to_a_missing_topic_fails_and_nothing_is_purged(
    kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    spec = topics.deliveries_sms
    put_dead_letters(kafka_settings, topics, [b"one", b"two"])
    delete_topics(kafka_settings, [spec.retry_topic_names[0]])

    result = herald_dlq(kafka_settings, "replay", "--purge", "--timeout", "5")

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "replayed 0" in result.stdout and "NOT acknowledged by Kafka 2" in result.stdout
    left = read_all(kafka_settings, spec.dlq_name)
    assert [m.value() for m in left] == [b"one", b"two"]
    assert {headers_dict(m)[H_ERROR_CLASS] for m in left} == {"sms.5xx"}


def test_publish_reports_a_refusal(kafka_settings: KafkaSettings, topics: Catalogue) -> None:
    """The events topic refuses the record (too large for it): not "published"."""
    limit(kafka_settings, topics.events.name, 10_000)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
    }
    blob = base64.b64encode(os.urandom(45_000)).decode()
    result = subprocess.run(
        [sys.executable, "-m", "herald.cli.main", "publish", "comment.created",
         "--to", "user-1", "--context", f"blob={blob}"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "published" not in result.stdout
    assert "did not acknowledge" in result.stderr and "too large" in result.stderr
    assert read_all(kafka_settings, topics.events.name) == []
