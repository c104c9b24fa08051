"""Publish a domain event to Herald with plain confluent-kafka and fastavro: no Herald code.

``herald.events.v1`` is a public contract. A record's value is the event in Avro single-object
encoding: the two bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's
Parsing Canonical Form, then the Avro binary body. The key is the event id. Use the Java-compatible
murmur2 partitioner, as Herald does.

    python examples/publish_event.py --bootstrap 127.0.0.1:19092 \\
        --type comment.created --to user-1 --to user-2 --context post_title="Kafka at scale"

The schema file is ``schemas/avro/Event.avsc``; copy it next to your producer.
"""

from __future__ import annotations

import argparse
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Producer

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "avro" / "Event.avsc"
TOPIC = "herald.events.v1"


def load_event_schema(path: Path = SCHEMA_FILE) -> tuple[Any, bytes]:
    """The parsed Event schema and its single-object header (magic + fingerprint)."""
    schema = fastavro.parse_schema(json.loads(path.read_text()))
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro returns the CRC-64-AVRO fingerprint as hex of its little-endian bytes.
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    return schema, b"\xc3\x01" + fingerprint


def encode_event(event: dict[str, Any], path: Path = SCHEMA_FILE) -> bytes:
    """One event as Avro single-object encoded bytes."""
    schema, header = load_event_schema(path)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, event)
    return header + body.getvalue()


def make_event(event_type: str, recipients: list[str], context: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": datetime.now(UTC),
        "producer": "example",
        "actor_id": None,
        "recipients": recipients,
        "context": context,
        "metadata": {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Publish one event to herald.events.v1")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--type", required=True, help="event type code, e.g. comment.created")
    parser.add_argument("--to", action="append", required=True, help="recipient user id")
    parser.add_argument("--context", action="append", default=[], help="key=value")
    args = parser.parse_args()
    context = dict(item.split("=", 1) for item in args.context)
    event = make_event(args.type, args.to, context)
    producer = Producer({"bootstrap.servers": args.bootstrap, "partitioner": "murmur2_random"})
    producer.produce(args.topic, key=event["event_id"], value=encode_event(event))
    if producer.flush(10):
        raise SystemExit("the event was not acknowledged by Kafka within 10 s")
    print(f"published {event['event_id']} to {args.topic}")


if __name__ == "__main__":
    main()
