"""Herald's producer settings (herald.streaming.producer_config) from KafkaSettings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from herald.settings import KafkaSettings
from herald.streaming import producer_config


def test_defaults_linger_20_ms_without_compression_idempotent_java_keying() -> None:
    config = producer_config(KafkaSettings())
    assert config["linger.ms"] == 20
    assert config["compression.type"] == "none"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"


def test_linger_and_compression_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_LINGER_MS", "5")
    monkeypatch.setenv("KAFKA_COMPRESSION_TYPE", "zstd")
    config = producer_config(KafkaSettings())
    assert (config["linger.ms"], config["compression.type"]) == (5, "zstd")
    # A call's own overrides still win.
    assert producer_config(KafkaSettings(), **{"linger.ms": 0})["linger.ms"] == 0


def test_an_unknown_compression_is_refused_with_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_COMPRESSION_TYPE", "brotli")
    with pytest.raises(ValidationError, match="lz4"):
        KafkaSettings()
