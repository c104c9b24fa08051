"""Herald's topic catalogue: ``topics.toml`` loaded into frozen, validated objects.

This is the one place code learns topic names, keys, partition counts, retention, cleanup
policy, value schemas, retry tiers and dead-letter topics. Code refers to topics through
:data:`schemas.CATALOGUE` (``CATALOGUE.events.name``), never through string literals, and tests
isolate themselves with :meth:`Catalogue.with_prefix`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

PACKAGE_DIR = Path(__file__).resolve().parent
#: The catalogue file shipped with the package.
TOPICS_FILE = PACKAGE_DIR / "topics.toml"
#: Current Avro schemas, one ``<Name>.avsc`` per value schema ``herald.<Name>``.
SCHEMA_DIR = PACKAGE_DIR / "avro"
#: Older writer versions kept so that records written with them stay readable.
HISTORY_DIR = SCHEMA_DIR / "history"

#: Environment variable overriding ``[retry] delays_ms``: comma-separated milliseconds.
RETRY_DELAYS_ENV = "HERALD_RETRY_DELAYS_MS"

#: Topic configs every compacted topic gets unless ``[defaults.compact_config]`` or the
#: topic's own ``config`` table says otherwise. Kafka's defaults (dirty ratio 0.5, 7-day
#: segments) would leave a small table topic uncompacted for a week: the active segment is
#: never cleaned. Short segments and a low ratio make compaction happen within minutes,
#: which keeps restarts of the router's tables short and lets tests observe it.
COMPACT_CONFIG_DEFAULTS: Mapping[str, str] = {
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "60000",
}

_CLEANUP_POLICIES = frozenset({"delete", "compact", "compact,delete", "delete,compact"})
# Kafka's rule for topic names (kafka.common.internals.Topic): legal characters, at most 249.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
_MAX_TOPIC_NAME = 249
_DLQ_SUFFIX = ".dlq"
_RETRY_SUFFIX = ".retry-"


class CatalogueError(ValueError):
    """The catalogue (``topics.toml``, the schema folder or an override) is inconsistent."""


class UnknownTopicError(CatalogueError, KeyError):
    """No topic in the catalogue has this logical name or topic name."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class RetryTier(NamedTuple):
    """One retry tier of a topic: ``<topic>.retry-<number>``, waited on for ``delay_ms``."""

    number: int
    topic: str
    delay_ms: int


