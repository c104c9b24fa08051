"""Deterministic ids: the fast uuid5 gives exactly what ``uuid.uuid5`` gives, for any input
the pipeline may carry (ids that are UUIDs in any spelling, and ids that are not)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.identity import HERALD_NAMESPACE, delivery_id, event_uuid, notification_id


def reference_notification_id(event_id: str, user_id: str) -> str:
    try:
        namespace = uuid.UUID(event_id)
    except ValueError:
        namespace = uuid.uuid5(HERALD_NAMESPACE, event_id)
    return str(uuid.uuid5(namespace, user_id))


@given(st.uuids().map(str) | st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_notification_id_is_uuid5_of_event_and_user(event_id: str, user_id: str) -> None:
    assert notification_id(event_id, user_id) == reference_notification_id(event_id, user_id)


@given(st.uuids(), st.sampled_from(["inapp", "email", "sms", "webhook", "slack"]) | st.text())
def test_delivery_id_is_uuid5_of_notification_and_channel(nid: uuid.UUID, channel: str) -> None:
    expected = str(uuid.uuid5(nid, channel))
    for spelling in (str(nid), str(nid).upper(), nid.hex, f"{{{nid}}}", f"urn:uuid:{nid}"):
        assert delivery_id(spelling, channel) == expected


def test_known_values_do_not_change() -> None:
    # Ids are stored and compared across versions: a change here re-sends everything.
    event_id = "6a1f8f3e-6c1b-4c7e-9a55-7f1f0a2b3c4d"
    nid = notification_id(event_id, "user-42")
    assert nid == str(uuid.uuid5(uuid.UUID(event_id), "user-42"))
    assert delivery_id(nid, "email") == str(uuid.uuid5(uuid.UUID(nid), "email"))
    assert notification_id("order-17", "ada") == str(
        uuid.uuid5(uuid.uuid5(HERALD_NAMESPACE, "order-17"), "ada")
    )
    assert event_uuid("order-17") == uuid.uuid5(HERALD_NAMESPACE, "order-17")


def test_a_malformed_notification_id_is_refused_like_uuid_does() -> None:
    with pytest.raises(ValueError):
        delivery_id("not-a-uuid", "email")
