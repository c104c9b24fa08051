"""A record with a garbled ``x-attempt`` header among good ones (issue 9, item 1): the service
stays up, the good records are handled once, the bad ones are parked on the DLQ with the
reason (``headers.invalid``, naming the header and its value). Before the header codec, the
sender and inapp_store crashed on ``int("x")`` and crash-looped on the same record."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Message, Producer

from herald.errors import PermanentError
from herald.headers import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ORIGINAL_OFFSET,
    HEADERS_INVALID,
)
from herald.serde import encode
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from herald.streaming import BatchLoop, Outgoing, failure_record, headers_dict, producer_config
from schemas import Catalogue
from tests.integration.delivery_util import wait_for, wait_for_statuses
from tests.integration.kafka_util import read_all
from tests.integration.services import ServiceProcess
from tests.integration.test_inapp_store import (
    consumed_everything,
    delivery,
    inapp_request,
    notification,
)
from tests.integration.test_inapp_store import start as start_store
from tests.integration.test_sms_sender import Provider, phone, sms_request
from tests.integration.test_sms_sender import start as start_sms

pytestmark = pytest.mark.integration

GARBLED = [(H_ATTEMPT, b"x")]


@pytest.fixture
def provider(local_stack: Settings) -> Provider:
    return Provider(local_stack)


def produce(kafka: KafkaSettings, topic: str, records: list[tuple[str, bytes, list]]) -> None:
    producer = Producer(producer_config(kafka))
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def parked(kafka: KafkaSettings, topic: str, count: int) -> list[tuple[bytes, dict[str, str]]]:
    def found() -> list[tuple[bytes, dict[str, str]]] | None:
        letters = [(m.value() or b"", headers_dict(m)) for m in read_all(kafka, topic)]
        return letters if len(letters) >= count else None

    return wait_for(found, 60, f"{count} dead letters on {topic}")


def test_sms_sender_parks_garbled_headers_and_sends_the_rest_once(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    provider: Provider,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"  # one key: one partition, so the bad ones come first
    good = [sms_request(phone(), user_id=user) for _ in range(4)]
    decodable_but_garbled = sms_request(phone(), user_id=user)
    encoded = [encode("herald.DeliveryRequest", r) for r in good]
    produce(
        kafka_settings,
        topics.deliveries_sms.name,
        [
            (user, encoded[0], []),
            (user, b"\x00not avro", GARBLED),  # undecodable, and its header is garbage
            (user, encode("herald.DeliveryRequest", decodable_but_garbled), GARBLED),
            *[(user, value, []) for value in encoded[1:]],
        ],
    )
    sender = start_sms(run_service, kafka_settings, db_settings)

    wait_for_statuses(kafka_settings, topics, {r["delivery_id"]: "sent" for r in good})
    letters = parked(kafka_settings, topics.deliveries_sms.dlq_name, 2)
    assert [value for value, _ in letters] == [
        b"\x00not avro",
        encode("herald.DeliveryRequest", decodable_but_garbled),
    ]
    for _, headers in letters:
        assert headers[H_ERROR_CLASS] == HEADERS_INVALID
        assert "x-attempt='x'" in headers[H_ERROR_MESSAGE]
        assert headers["x-garbled-attempt"] == "x"
        assert headers[H_ATTEMPT] == "1"  # readable again, for herald dlq
    numbers = {r["destination"] for r in good}
    found = wait_for(
        lambda: got if len(got := provider.messages(numbers)) == len(numbers) else None,
        30,
        "every good SMS at the provider",
    )
    assert {number: len(sms) for number, sms in found.items()} == dict.fromkeys(numbers, 1)
    assert provider.messages({decodable_but_garbled["destination"]}) == {}
    assert sender.running()


def test_inapp_store_parks_garbled_headers_and_stores_the_rest(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    inapp = topics.for_channel("inapp")
    user = f"u-{uuid.uuid4().hex[:8]}"
    before, after = notification(user_id=user), notification(user_id=user)
    produce(
        kafka_settings,
        inapp.name,
        [
            (user, encode("herald.DeliveryRequest", inapp_request(before)), []),
            (user, b"\x00not avro", GARBLED),
            (user, encode("herald.DeliveryRequest", inapp_request(after)), []),
        ],
    )
    store = start_store(run_service, kafka_settings, db_settings)

    wait_for(lambda: delivery(db_settings, before, "inapp"), 60, "the first in-app delivery")
    wait_for(lambda: delivery(db_settings, after, "inapp"), 30, "the in-app delivery after")
    ((value, headers),) = parked(kafka_settings, inapp.dlq_name, 1)
    assert value == b"\x00not avro"
    assert headers[H_ERROR_CLASS] == HEADERS_INVALID
    assert "x-attempt='x'" in headers[H_ERROR_MESSAGE]
    wait_for(lambda: consumed_everything(kafka_settings, topics), 60, "everything committed")
    assert store.running()


def test_a_dead_letter_too_large_to_produce_is_parked_as_a_stand_in(
    kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    """The batch loop never drops a dead letter the producer refuses as too large: a small
    stand-in (no value, record.too_large, the original's coordinates) goes to the DLQ."""
    spec = topics.deliveries_sms
    original = Message(
        topic=spec.name, partition=0, offset=41, key=b"user-1", value=b"v" * 1_200_000
    )
    error = PermanentError("refused", error_class="sms.invalid_number")
    dead = failure_record(
        original, error, retry_topics=(), retry_delays_ms=(), dlq_topic=spec.dlq_name
    )
    loop = BatchLoop(
        service="test-oversize", kafka=kafka_settings, topics=[spec.name], handler=lambda _: []
    )
    try:
        assert loop.publish([dead, Outgoing(spec.dlq_name, b"k", b"small")])
    finally:
        loop.producer.close(5)
        loop.consumer.close()
    letters = read_all(kafka_settings, spec.dlq_name)
    by_value = {m.value(): headers_dict(m) for m in letters}
    assert set(by_value) == {b"small", None}
    stand_in = by_value[None]
    assert stand_in[H_ERROR_CLASS] == "record.too_large"
    assert "sms.invalid_number: refused" in stand_in[H_ERROR_MESSAGE]
    assert stand_in[H_ORIGINAL_OFFSET] == "41"
