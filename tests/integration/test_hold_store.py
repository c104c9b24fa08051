"""The held-delivery store on real PostgreSQL and Kafka: a row the review cannot read is kept
as it was held (and released when its time comes), while the user's other held deliveries are
decided; the review does not fail, so the table feeder that called it moves on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from herald.db.engine import search_path_options
from herald.serde import decode, encode
from herald.settings import DatabaseSettings, KafkaSettings
from schemas import Catalogue
from services.router.hold_review import Decision
from services.router.holds import HoldStore
from tests.integration.delivery_util import delivery_request
from tests.integration.kafka_util import read_all

pytestmark = pytest.mark.integration


def held_row(request: dict[str, Any], release_at: datetime, payload: bytes) -> dict[str, Any]:
    return {
        "delivery_id": request["delivery_id"],
        "notification_id": request["notification_id"],
        "user_id": request["user_id"],
        "channel": request["channel"],
        "release_at": release_at,
        "payload": payload,
    }


def test_an_unreadable_held_row_is_kept_and_the_others_are_decided(
    db_settings: DatabaseSettings, kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    later = datetime.now(UTC) + timedelta(hours=3)
    good = delivery_request("email", "ada@example.com", user_id="ada", body_text="hi")
    corrupt = delivery_request("sms", "+491701234567", user_id="ada")
    store = HoldStore(db_settings, kafka_settings, topics)
    store.hold(
        [
            held_row(good, later, encode("herald.DeliveryRequest", good)),
            held_row(corrupt, later, b"\xc3\x01 not a delivery request"),
        ]
    )
    decided: list[str] = []

    def release_everything(delivery: dict[str, Any], release_at: datetime) -> Decision:
        decided.append(delivery["delivery_id"])
        return Decision("release", delivery)

    counts = store.review("ada", release_everything)

    assert counts == {"release": 1, "unreadable": 1}
    assert decided == [good["delivery_id"]]
    released = [
        decode(m.value() or b"") for m in read_all(kafka_settings, topics.deliveries_email.name)
    ]
    assert [r["delivery_id"] for r in released] == [good["delivery_id"]]
    with psycopg.connect(
        db_settings.libpq_url, options=search_path_options(db_settings.database_schema)
    ) as conn:
        left = conn.execute("SELECT delivery_id::text, payload FROM held_delivery").fetchall()
    assert left == [(corrupt["delivery_id"], b"\xc3\x01 not a delivery request")]