class TopicDeclaration(NamedTuple):
    """Everything needed to create one Kafka topic."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass(frozen=True)
class TopicSpec:
    """One topic declared in the catalogue (a ``[topics.<logical_name>]`` table)."""

    logical_name: str
    name: str
    key: str
    value_schema: str
    cleanup: str
    partitions: int
    replication_factor: int
    retention_ms: int
    dlq_retention_ms: int
    retry_delays_ms: tuple[int, ...]
    channel: str | None = None
    retry: bool = False
    dlq: bool = False
    doc: str = ""
    #: Extra or overriding Kafka topic configs for this topic (and its retry tiers).
    # Mappings are typed read-only (plain dicts underneath, so specs pickle and deep-copy) and
    # left out of the hash, being unhashable; equality still compares them.
    config: Mapping[str, str] = field(default_factory=dict, hash=False)
    compact_config: Mapping[str, str] = field(
        default_factory=lambda: dict(COMPACT_CONFIG_DEFAULTS), hash=False
    )
    #: Prefix added to the declared name (see :meth:`Catalogue.with_prefix`).
    prefix: str = ""

    @property
    def declared_name(self) -> str:
        """The name as written in ``topics.toml``, without any prefix."""
        return self.name[len(self.prefix) :]

    @property
    def compacted(self) -> bool:
        """Whether Kafka compacts this topic (keeps the latest value per key)."""
        return "compact" in self.cleanup.split(",")

    def retry_topics(self, delays_ms: Sequence[int] | None = None) -> tuple[RetryTier, ...]:
        """The retry tiers ``<name>.retry-1..n``, one per delay; empty unless ``retry``.

        ``delays_ms`` defaults to the catalogue's delays (``[retry] delays_ms`` or
        ``HERALD_RETRY_DELAYS_MS``).
        """
        if not self.retry:
            return ()
        delays = self.retry_delays_ms if delays_ms is None else tuple(delays_ms)
        return tuple(
            RetryTier(number, f"{self.name}{_RETRY_SUFFIX}{number}", delay)
            for number, delay in enumerate(delays, start=1)
        )

    @property
    def retry_topic_names(self) -> tuple[str, ...]:
        """Names of the retry tiers, first tier first."""
        return tuple(tier.topic for tier in self.retry_topics())

    @property
    def dlq_name(self) -> str:
        """The dead-letter topic ``<name>.dlq`` (exists only when ``dlq`` is true)."""
        return self.name + _DLQ_SUFFIX

    def configs(self) -> dict[str, str]:
        """Kafka topic configs for this topic and its retry tiers."""
        configs = {"cleanup.policy": self.cleanup}
        if self.compacted:
            configs.update(self.compact_config)
        if "delete" in self.cleanup.split(","):
            # retention.ms only matters to the delete policy; compact-only topics keep the
            # latest value per key forever, so the setting would only mislead.
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.config)
        return configs

    def dlq_configs(self) -> dict[str, str]:
        """Kafka topic configs for the dead-letter topic: delete policy, long retention."""
        return {"cleanup.policy": "delete", "retention.ms": str(self.dlq_retention_ms)}

    def declarations(self) -> list[TopicDeclaration]:
        """This topic, its retry tiers and its DLQ, ready for topic creation."""
        declarations = [
            TopicDeclaration(self.name, self.partitions, self.replication_factor, self.configs())
        ]
        declarations.extend(
            TopicDeclaration(name, self.partitions, self.replication_factor, self.configs())
            for name in self.retry_topic_names
        )
        if self.dlq:
            declarations.append(
                TopicDeclaration(
                    self.dlq_name, self.partitions, self.replication_factor, self.dlq_configs()
                )
            )
        return declarations

    def with_prefix(self, prefix: str) -> TopicSpec:
        """This topic named ``prefix + declared name`` (a prefix replaces any earlier one)."""
        spec = replace(self, name=prefix + self.declared_name, prefix=prefix)
        _check_topic_names(spec)
        return spec


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Every topic Herald uses; ``CATALOGUE.events``, ``CATALOGUE["events"]``, iteration."""

    topics: Mapping[str, TopicSpec]
    retry_delays_ms: tuple[int, ...]
    schema_dir: Path = SCHEMA_DIR
    source: Path = TOPICS_FILE
    prefix: str = ""

    def __getattr__(self, logical_name: str) -> TopicSpec:
        # Called only for attributes the class lacks: the topics' logical names. Dunder and
        # private names must fail normally or copy/pickle protocols misbehave.
        topics = self.__dict__.get("topics")
        if logical_name.startswith("_") or topics is None or logical_name not in topics:
            raise AttributeError(
                f"{type(self).__name__} has no attribute or topic {logical_name!r}"
            )
        topic: TopicSpec = topics[logical_name]
        return topic

    def __getitem__(self, logical_name: str) -> TopicSpec:
        try:
            return self.topics[logical_name]
        except KeyError:
            raise UnknownTopicError(
                f"no topic {logical_name!r} in the catalogue; known: {', '.join(self.topics)}"
            ) from None

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter(self.topics.values())

    def __len__(self) -> int:
        return len(self.topics)

    def __contains__(self, logical_name: object) -> bool:
        return logical_name in self.topics

    @property
    def channels(self) -> tuple[str, ...]:
        """Channels that have a deliveries topic (``inapp``, ``email``, ``sms``)."""
        return tuple(spec.channel for spec in self if spec.channel is not None)

    @cached_property
    def _by_channel(self) -> dict[str, TopicSpec]:
        by_channel: dict[str, TopicSpec] = {}
        for spec in self:
            if spec.channel is not None:
                by_channel.setdefault(spec.channel, spec)
        return by_channel

    def for_channel(self, channel: str) -> TopicSpec:
        """The deliveries topic of a channel (looked up per routed record: a dict, not a scan)."""
        spec = self._by_channel.get(channel)
        if spec is not None:
            return spec
        raise UnknownTopicError(
            f"no deliveries topic for channel {channel!r}; channels: {', '.join(self.channels)}"
        )

    def by_name(self, topic_name: str) -> TopicSpec:
        """The topic that declares ``topic_name``: the topic itself, a retry tier or its DLQ.

        Retry tiers and DLQs carry their source topic's key and value schema, so the returned
        spec tells how to read any of them.
        """
        for spec in self:
            if (
                topic_name == spec.name
                or topic_name in spec.retry_topic_names
                or (spec.dlq and topic_name == spec.dlq_name)
            ):
                return spec
        raise UnknownTopicError(f"topic {topic_name!r} is not in the catalogue")

    def all_topics(self, prefix: str = "") -> list[TopicDeclaration]:
        """Every topic to create, including retry tiers and DLQs, optionally prefixed."""
        catalogue = self.with_prefix(prefix) if prefix else self
        return [declaration for spec in catalogue for declaration in spec.declarations()]

    def with_prefix(self, prefix: str) -> Catalogue:
        """The same catalogue with every topic named ``prefix + declared name``.

        Tests pass a uuid prefix so that they never share topics. A prefix replaces any
        earlier one rather than stacking, so applying the configured prefix twice is harmless.
        """
        topics = {name: spec.with_prefix(prefix) for name, spec in self.topics.items()}
        return replace(self, topics=topics, prefix=prefix)

    def schema_path(self, full_name: str) -> Path:
        """The ``.avsc`` file holding the current schema ``full_name``."""
        return avsc_path(self.schema_dir, full_name)


