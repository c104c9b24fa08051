"""Pure parts of the user data lifecycle: derived delivery ids, the export's JSON, retention
settings and rules, the router's memory of erased users."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from ipaddress import ip_address
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from herald.channels import CHANNELS
from herald.identity import delivery_id, notification_id
from herald.retention import RULES, RetentionSettings
from herald.status import FINAL_STATUSES
from herald.userdata import delivery_ids, to_json
from services.router import tables


def test_delivery_ids_cover_every_channel_of_every_notification() -> None:
    nids = [notification_id(str(uuid.uuid4()), "ada") for _ in range(3)]
    ids = delivery_ids(nids)
    assert len(ids) == 3 * len(CHANNELS)
    assert delivery_id(nids[1], "email") in ids
    assert delivery_id(nids[2], "slack") in ids


def test_to_json_writes_datetimes_uuids_and_addresses_as_text() -> None:
    moment = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    key = uuid.uuid4()
    document = to_json({"at": moment, "id": key, "ip": ip_address("203.0.113.7"), "x": "é"})
    assert json.loads(document) == {
        "at": "2026-11-30T12:00:00+00:00",
        "id": str(key),
        "ip": "203.0.113.7",
        "x": "é",
    }
    with pytest.raises(TypeError):
        to_json({"no": object()})


def test_retention_settings_defaults_and_validation() -> None:
    settings = RetentionSettings()
    assert (settings.notifications_days, settings.attempts_days, settings.journal_days) == (
        180,
        30,
        30,
    )
    assert RetentionSettings(cron="").cron == ""
    with pytest.raises(ValidationError):
        RetentionSettings(cron="every night")
    with pytest.raises(ValidationError):
        RetentionSettings(batch_size=0)
    with pytest.raises(ValidationError):
        RetentionSettings(attempts_days=-1)


def test_retention_rules_keep_deliveries_that_may_still_change() -> None:
    assert [rule.name for rule in RULES] == ["deliveries", "notifications", "attempts", "journal"]
    attempts = next(rule for rule in RULES if rule.name == "attempts")
    for status in FINAL_STATUSES:
        assert f"'{status}'" in attempts.condition
    assert "'retrying'" not in attempts.condition and "'pending'" not in attempts.condition


def _runtime() -> Any:
    known_devices: dict[bytes, bytes] = {b"ada": b"{}", b"bob": b"{}"}
    router = SimpleNamespace(known_devices=known_devices, digest_windows=SimpleNamespace(data={}))
    return SimpleNamespace(erased={}, router=router)


def test_forget_user_drops_known_devices_and_remembers_the_erasure() -> None:
    runtime = _runtime()
    tables.forget_user(runtime, b"ada")
    assert runtime.router.known_devices == {b"bob": b"{}"}
    assert tables.was_erased(runtime, "ada")
    assert not tables.was_erased(runtime, "bob")


def test_erased_memory_is_bounded_in_time_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime()
    runtime.erased[b"old"] = time.time() - tables.ERASED_MEMORY_S - 1
    assert not tables.was_erased(runtime, "old")
    monkeypatch.setattr(tables, "ERASED_MEMORY_MAX", 3)
    for name in ("a", "b", "c", "d"):
        tables.forget_user(runtime, name.encode())
    assert list(runtime.erased) == [b"b", b"c", b"d"]  # the expired and the oldest went
