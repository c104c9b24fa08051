"""``herald dlq`` against real dead-letter topics."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from herald.serde import encode
from herald.settings import KafkaSettings
from herald.streaming import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ORIGINAL_TOPIC,
    H_REPLAY_COUNT,
    headers_dict,
    producer_config,
)
from schemas import Catalogue
from tests.integration.delivery_util import herald_dlq
from tests.integration.kafka_util import read_all
from tests.samples import SAMPLES

pytestmark = pytest.mark.integration


@pytest.fixture
def dead_sms(kafka_settings: KafkaSettings, topics: Catalogue) -> list[str]:
    """Five dead SMS deliveries (three provider outages, two invalid numbers)."""
    producer = Producer(producer_config(kafka_settings))
    spec = topics.deliveries_sms
    ids = []
    for i in range(5):
        record = {**SAMPLES["herald.DeliveryRequest"], "delivery_id": f"d-{i}", "channel": "sms"}
        error = "sms.5xx" if i < 3 else "sms.invalid_number"
        producer.produce(
            spec.dlq_name,
            key=record["user_id"],
            value=encode("herald.DeliveryRequest", record),
            headers=[
                (H_ATTEMPT, "4"),
                (H_ORIGINAL_TOPIC, spec.name),
                (H_ERROR_CLASS, error),
                (H_ERROR_MESSAGE, f"failure {i}"),
            ],
        )
        ids.append(f"d-{i}")
    assert producer.flush(10) == 0
    return ids


def test_list_counts_by_error_class(kafka_settings: KafkaSettings, dead_sms: list[str]) -> None:
    result = herald_dlq(kafka_settings, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["error_class"]: row["count"] for row in json.loads(result.stdout)}
    assert rows == {"sms.5xx": 3, "sms.invalid_number": 2}


def test_show_prints_headers_and_record(kafka_settings: KafkaSettings, dead_sms: list[str]) -> None:
    result = herald_dlq(kafka_settings, "show", "--delivery-id", "d-4")
    assert result.returncode == 0, result.stderr
    assert "x-error-class: sms.invalid_number" in result.stdout
    assert '"delivery_id": "d-4"' in result.stdout
    assert "d-3" not in result.stdout


def test_replay_dry_run_then_replay_to_the_first_tier(
    kafka_settings: KafkaSettings, topics: Catalogue, dead_sms: list[str]
) -> None:
    tier = topics.deliveries_sms.retry_topic_names[0]
    dry = herald_dlq(kafka_settings, "replay", "--error-class", "sms.5xx", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 matched, would replay 3" in dry.stdout
    assert read_all(kafka_settings, tier) == []

    done = herald_dlq(kafka_settings, "replay", "--error-class", "sms.5xx")
    assert done.returncode == 0, done.stderr
    assert "3 matched, replayed 3" in done.stdout
    replayed = read_all(kafka_settings, tier)
    assert len(replayed) == 3
    for message in replayed:
        headers = headers_dict(message)
        assert headers[H_REPLAY_COUNT] == "1"
        assert headers[H_ATTEMPT] == "1"
        assert headers[H_ERROR_CLASS] == "sms.5xx"


def test_replay_refuses_past_the_limit(kafka_settings: KafkaSettings, topics: Catalogue) -> None:
    spec = topics.deliveries_sms
    producer = Producer(producer_config(kafka_settings))
    producer.produce(
        spec.dlq_name,
        key="u",
        value=encode("herald.DeliveryRequest", SAMPLES["herald.DeliveryRequest"]),
        headers=[(H_ORIGINAL_TOPIC, spec.name), (H_REPLAY_COUNT, "3")],
    )
    producer.flush(10)
    result = herald_dlq(kafka_settings, "replay", "--max-replays", "3")
    assert result.returncode == 0, result.stderr
    assert "replayed 0, refused 1" in result.stdout
    assert read_all(kafka_settings, spec.retry_topic_names[0]) == []


def test_purge_deletes_only_what_matches(
    kafka_settings: KafkaSettings, topics: Catalogue, dead_sms: list[str]
) -> None:
    result = herald_dlq(kafka_settings, "purge", "--error-class", "sms.5xx", "--yes")
    assert result.returncode == 0, result.stderr
    remaining = read_all(kafka_settings, topics.deliveries_sms.dlq_name)
    classes = sorted(headers_dict(m)[H_ERROR_CLASS] for m in remaining)
    # All five share one key (one partition): the three 5xx come first, so they can go.
    assert classes == ["sms.invalid_number", "sms.invalid_number"]


def test_wrong_topic_and_filter_are_clear_errors(kafka_settings: KafkaSettings) -> None:
    wrong = herald_dlq(kafka_settings, "list", "--topic", "herald.nope.v1")
    assert wrong.returncode == 2
    assert "not a dead-letter topic" in wrong.stderr
    bad_time = herald_dlq(kafka_settings, "replay", "--since", "last tuesday", "--dry-run")
    assert bad_time.returncode == 2
    assert "ISO-8601" in bad_time.stderr
