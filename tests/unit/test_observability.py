"""The pure parts of herald.observability: the x-published-at header and the DLQs of a
service's topics (the Kafka reads are covered by tests/integration/test_observability.py)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY

from herald.observability import (
    H_PUBLISHED_AT,
    dlq_topics_of,
    observe_final,
    publication_header,
    published_at,
)
from schemas import CATALOGUE


def test_published_at_reads_the_header_and_ignores_garbage() -> None:
    assert published_at([(H_PUBLISHED_AT, b"1700000000.250")]) == 1700000000.25
    assert published_at({H_PUBLISHED_AT: "1700000000"}) == 1700000000.0
    assert published_at([("x-attempt", b"2")]) is None
    assert published_at(None) is None
    for bad in (b"soon", b"\xff", b"-5", b"1e300", b"nan"):
        assert published_at([(H_PUBLISHED_AT, bad)]) is None, bad


def test_the_router_stamps_the_carried_time_else_the_kafka_timestamp() -> None:
    carried = SimpleNamespace(headers=[(H_PUBLISHED_AT, b"1700000000.5")], timestamp=1800000000.0)
    assert publication_header(carried) == (H_PUBLISHED_AT, b"1700000000.500")
    fresh = SimpleNamespace(headers=[], timestamp=1700000001.25)
    assert publication_header(fresh) == (H_PUBLISHED_AT, b"1700000001.250")
    assert publication_header(SimpleNamespace(headers=None, timestamp=0)) is None
    assert publication_header(object()) is None


def test_observe_final_counts_only_records_that_carry_the_time() -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value(
            "herald_delivery_latency_seconds_count", {"channel": "unit", "status": "sent"}
        )
        return value or 0.0

    before = count()
    observe_final("unit", "sent", [(H_PUBLISHED_AT, b"100.0")], now=100.2)
    observe_final("unit", "sent", [], now=100.2)
    assert count() == before + 1
    within = REGISTRY.get_sample_value(
        "herald_delivery_latency_seconds_bucket",
        {"channel": "unit", "status": "sent", "le": "0.25"},
    )
    assert within is not None and within >= 1


def test_dlq_topics_of_a_services_topics() -> None:
    catalogue = CATALOGUE.with_prefix("p.")
    email = catalogue.for_channel("email")
    assert dlq_topics_of(catalogue, [email.name, *email.retry_topic_names]) == [email.dlq_name]
    routed = [catalogue.events.name, catalogue.recipients.name, "not.a.catalogue.topic"]
    assert dlq_topics_of(catalogue, routed) == [catalogue.events.dlq_name]
