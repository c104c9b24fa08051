"""The topic catalogue, held together with the Avro schemas and the code that uses them."""

from __future__ import annotations

import json
import pickle
import re
import uuid
from pathlib import Path

import pytest

from herald import PROJECT_ROOT
from herald.channels import CHANNELS
from herald.serde import default_registry
from schemas import (
    CATALOGUE,
    RETRY_DELAYS_ENV,
    SCHEMA_DIR,
    TOPICS_FILE,
    Catalogue,
    CatalogueError,
    TopicSpec,
    UnknownTopicError,
    load_catalogue,
)

USER_KEYED = ("users", "preferences", "recipients")

MINIMAL = """
[defaults]
partitions = 4
replication_factor = 1
retention_ms = 1000
dlq_retention_ms = 5000

[retry]
delays_ms = [10, 20]

[topics.users]
name = "t.users.v1"
key = "user_id"
value_schema = "herald.User"
cleanup = "compact"

[topics.deliveries_email]
name = "t.deliveries.email.v1"
key = "user_id"
value_schema = "herald.DeliveryRequest"
cleanup = "delete"
channel = "email"
retry = true
dlq = true
"""


def _load(tmp_path: Path, text: str) -> Catalogue:
    path = tmp_path / "topics.toml"
    path.write_text(text)
    return load_catalogue(path, environ={})


def test_shipped_catalogue_loads() -> None:
    assert load_catalogue(environ={}).topics.keys() == CATALOGUE.topics.keys()
    assert CATALOGUE.source == TOPICS_FILE and CATALOGUE.schema_dir == SCHEMA_DIR


def test_every_value_schema_is_a_current_schema_and_none_is_orphaned() -> None:
    registry = default_registry()
    for spec in CATALOGUE:
        assert registry.current(spec.value_schema).source == CATALOGUE.schema_path(
            spec.value_schema
        )
    assert {spec.value_schema for spec in CATALOGUE} == set(registry.names)


def test_every_schema_field_is_documented() -> None:
    # herald.events.v1 is a public contract; the other schemas are read by every service.
    for name in default_registry().names:
        schema = default_registry().current(name).schema
        assert schema.get("doc"), name
        undocumented = [field["name"] for field in schema["fields"] if not field.get("doc")]
        assert not undocumented, (name, undocumented)


def test_recipient_event_inlines_event_unchanged() -> None:
    recipient = json.loads((SCHEMA_DIR / "RecipientEvent.avsc").read_text())
    (inline,) = [field["type"] for field in recipient["fields"] if field["name"] == "event"]
    assert inline == json.loads((SCHEMA_DIR / "Event.avsc").read_text())


def test_lookup_by_attribute_key_and_iteration() -> None:
    assert CATALOGUE.events is CATALOGUE["events"]
    assert CATALOGUE.events.name == "herald.events.v1"
    assert [spec.logical_name for spec in CATALOGUE] == list(CATALOGUE.topics)
    assert len(CATALOGUE) == len(CATALOGUE.topics) and "users" in CATALOGUE
    assert all(isinstance(spec, TopicSpec) for spec in CATALOGUE)
    with pytest.raises(UnknownTopicError, match="nope"):
        CATALOGUE["nope"]
    with pytest.raises(KeyError):
        CATALOGUE["nope"]
    with pytest.raises(AttributeError):
        _ = CATALOGUE.nope


def test_retry_and_dlq_names() -> None:
    email = CATALOGUE.deliveries_email
    delays = CATALOGUE.retry_delays_ms
    assert email.retry_topic_names == tuple(
        f"herald.deliveries.email.v1.retry-{n}" for n in range(1, len(delays) + 1)
    )
    assert [tier.delay_ms for tier in email.retry_topics()] == list(delays)
    assert [tier.topic for tier in email.retry_topics([5, 6])] == [
        "herald.deliveries.email.v1.retry-1",
        "herald.deliveries.email.v1.retry-2",
    ]
    assert email.dlq_name == "herald.deliveries.email.v1.dlq"
    assert CATALOGUE.events.dlq_name == "herald.events.v1.dlq"
    assert CATALOGUE.events.retry_topic_names == ()