def avsc_path(schema_dir: Path, full_name: str) -> Path:
    """Where the current schema ``herald.<Name>`` lives: ``<schema_dir>/<Name>.avsc``."""
    return schema_dir / f"{full_name.rsplit('.', 1)[-1]}.avsc"


def load_catalogue(
    path: Path = TOPICS_FILE,
    *,
    schema_dir: Path = SCHEMA_DIR,
    environ: Mapping[str, str] | None = None,
) -> Catalogue:
    """Read and validate a catalogue file; raise :class:`CatalogueError` on any problem.

    ``environ`` (default ``os.environ``) may carry ``HERALD_RETRY_DELAYS_MS``; it is read
    here, once, so a loaded catalogue never changes under its users.
    """
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise CatalogueError(f"cannot read topic catalogue {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path} is not valid TOML: {exc}") from exc

    where = str(path)
    _reject_unknown(data, {"defaults", "retry", "topics"}, where)
    defaults = _table(data, "defaults", where)
    _reject_unknown(
        defaults,
        {"partitions", "replication_factor", "retention_ms", "dlq_retention_ms", "compact_config"},
        f"{where} [defaults]",
    )
    retry = _table(data, "retry", where)
    _reject_unknown(retry, {"delays_ms"}, f"{where} [retry]")
    delays = _retry_delays(retry.get("delays_ms", []), f"{where} [retry] delays_ms")
    override = (os.environ if environ is None else environ).get(RETRY_DELAYS_ENV, "").strip()
    if override:
        delays = _retry_delays_from_env(override)

    compact_config = {
        **COMPACT_CONFIG_DEFAULTS,
        **_configs(defaults.get("compact_config", {}), f"{where} [defaults.compact_config]"),
    }
    topics_table = _table(data, "topics", where)
    if not topics_table:
        raise CatalogueError(f"{where} declares no [topics.<name>] tables")
    topics = {
        logical_name: _topic_spec(
            logical_name,
            _table(topics_table, logical_name, f"{where} [topics]"),
            defaults,
            delays,
            compact_config,
            f"{where} [topics.{logical_name}]",
        )
        for logical_name in topics_table
    }
    catalogue = Catalogue(
        topics=topics,
        retry_delays_ms=delays,
        schema_dir=schema_dir,
        source=path,
    )
    _validate(catalogue)
    return catalogue


# Logical names double as attributes (CATALOGUE.events); they must not shadow the catalogue's
# own fields and methods.
_CATALOGUE_ATTRIBUTES = frozenset(dir(Catalogue)) | {f.name for f in fields(Catalogue)}

_TOPIC_FIELDS = {
    "name": str,
    "key": str,
    "value_schema": str,
    "cleanup": str,
    "partitions": int,
    "replication_factor": int,
    "retention_ms": int,
    "channel": str,
    "retry": bool,
    "dlq": bool,
    "doc": str,
    "config": dict,
}
_REQUIRED_TOPIC_FIELDS = ("name", "key", "value_schema", "cleanup")
_INHERITED_FIELDS = ("partitions", "replication_factor", "retention_ms")


def _topic_spec(
    logical_name: str,
    table: dict[str, Any],
    defaults: dict[str, Any],
    delays: tuple[int, ...],
    compact_config: Mapping[str, str],
    where: str,
) -> TopicSpec:
    if not logical_name.isidentifier() or logical_name in _CATALOGUE_ATTRIBUTES:
        raise CatalogueError(f"{where}: {logical_name!r} cannot be a topic's logical name")
    _reject_unknown(table, set(_TOPIC_FIELDS), where)
    for name in _REQUIRED_TOPIC_FIELDS:
        if name not in table:
            raise CatalogueError(f"{where}: missing required field {name!r}")
    values: dict[str, Any] = {name: defaults.get(name) for name in _INHERITED_FIELDS}
    values.update(table)
    for name, expected in _TOPIC_FIELDS.items():
        value = values.get(name)
        # bool is an int subclass; `partitions = true` is still nonsense.
        if value is not None and (
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        ):
            raise CatalogueError(
                f"{where}: {name} must be {expected.__name__}, got {type(value).__name__}"
            )
    for name in _INHERITED_FIELDS:
        if values[name] is None:
            raise CatalogueError(f"{where}: {name} is set neither here nor in [defaults]")
    dlq_retention_ms = defaults.get("dlq_retention_ms", values["retention_ms"])
    if not isinstance(dlq_retention_ms, int) or isinstance(dlq_retention_ms, bool):
        raise CatalogueError(f"{where}: [defaults] dlq_retention_ms must be int")
    spec = TopicSpec(
        logical_name=logical_name,
        name=values["name"],
        key=values["key"],
        value_schema=values["value_schema"],
        cleanup=values["cleanup"],
        partitions=values["partitions"],
        replication_factor=values["replication_factor"],
        retention_ms=values["retention_ms"],
        dlq_retention_ms=dlq_retention_ms,
        retry_delays_ms=delays,
        channel=values.get("channel"),
        retry=values.get("retry", False),
        dlq=values.get("dlq", False),
        doc=values.get("doc", ""),
        config=_configs(values.get("config", {}), f"{where} config"),
        compact_config=compact_config,
    )
    _check_topic_spec(spec, where)
    return spec


