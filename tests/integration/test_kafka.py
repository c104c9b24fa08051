"""Every catalogue topic on the real broker: created as declared, carries its schema, and the
compacted ones really are compacted."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from herald.serde import decode, encode
from herald.settings import KafkaSettings
from herald.streaming import producer_config
from herald.topics import create_topics
from schemas import Catalogue
from tests.integration.kafka_util import read_all
from tests.samples import SAMPLES

pytestmark = pytest.mark.integration


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_topics_exist_as_declared(kafka_settings: KafkaSettings, topics: Catalogue) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers})
    metadata = admin.list_topics(timeout=10).topics
    declared = topics.all_topics()
    for declaration in declared:
        assert declaration.name in metadata, declaration.name
        assert len(metadata[declaration.name].partitions) == declaration.partitions
    resources = [ConfigResource("topic", d.name) for d in declared]
    for resource, future in admin.describe_configs(resources).items():
        actual = {name: entry.value for name, entry in future.result().items()}
        wanted = next(d for d in declared if d.name == resource.name).configs
        for key, value in wanted.items():
            assert actual[key] == value, (resource.name, key)
    # A second create is a no-op: idempotent.
    again = create_topics(kafka_settings, topics, prefix="")
    assert {r.outcome for r in again} == {"exists"}


def test_every_topic_round_trips_its_schema(
    kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    producer = Producer(producer_config(kafka_settings))
    expected: dict[str, dict[str, object]] = {}
    for spec in topics:
        record = SAMPLES[spec.value_schema]
        key = str(record.get(spec.key) or record.get("user_id") or spec.logical_name)
        for name in (spec.name, *spec.retry_topic_names, *([spec.dlq_name] if spec.dlq else [])):
            producer.produce(name, key=key, value=encode(spec.value_schema, record))
            expected[name] = record
    assert producer.flush(30) == 0
    for name, record in expected.items():
        messages = read_all(kafka_settings, name)
        assert len(messages) == 1, name
        value = messages[0].value()
        assert value is not None
        assert decode(value) == record


def test_compacted_topics_keep_the_last_value_per_key(
    kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    compacted = [spec for spec in topics if spec.compacted]
    assert {spec.logical_name for spec in compacted} >= {"event_types", "users", "preferences"}
    spec = topics.users
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers})
    resource = ConfigResource("topic", spec.name)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "compact"
    # Roll segments quickly so the cleaner may work within the test (the active segment is
    # never cleaned); everything else about the topic is as the catalogue created it.
    fast = ConfigResource(
        "topic",
        spec.name,
        incremental_configs=[
            ConfigEntry("segment.ms", "100", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry(
                "min.cleanable.dirty.ratio", "0.01", incremental_operation=AlterConfigOpType.SET
            ),
        ],
    )
    admin.incremental_alter_configs([fast])[fast].result()

    producer = Producer(producer_config(kafka_settings))
    base = SAMPLES[spec.value_schema]
    users = [f"user-{i}" for i in range(5)]
    for version in range(50):
        for user in users:
            record = {**base, "user_id": user, "display_name": f"{user} v{version}"}
            producer.produce(spec.name, key=user, value=encode(spec.value_schema, record))
    assert producer.flush(30) == 0
    produced = 50 * len(users)

    def compacted_now() -> bool:
        # An append after segment.ms rolls a partition's segment, closing the dirty one for
        # the cleaner: append to every partition, since the users are spread over them.
        for partition in range(spec.partitions):
            producer.produce(
                spec.name, key="tick", value=encode(spec.value_schema, base), partition=partition
            )
        producer.flush(10)
        return len(read_all(kafka_settings, spec.name)) < produced // 2

    wait_for(compacted_now, 90, "the log cleaner to compact the users topic")
    latest: dict[str, str] = {}
    for message in read_all(kafka_settings, spec.name):
        value = message.value()
        key = message.key()
        assert value is not None and key is not None
        latest[key.decode()] = decode(value)["display_name"]
    for user in users:
        assert latest[user] == f"{user} v49"