def test_all_topics_includes_retry_tiers_and_dlqs() -> None:
    declared = {topic.name: topic for topic in CATALOGUE.all_topics()}
    tiers = len(CATALOGUE.retry_delays_ms)
    retrying = [spec for spec in CATALOGUE if spec.retry]
    with_dlq = [spec for spec in CATALOGUE if spec.dlq]

    assert len(declared) == len(CATALOGUE) + tiers * len(retrying) + len(with_dlq)
    for spec in with_dlq:
        dlq = declared[spec.dlq_name]
        assert dlq.configs == {
            "cleanup.policy": "delete",
            "retention.ms": str(spec.dlq_retention_ms),
        }
        assert dlq.partitions == spec.partitions
    for spec in retrying:
        for name in spec.retry_topic_names:
            assert declared[name].configs == spec.configs()


def test_channels() -> None:
    assert set(CATALOGUE.channels) == set(CHANNELS)
    for channel in CATALOGUE.channels:
        spec = CATALOGUE.for_channel(channel)
        assert spec.channel == channel and spec.dlq
        # Providers fail transiently; storing an inbox row does not (the sink retries its DB).
        assert spec.retry == (channel != "inapp")
        assert spec.value_schema == "herald.DeliveryRequest" and spec.key == "user_id"
    with pytest.raises(UnknownTopicError):
        CATALOGUE.for_channel("pigeon")


def test_by_name_finds_topics_retry_tiers_and_dlqs() -> None:
    sms = CATALOGUE.deliveries_sms
    for name in (sms.name, *sms.retry_topic_names, sms.dlq_name):
        assert CATALOGUE.by_name(name) is sms
    assert CATALOGUE.by_name("herald.events.v1.dlq") is CATALOGUE.events
    with pytest.raises(UnknownTopicError):
        CATALOGUE.by_name("herald.users.v1.dlq")  # users has no DLQ


def test_with_prefix_isolates_every_topic() -> None:
    prefix = f"test-{uuid.uuid4().hex}."
    isolated = CATALOGUE.with_prefix(prefix)

    assert all(topic.name.startswith(prefix) for topic in isolated.all_topics())
    assert [t.name for t in CATALOGUE.all_topics(prefix)] == [t.name for t in isolated.all_topics()]
    assert isolated.events.name == prefix + CATALOGUE.events.name
    assert isolated.events.declared_name == CATALOGUE.events.name
    assert isolated.by_name(isolated.deliveries_email.retry_topic_names[0]).logical_name == (
        "deliveries_email"
    )
    # A prefix replaces an earlier one, so applying the configured prefix twice is harmless.
    assert isolated.with_prefix("other.").events.name == "other.herald.events.v1"
    assert CATALOGUE.events.name == "herald.events.v1"  # the original is untouched


def test_with_prefix_refuses_illegal_topic_names() -> None:
    with pytest.raises(CatalogueError, match="legal Kafka topic name"):
        CATALOGUE.with_prefix("bad prefix/")


def test_user_keyed_topics_are_co_partitioned() -> None:
    assert {CATALOGUE[name].key for name in USER_KEYED} == {"user_id"}
    counts = {spec.partitions for spec in CATALOGUE if spec.key == "user_id"}
    assert len(counts) == 1


def test_compacted_topic_configs() -> None:
    for name in ("event_types", "users", "preferences"):
        configs = CATALOGUE[name].configs()
        assert configs["cleanup.policy"] == "compact"
        assert float(configs["min.cleanable.dirty.ratio"]) <= 0.5
        assert int(configs["segment.ms"]) <= 3_600_000
        assert "retention.ms" not in configs  # meaningless without the delete policy
    assert CATALOGUE.events.configs() == {
        "cleanup.policy": "delete",
        "retention.ms": str(CATALOGUE.events.retention_ms),
    }


