"""The documented plain-confluent-kafka producer writes what Herald reads."""

from __future__ import annotations

from examples.publish_event import encode_event, make_event
from herald.serde import decode, default_registry


def test_example_producer_bytes_decode_with_herald() -> None:
    event = make_event("comment.created", ["user-1", "user-2"], {"post_title": "Hi"})
    data = encode_event(event)
    assert data[:10] == default_registry().current("herald.Event").header
    decoded = decode(data)
    assert decoded["event_id"] == event["event_id"]
    assert decoded["recipients"] == ["user-1", "user-2"]
    assert decoded["context"] == {"post_title": "Hi"}