def _check_topic_spec(spec: TopicSpec, where: str) -> None:
    if spec.cleanup not in _CLEANUP_POLICIES:
        raise CatalogueError(
            f"{where}: cleanup {spec.cleanup!r} is not one of {sorted(_CLEANUP_POLICIES)}"
        )
    if spec.partitions < 1 or spec.replication_factor < 1:
        raise CatalogueError(f"{where}: partitions and replication_factor must be at least 1")
    for name, retention in (
        ("retention_ms", spec.retention_ms),
        ("dlq_retention_ms", spec.dlq_retention_ms),
    ):
        # -1 is Kafka's "keep forever".
        if retention != -1 and retention < 1:
            raise CatalogueError(f"{where}: {name} must be positive or -1, got {retention}")
    if spec.retry and spec.compacted:
        raise CatalogueError(f"{where}: retry tiers need a delete topic, not a compacted one")
    if spec.retry and not spec.retry_delays_ms:
        raise CatalogueError(f"{where}: retry = true but [retry] delays_ms is empty")
    _check_topic_names(spec)


def _check_topic_names(spec: TopicSpec) -> None:
    """Refuse names Kafka would refuse, including the retry and DLQ companions."""
    for name, *_ in spec.declarations():
        if len(name) > _MAX_TOPIC_NAME or not _TOPIC_NAME.fullmatch(name):
            raise CatalogueError(
                f"topic name {name!r} is not a legal Kafka topic name "
                f"(letters, digits, '.', '_', '-'; at most {_MAX_TOPIC_NAME} characters)"
            )


def _validate(catalogue: Catalogue) -> None:
    """Checks across topics: unique names, schemas present, co-partitioning."""
    where = catalogue.source
    seen: dict[str, str] = {}
    for spec in catalogue:
        for name, *_ in spec.declarations():
            if name in seen:
                raise CatalogueError(
                    f"{where}: topic name {name!r} is declared by both {seen[name]!r} and "
                    f"{spec.logical_name!r}"
                )
            seen[name] = spec.logical_name
        schema_file = catalogue.schema_path(spec.value_schema)
        if not schema_file.is_file():
            raise CatalogueError(
                f"{where}: topic {spec.logical_name!r}: value schema {spec.value_schema!r} "
                f"has no file {schema_file}"
            )
    channels = [spec.channel for spec in catalogue if spec.channel is not None]
    if len(channels) != len(set(channels)):
        raise CatalogueError(f"{where}: a channel has more than one deliveries topic: {channels}")
    # Topics keyed by user_id feed (or are) the router's per-user tables; Kafka joins them
    # partition by partition, so a differing count would look users up in the wrong place.
    by_user = {spec.logical_name: spec.partitions for spec in catalogue if spec.key == "user_id"}
    if len(set(by_user.values())) > 1:
        counts = ", ".join(f"{name}={count}" for name, count in by_user.items())
        raise CatalogueError(
            f"{where}: topics keyed by user_id must be co-partitioned "
            f"(same partition count): {counts}"
        )


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise CatalogueError(f"{where}: {key} must be a table")
    return value


def _reject_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    # A misspelt key (`partiton = 3`) must fail loudly, not silently fall back to a default.
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _configs(table: Any, where: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise CatalogueError(f"{where} must be a table of Kafka topic configs")
    configs = {}
    for key, value in table.items():
        if isinstance(value, bool):
            configs[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            configs[key] = str(value)
        else:
            raise CatalogueError(f"{where}: {key} must be a string, number or boolean")
    return configs


def _retry_delays_from_env(text: str) -> tuple[int, ...]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise CatalogueError(
            f"{RETRY_DELAYS_ENV}={text!r}: expected comma-separated milliseconds, e.g. 200,500"
        ) from None
    return _retry_delays(values, RETRY_DELAYS_ENV)


def _retry_delays(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in values
    ):
        raise CatalogueError(
            f"{where} must be a list of non-negative integer milliseconds, got {values!r}"
        )
    return tuple(values)