def test_config_overrides_from_toml(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[retry]", '[defaults.compact_config]\n"segment.ms" = 1000\n\n[retry]'
    ).replace(
        'cleanup = "compact"',
        'cleanup = "compact"\nconfig = { "min.cleanable.dirty.ratio" = 0.01, '
        '"delete.retention.ms" = 100 }',
    )
    configs = _load(tmp_path, text).users.configs()
    assert configs == {
        "cleanup.policy": "compact",
        "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
    }


def test_retry_delays_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_DELAYS_ENV, "200, 500")
    catalogue = load_catalogue()
    assert catalogue.retry_delays_ms == (200, 500)
    assert catalogue.deliveries_email.retry_topic_names == (
        "herald.deliveries.email.v1.retry-1",
        "herald.deliveries.email.v1.retry-2",
    )
    assert [tier.delay_ms for tier in catalogue.deliveries_sms.retry_topics()] == [200, 500]


@pytest.mark.parametrize("value", ["fast", "100,", "-5", "1.5"])
def test_bad_retry_delays_in_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(RETRY_DELAYS_ENV, value)
    with pytest.raises(CatalogueError, match=RETRY_DELAYS_ENV):
        load_catalogue()


def test_minimal_catalogue(tmp_path: Path) -> None:
    catalogue = _load(tmp_path, MINIMAL)
    assert catalogue.retry_delays_ms == (10, 20)
    assert catalogue.users.partitions == 4 and catalogue.users.retention_ms == 1000
    assert [t.name for t in catalogue.all_topics()] == [
        "t.users.v1",
        "t.deliveries.email.v1",
        "t.deliveries.email.v1.retry-1",
        "t.deliveries.email.v1.retry-2",
        "t.deliveries.email.v1.dlq",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[topics.users\n", "not valid TOML", id="syntax"),
        pytest.param(MINIMAL.replace('key = "user_id"\n', "", 1), "key", id="missing-key"),
        pytest.param(MINIMAL.replace("partitions = 4", "partiton = 4"), "partiton", id="typo"),
        pytest.param(
            MINIMAL.replace('"herald.User"', '"herald.Nope"'), "herald.Nope", id="no-schema"
        ),
        pytest.param(
            MINIMAL.replace('cleanup = "compact"', 'cleanup = "keep"'), "cleanup", id="cleanup"
        ),
        pytest.param(
            MINIMAL.replace('"t.users.v1"', '"t.deliveries.email.v1"'), "both", id="dup-name"
        ),
        pytest.param(
            MINIMAL.replace('cleanup = "compact"', 'cleanup = "compact"\npartitions = 3'),
            "co-partitioned",
            id="co-partitioning",
        ),
        pytest.param(
            MINIMAL.replace("partitions = 4", 'partitions = "4"'), "partitions", id="type"
        ),
        pytest.param(
            MINIMAL.replace("delays_ms = [10, 20]", "delays_ms = []"), "empty", id="no-delays"
        ),
        pytest.param(
            MINIMAL.replace('"t.users.v1"', '"t/users"'), "legal Kafka topic", id="bad-name"
        ),
        pytest.param(MINIMAL.replace("[topics.users]", "[topics.topics]"), "logical", id="shadow"),
        pytest.param("[defaults]\npartitions = 1\n", "no [topics", id="no-topics"),
    ],
)
def test_bad_catalogue_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=re.escape(message)):
        _load(tmp_path, text)


def test_missing_catalogue_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "absent.toml")


def test_catalogue_pickles() -> None:
    # Worker processes may receive the catalogue; it must survive pickling.
    assert pickle.loads(pickle.dumps(CATALOGUE)).events == CATALOGUE.events


_TOPIC_LITERAL = re.compile(r"""["']herald\.[a-z][a-z0-9.-]*\.v\d+""")


def test_code_uses_the_catalogue_not_topic_literals() -> None:
    """Topic names live in topics.toml only; code reaches them through CATALOGUE."""
    offenders = []
    for folder in ("herald", "services"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _TOPIC_LITERAL.search(line):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
