"""``herald status``: one screen saying whether Herald is well.

It reads, without keeping any state between runs:

- every service's ``/healthz`` and ``/readyz`` (the ingest and read APIs on their ports, the
  router, senders and inapp_store on their metrics ports), and their ``/metrics``;
- Kafka: each consumer group's state, members and committed offsets, and the watermarks of the
  topics it reads (lag) and of every dead-letter topic (depth);
- PostgreSQL: delivery attempts that reached a final status in the last minute, per channel.

Addresses come from the environment the services use (``HERALD_INGEST_PORT``,
``ROUTER_METRICS_PORT``, ``KAFKA_*``, ``DATABASE_*``, ...); ``--endpoint NAME=URL`` overrides one.

The module is split so the decisions are testable without a broker: ``*_row(s)``, ``group_status``,
``problems`` and ``build_report`` turn raw readings into the report (a JSON-ready dict);
``probe_service``, ``read_kafka`` and ``read_deliveries`` do the I/O.

Exit code: 0 when nothing is wrong, 1 when a :func:`problems` entry exists (a service down or
not ready, a consumer group stuck, a DLQ holding records, a circuit breaker open, a DLQ-flood
guard tripped, a topic missing, Kafka or PostgreSQL not answering), 2 on a usage error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import typer

from herald.channels import CHANNELS
from herald.settings import DatabaseSettings, KafkaSettings, Settings, get_settings
from schemas import CATALOGUE, Catalogue

#: Services in the order the screen lists them.
SERVICES: tuple[str, ...] = (
    "ingest",
    "read_api",
    "router",
    "email_sender",
    "sms_sender",
    "webhook_sender",
    "slack_sender",
    "inapp_store",
)

#: Consumer group of each consuming service, after ``KAFKA_TOPIC_PREFIX``: the router's Faust
#: app id (services/router/app.py), the senders' and inapp_store's ``SERVICE``.
GROUP_SUFFIXES: Mapping[str, str] = {
    "router": "herald-router",
    "email_sender": "email_sender",
    "sms_sender": "sms_sender",
    "webhook_sender": "webhook_sender",
    "slack_sender": "slack_sender",
    "inapp_store": "inapp_store",
}

#: The senders' breaker gauge (herald/sender/handler.py): 1 while the breaker is open.
BREAKER_METRIC = "herald_sender_circuit_open"
#: The DLQ-flood guard's gauge (herald/dlqlimit.py): 1 while a service holds its dead letters.
GUARD_METRIC = "herald_dlq_guard_tripped"
#: Channel of each sender service.
SENDER_CHANNELS: Mapping[str, str] = {
    "email_sender": "email",
    "sms_sender": "sms",
    "webhook_sender": "webhook",
    "slack_sender": "slack",
}

#: Statuses final for their attempt, and how the screen groups them.
FINAL_STATUSES: Mapping[str, str] = {
    "sent": "sent",
    "delivered": "sent",
    "failed": "failed",
    "dead": "failed",
    "skipped": "skipped",
}
#: The window deliveries are counted over (the screen says "per minute").
DELIVERY_WINDOW_S = 60

#: Group states (confluent-kafka's ConsumerGroupState, lower case) in which members rebalance.
REBALANCING_STATES = frozenset({"preparing_rebalancing", "completing_rebalancing"})

#: ``--endpoint NAME=`` values that mean "this service has no endpoint to ask".
_OFF = frozenset({"", "off", "none", "0"})


# ----------------------------------------------------------------------------------------------
# Raw readings


@dataclass(frozen=True)
class Probe:
    """What one service's endpoints answered (``url`` None: no endpoint configured)."""

    name: str
    url: str | None
    #: HTTP status of /healthz and /readyz; None when nothing answered.
    healthz: int | None = None
    readyz: int | None = None
    #: The /readyz body (short), for the detail column.
    ready_detail: str = ""
    #: The /metrics text; None when not read.
    metrics: str | None = None
    error: str = ""


@dataclass(frozen=True)
class GroupSpec:
    """A consumer group of the catalogue and the topics its service consumes."""

    service: str
    group_id: str
    topics: tuple[str, ...]


@dataclass
class KafkaReading:
    """Everything read from Kafka in one pass."""

    #: Partition ids of every existing topic that was asked about.
    partitions: dict[str, list[int]] = field(default_factory=dict)
    #: (topic, partition) -> (low, high) watermark.
    watermarks: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    #: group id -> (state, member count); state in lower case ("stable", "empty", "dead").
    groups: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: group id -> (topic, partition) -> committed offset (only partitions with a commit).
    committed: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    error: str = ""


# ----------------------------------------------------------------------------------------------
# Pure logic: readings in, report out


def consumer_groups(catalogue: Catalogue, prefix: str) -> list[GroupSpec]:
    """The catalogue's consumer groups and the topics each one reads (``catalogue`` prefixed
    with ``prefix`` already)."""
    email, sms = catalogue.for_channel("email"), catalogue.for_channel("sms")
    return [
        GroupSpec(
            "router",
            prefix + GROUP_SUFFIXES["router"],
            (
                catalogue.events.name,
                catalogue.recipients.name,
                catalogue.event_types.name,
                catalogue.users.name,
                catalogue.preferences.name,
            ),
        ),
        GroupSpec(
            "email_sender",
            prefix + GROUP_SUFFIXES["email_sender"],
            (email.name, *email.retry_topic_names),
        ),
        GroupSpec(
            "sms_sender", prefix + GROUP_SUFFIXES["sms_sender"], (sms.name, *sms.retry_topic_names)
        ),
        *(
            GroupSpec(
                service,
                prefix + GROUP_SUFFIXES[service],
                (spec.name, *spec.retry_topic_names),
            )
            for service, spec in (
                ("webhook_sender", catalogue.for_channel("webhook")),
                ("slack_sender", catalogue.for_channel("slack")),
            )
        ),
        GroupSpec(
            "inapp_store",
            prefix + GROUP_SUFFIXES["inapp_store"],
            (
                catalogue.notifications.name,
                catalogue.for_channel("inapp").name,
                catalogue.delivery_status.name,
            ),
        ),
    ]


def dlq_topics(catalogue: Catalogue) -> list[str]:
    """Every dead-letter topic of the (prefixed) catalogue."""
    return [spec.dlq_name for spec in catalogue if spec.dlq]


def partition_lag(committed: int | None, low: int, high: int) -> int:
    """Records a group has still to read in one partition. Without a commit (or with one
    below the log start, after retention) the group starts at the earliest record
    (``auto.offset.reset=earliest``)."""
    start = low if committed is None or committed < low else committed
    return max(high - start, 0)


def group_verdict(state: str, members: int, lag: int) -> str:
    """``ok`` (members, no lag), ``lagging`` (members, lag), ``rebalancing``, ``stuck`` (no
    member alive but records waiting: a stopped consumer) or ``idle`` (no member, no lag)."""
    if members > 0:
        if state in REBALANCING_STATES:
            return "rebalancing"
        return "lagging" if lag > 0 else "ok"
    return "stuck" if lag > 0 else "idle"


def group_status(
    spec: GroupSpec,
    state: str,
    members: int,
    committed: Mapping[tuple[str, int], int],
    watermarks: Mapping[tuple[str, int], tuple[int, int]],
    partitions: Mapping[str, Sequence[int]],
) -> dict[str, Any]:
    """One consumer group's row: lag per partition, per topic and in total, and its verdict.

    Topics are the group's catalogue topics plus any other it has committed offsets on;
    a catalogue topic absent from ``partitions`` is listed as missing."""
    topics = list(spec.topics)
    topics += sorted({t for t, _ in committed if t not in spec.topics and t in partitions})
    rows: list[dict[str, Any]] = []
    per_topic: dict[str, int] = {}
    for topic in topics:
        if topic not in partitions:
            continue
        per_topic[topic] = 0
        for partition in sorted(partitions[topic]):
            marks = watermarks.get((topic, partition))
            if marks is None:
                continue
            low, high = marks
            offset = committed.get((topic, partition))
            lag = partition_lag(offset, low, high)
            per_topic[topic] += lag
            rows.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "committed": offset,
                    "low": low,
                    "end": high,
                    "lag": lag,
                }
            )
    lag = sum(per_topic.values())
    return {
        "group": spec.group_id,
        "service": spec.service,
        "state": state,
        "members": members,
        "lag": lag,
        "verdict": group_verdict(state, members, lag),
        "topics": per_topic,
        "missing_topics": [t for t in spec.topics if t not in partitions],
        "partitions": rows,
    }


def dlq_rows(
    topics: Sequence[str],
    watermarks: Mapping[tuple[str, int], tuple[int, int]],
    partitions: Mapping[str, Sequence[int]],
) -> list[dict[str, Any]]:
    """Depth of each dead-letter topic (high - low watermark over its partitions; ``None``
    for a topic that does not exist)."""
    rows: list[dict[str, Any]] = []
    for topic in topics:
        if topic not in partitions:
            rows.append({"topic": topic, "depth": None, "partitions": {}})
            continue
        depths = {
            str(p): max(watermarks[(topic, p)][1] - watermarks[(topic, p)][0], 0)
            for p in sorted(partitions[topic])
            if (topic, p) in watermarks
        }
        rows.append({"topic": topic, "depth": sum(depths.values()), "partitions": depths})
    return rows


def service_row(probe: Probe) -> dict[str, Any]:
    """One service's row: ``up`` (answers /healthz 200), ``ready`` (/readyz 200); both None
    when it has no endpoint to ask."""
    if probe.url is None:
        return {
            "name": probe.name,
            "url": None,
            "up": None,
            "ready": None,
            "detail": "no endpoint (port 0 or --endpoint NAME=off)",
        }
    up = probe.healthz == 200
    ready = up and probe.readyz == 200
    if not up:
        detail = probe.error or (
            f"/healthz answered {probe.healthz}" if probe.healthz else "no answer"
        )
    elif not ready:
        detail = probe.ready_detail or f"/readyz answered {probe.readyz}"
    else:
        detail = ""
    return {"name": probe.name, "url": probe.url, "up": up, "ready": ready, "detail": detail}


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    found = []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    found.append((dict(sample.labels), float(sample.value)))
    except ValueError:
        return []
    return found


def breaker_rows(probes: Mapping[str, Probe]) -> list[dict[str, Any]]:
    """Each sender's circuit breaker from its ``herald_sender_circuit_open`` gauge: ``open``,
    ``closed`` or ``unknown`` (service not answering, no endpoint, or gauge not exported)."""
    rows = []
    for service, channel in SENDER_CHANNELS.items():
        probe = probes.get(service)
        state, detail = "unknown", ""
        if probe is None or probe.url is None:
            detail = "no metrics endpoint"
        elif probe.metrics is None:
            detail = "metrics not read (service down?)"
        else:
            values = [
                value
                for labels, value in metric_samples(probe.metrics, BREAKER_METRIC)
                if labels.get("channel", channel) == channel
            ]
            if not values:
                detail = f"{BREAKER_METRIC} not exported"
            else:
                state = "open" if max(values) > 0 else "closed"
        rows.append({"service": service, "channel": channel, "state": state, "detail": detail})
    return rows


def guard_rows(probes: Mapping[str, Probe]) -> list[dict[str, Any]]:
    """The DLQ-flood guard of every service exporting ``herald_dlq_guard_tripped``."""
    rows = []
    for name in SERVICES:
        probe = probes.get(name)
        if probe is None or probe.metrics is None:
            continue
        samples = metric_samples(probe.metrics, GUARD_METRIC)
        if samples:
            tripped = any(value > 0 for _, value in samples)
            rows.append({"service": name, "state": "tripped" if tripped else "ok"})
    return rows


def delivery_rows(
    counts: Mapping[tuple[str, str], int],
    channels: Iterable[str],
    window_s: float = DELIVERY_WINDOW_S,
) -> list[dict[str, Any]]:
    """Deliveries per minute per channel from ``(channel, status) -> attempts`` counted over
    ``window_s``: sent (sent, delivered), failed (failed, dead), skipped."""
    per_minute = 60.0 / window_s
    rows = []
    for channel in channels:
        totals = {"sent": 0, "failed": 0, "skipped": 0}
        for (row_channel, status), count in counts.items():
            if row_channel == channel and status in FINAL_STATUSES:
                totals[FINAL_STATUSES[status]] += count
        row: dict[str, Any] = {"channel": channel}
        row.update({k: _rate(v * per_minute) for k, v in totals.items()})
        row["total"] = _rate(sum(totals.values()) * per_minute)
        rows.append(row)
    return rows


def _rate(value: float) -> float | int:
    return int(value) if math.isclose(value, round(value)) else round(value, 1)


def problems(report: Mapping[str, Any]) -> list[str]:
    """What is wrong, one sentence each; empty when all is well (exit code 0)."""
    found: list[str] = []
    for row in report["services"]:
        if row["up"] is False:
            found.append(f"{row['name']} is down ({row['url']}: {row['detail']})")
        elif row["up"] and not row["ready"]:
            found.append(f"{row['name']} is not ready ({row['detail']})")
    kafka = report["kafka"]
    if kafka.get("error"):
        found.append(f"Kafka at {kafka['bootstrap_servers']} did not answer: {kafka['error']}")
    for group in report["consumer_groups"]:
        if group["verdict"] == "stuck":
            found.append(
                f"consumer group {group['group']} is stuck: {group['lag']} records waiting "
                f"and no member (is {group['service']} running?)"
            )
    for row in report["dlq"]:
        if row["depth"]:
            found.append(f"{row['topic']} holds {row['depth']} dead letters (herald dlq list)")
    missing = sorted(
        {t for group in report["consumer_groups"] for t in group["missing_topics"]}
        | {row["topic"] for row in report["dlq"] if row["depth"] is None}
    )
    if missing:
        found.append(
            f"{len(missing)} topics of the catalogue missing, e.g. {missing[0]} "
            "(herald topics create)"
        )
    deliveries = report["deliveries_per_minute"]
    if deliveries.get("error"):
        found.append(f"deliveries not read from PostgreSQL: {deliveries['error']}")
    for row in report["breakers"]:
        if row["state"] == "open":
            found.append(f"{row['channel']} circuit breaker of {row['service']} is open")
    for row in report["dlq_guards"]:
        if row["state"] == "tripped":
            found.append(f"DLQ-flood guard of {row['service']} tripped (see its log)")
    return found


def build_report(
    *,
    probes: Sequence[Probe],
    kafka: KafkaReading,
    bootstrap_servers: str,
    prefix: str,
    groups: Sequence[GroupSpec],
    dlqs: Sequence[str],
    delivery_counts: Mapping[tuple[str, str], int] | None,
    delivery_error: str = "",
    channels: Iterable[str] = CHANNELS,
) -> dict[str, Any]:
    """The whole report (what ``--json`` prints), ``ok`` and ``problems`` included."""
    by_name = {probe.name: probe for probe in probes}
    group_rows = []
    if not kafka.error:
        for spec in groups:
            state, members = kafka.groups.get(spec.group_id, ("unknown", 0))
            group_rows.append(
                group_status(
                    spec,
                    state,
                    members,
                    kafka.committed.get(spec.group_id, {}),
                    kafka.watermarks,
                    kafka.partitions,
                )
            )
    deliveries: dict[str, Any] = {"window_seconds": DELIVERY_WINDOW_S}
    if delivery_counts is None:
        deliveries["error"] = delivery_error or "not read"
        deliveries["channels"] = []
    else:
        deliveries["channels"] = delivery_rows(delivery_counts, channels)
    report: dict[str, Any] = {
        "services": [service_row(probe) for probe in probes],
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "topic_prefix": prefix,
            "error": kafka.error or None,
        },
        "consumer_groups": group_rows,
        "dlq": [] if kafka.error else dlq_rows(dlqs, kafka.watermarks, kafka.partitions),
        "deliveries_per_minute": deliveries,
        "breakers": breaker_rows(by_name),
        "dlq_guards": guard_rows(by_name),
    }
    found = problems(report)
    report["ok"] = not found
    report["problems"] = found
    return report


def parse_endpoints(values: Sequence[str]) -> dict[str, str | None]:
    """``--endpoint NAME=URL`` values; ``NAME=off`` (or empty) means no endpoint."""
    endpoints: dict[str, str | None] = {}
    for value in values:
        name, sep, url = value.partition("=")
        name = name.strip()
        if not sep or name not in SERVICES:
            raise ValueError(
                f"--endpoint {value!r}: expected NAME=URL with NAME one of {', '.join(SERVICES)}"
            )
        url = url.strip()
        endpoints[name] = None if url.lower() in _OFF else url.rstrip("/")
    return endpoints


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def endpoints_from_environment(settings: Settings) -> dict[str, str | None]:
    """Where each service answers, from the settings the services themselves read (a metrics
    port of 0 means the service serves no endpoint)."""
    from services.email_sender.settings import EmailSenderSettings
    from services.inapp_store.api.settings import ReadApiSettings
    from services.inapp_store.settings import InappStoreSettings
    from services.ingest.settings import IngestSettings
    from services.router.settings import RouterSettings
    from services.sms_sender.settings import SmsSenderSettings
    from services.webhook_sender.settings import SlackSenderSettings, WebhookSenderSettings

    def metrics(port: int) -> str | None:
        # serve_metrics binds 127.0.0.1 (herald.metrics).
        return f"http://127.0.0.1:{port}" if port else None

    return {
        "ingest": f"http://{_loopback(IngestSettings().host)}:{settings.local.ingest_port}",
        "read_api": f"http://{_loopback(ReadApiSettings().host)}:{settings.local.read_api_port}",
        "router": metrics(RouterSettings().metrics_port),
        "email_sender": metrics(EmailSenderSettings().metrics_port),
        "sms_sender": metrics(SmsSenderSettings().metrics_port),
        "webhook_sender": metrics(WebhookSenderSettings().metrics_port),
        "slack_sender": metrics(SlackSenderSettings().metrics_port),
        "inapp_store": metrics(InappStoreSettings().metrics_port),
    }


# ----------------------------------------------------------------------------------------------
# I/O: thin readers


def probe_service(name: str, url: str | None, timeout: float) -> Probe:
    """GET /healthz, /readyz and /metrics of one service."""
    if url is None:
        return Probe(name, None)
    import httpx

    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            health = client.get("/healthz").status_code
            ready = client.get("/readyz")
            detail = "" if ready.status_code == 200 else ready.text.strip()[:200]
            metrics = client.get("/metrics")
            text = metrics.text if metrics.status_code == 200 else None
            return Probe(name, url, health, ready.status_code, detail, text)
    except httpx.HTTPError as exc:
        return Probe(name, url, error=f"{type(exc).__name__}: {exc}"[:200] or "no answer")


def read_kafka(
    kafka: KafkaSettings, groups: Sequence[GroupSpec], dlqs: Sequence[str], timeout: float
) -> KafkaReading:
    """Group states, committed offsets and watermarks, with the admin client."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
    from confluent_kafka.admin import AdminClient, OffsetSpec

    reading = KafkaReading()
    admin = AdminClient(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "socket.timeout.ms": int(timeout * 1000),
            # Fail fast when no broker answers instead of retrying for the default 60 s.
            "socket.connection.setup.timeout.ms": int(timeout * 1000),
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout).topics
        ids = [spec.group_id for spec in groups]
        for group_id, future in admin.describe_consumer_groups(
            ids, request_timeout=timeout
        ).items():
            try:
                description = future.result()
                state = description.state.name.lower()
                reading.groups[group_id] = (state, len(description.members))
            except KafkaException:
                reading.groups[group_id] = ("unknown", 0)
        for group_id in ids:  # the API takes one group per request
            futures = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group_id)], request_timeout=timeout
            )
            reading.committed[group_id] = {
                (tp.topic, tp.partition): tp.offset
                for tp in futures[group_id].result().topic_partitions
                if tp.offset >= 0 and tp.error is None
            }
        wanted = {t for spec in groups for t in spec.topics} | set(dlqs)
        wanted |= {t for offsets in reading.committed.values() for t, _ in offsets}
        reading.partitions = {
            topic: sorted(metadata[topic].partitions)
            for topic in wanted
            if topic in metadata and metadata[topic].error is None
        }
        parts = [(t, p) for t, ps in reading.partitions.items() for p in ps]
        lows = _list_offsets(admin, parts, OffsetSpec.earliest, timeout)
        highs = _list_offsets(admin, parts, OffsetSpec.latest, timeout)
        reading.watermarks = {key: (lows[key], highs[key]) for key in parts}
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reading.error = (error.str() if hasattr(error, "str") else str(error))[:300]
    return reading


def _list_offsets(
    admin: Any, parts: Sequence[tuple[str, int]], spec: Callable[[], Any], timeout: float
) -> dict[tuple[str, int], int]:
    """One kind of offset (earliest or latest) of every partition. Partitions the broker
    answers with a retriable error (a just-created topic's leadership settling) are asked
    again a few times before the error stands."""
    from confluent_kafka import KafkaException, TopicPartition

    found: dict[tuple[str, int], int] = {}
    pending = list(parts)
    for attempt in range(4):
        if not pending:
            break
        futures = admin.list_offsets(
            {TopicPartition(t, p): spec() for t, p in pending}, request_timeout=timeout
        )
        failed: list[tuple[str, int]] = []
        for tp, future in futures.items():
            try:
                found[(tp.topic, tp.partition)] = future.result().offset
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if attempt == 3 or not (error is not None and error.retriable()):
                    raise
                failed.append((tp.topic, tp.partition))
        pending = failed
        if pending:
            time.sleep(0.2 * (attempt + 1))
    return found


def read_deliveries(database: DatabaseSettings, timeout: float) -> dict[tuple[str, str], int]:
    """Delivery attempts per (channel, status) that reached a final status in the window."""
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    from herald.db.engine import make_engine

    engine = make_engine(
        database, poolclass=NullPool, connect_args={"connect_timeout": max(int(timeout), 1)}
    )
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout * 1000)}"))
            rows = conn.execute(
                text(
                    "SELECT d.channel, a.status, count(*) FROM delivery_attempt a"
                    " JOIN notification_delivery d ON d.id = a.delivery_id"
                    " WHERE a.occurred_at > now() - make_interval(secs => :window)"
                    " AND a.status = ANY(:statuses)"
                    " GROUP BY d.channel, a.status"
                ),
                {"window": DELIVERY_WINDOW_S, "statuses": list(FINAL_STATUSES)},
            ).all()
    finally:
        engine.dispose()
    return {(str(channel), str(status)): int(count) for channel, status, count in rows}


def collect(
    settings: Settings,
    endpoints: Mapping[str, str | None],
    timeout: float,
    catalogue: Catalogue = CATALOGUE,
) -> dict[str, Any]:
    """Read everything (services, Kafka, PostgreSQL at once) and build the report."""
    prefix = settings.kafka.topic_prefix
    prefixed = catalogue.with_prefix(prefix)
    groups = consumer_groups(prefixed, prefix)
    dlqs = dlq_topics(prefixed)
    with ThreadPoolExecutor(max_workers=len(SERVICES) + 2) as pool:
        probe_futures = [pool.submit(probe_service, n, endpoints[n], timeout) for n in SERVICES]
        kafka_future = pool.submit(read_kafka, settings.kafka, groups, dlqs, timeout)
        db_future = pool.submit(read_deliveries, settings.database, timeout)
        probes = [f.result() for f in probe_futures]
        kafka = kafka_future.result()
        counts: dict[tuple[str, str], int] | None
        try:
            counts, db_error = db_future.result(), ""
        except Exception as exc:  # any driver error: report it, never a traceback
            counts, db_error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return build_report(
        probes=probes,
        kafka=kafka,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        prefix=prefix,
        groups=groups,
        dlqs=dlqs,
        delivery_counts=counts,
        delivery_error=db_error,
        channels=prefixed.channels,
    )


# ----------------------------------------------------------------------------------------------
# Rendering


def _short(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    if value is None:
        return "[dim]-[/]"
    return f"[green]{yes}[/]" if value else f"[bold red]{no}[/]"


_VERDICT_STYLE = {
    "ok": "green",
    "idle": "dim",
    "lagging": "yellow",
    "rebalancing": "yellow",
    "stuck": "bold red",
}


def render(report: Mapping[str, Any]) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    kafka = report["kafka"]
    prefix = kafka["topic_prefix"]
    title = f"Kafka {kafka['bootstrap_servers']}"
    if prefix:
        title += f", topic prefix {prefix!r} (left out below)"
    console.print(f"[bold]Herald status[/]  {escape(title)}")

    services = Table(title="Services", title_justify="left")
    for column in ("service", "address", "up", "ready", "detail"):
        services.add_column(column)
    for row in report["services"]:
        services.add_row(
            row["name"],
            row["url"] or "[dim]-[/]",
            _yes_no(row["up"], "up", "DOWN"),
            _yes_no(row["ready"] if row["up"] else None, "ready", "NOT READY"),
            escape(row["detail"]),
        )
    console.print(services)

    groups = Table(title="Consumer groups", title_justify="left")
    for column in ("group", "state", "members", "lag", "verdict", "lag by topic"):
        groups.add_column(column, justify="right" if column in ("members", "lag") else "left")
    if kafka["error"]:
        groups.add_row("[red]Kafka did not answer[/]", "", "", "", "", escape(kafka["error"]))
    for group in report["consumer_groups"]:
        lagging = ", ".join(
            f"{_short(topic, prefix)} {lag}" for topic, lag in group["topics"].items() if lag
        )
        if group["missing_topics"]:
            lagging = (lagging + "; " if lagging else "") + "[red]topics missing[/]"
        style = _VERDICT_STYLE.get(group["verdict"], "")
        groups.add_row(
            _short(group["group"], prefix),
            group["state"],
            str(group["members"]),
            f"{group['lag']:,}",
            f"[{style}]{group['verdict']}[/]" if style else group["verdict"],
            lagging,
        )
    console.print(groups)

    dlq = Table(title="Dead-letter topics", title_justify="left")
    dlq.add_column("topic")
    dlq.add_column("depth", justify="right")
    for row in report["dlq"]:
        depth = row["depth"]
        shown = "[red]missing[/]" if depth is None else f"[bold red]{depth:,}[/]" if depth else "0"
        dlq.add_row(_short(row["topic"], prefix), shown)
    console.print(dlq)

    deliveries = report["deliveries_per_minute"]
    table = Table(
        title="Deliveries per minute",
        title_justify="left",
        caption=f"final statuses in the last {deliveries['window_seconds']} s",
        caption_justify="left",
    )
    for column in ("channel", "sent", "failed", "skipped", "total"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for row in deliveries["channels"]:
        table.add_row(
            row["channel"], *(str(row[k]) for k in ("sent", "failed", "skipped", "total"))
        )
    if deliveries.get("error"):
        console.print(
            "[bold]Deliveries per minute:[/] [red]not read from PostgreSQL:[/] "
            + escape(deliveries["error"])
        )
    else:
        console.print(table)

    breakers = Table(title="Breakers", title_justify="left")
    for column in ("service", "what", "state", "detail"):
        breakers.add_column(column)
    states = {"open": "[bold red]OPEN[/]", "tripped": "[bold red]TRIPPED[/]", "closed": "closed"}
    for row in report["breakers"]:
        state = states.get(row["state"], f"[dim]{row['state']}[/]")
        breakers.add_row(row["service"], f"{row['channel']} circuit", state, escape(row["detail"]))
    for row in report["dlq_guards"]:
        breakers.add_row(row["service"], "DLQ-flood guard", states.get(row["state"], "ok"), "")
    console.print(breakers)

    if report["problems"]:
        console.print(f"[bold red]{len(report['problems'])} problem(s):[/]")
        for line in report["problems"]:
            console.print(f"  - {escape(line)}")
    else:
        console.print("[bold green]All well.[/]")


def status(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    endpoint: list[str] = typer.Option(
        [],
        "--endpoint",
        "-e",
        metavar="NAME=URL",
        help=f"Where a service answers, overriding the environment; NAME one of "
        f"{', '.join(SERVICES)}; NAME=off skips it. Repeatable.",
    ),
    timeout: float = typer.Option(3.0, min=0.1, help="Seconds to wait for each answer."),
) -> None:
    """One screen: services up/ready, consumer lag (stuck groups), DLQ depth, deliveries per
    minute per channel, breakers. Exit 0 when all is well, 1 when something is wrong (down,
    not ready, stuck, DLQ non-empty, breaker open, guard tripped, Kafka/PostgreSQL away)."""
    settings = get_settings()
    try:
        overrides = parse_endpoints(endpoint)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    endpoints = {**endpoints_from_environment(settings), **overrides}
    report = collect(settings, endpoints, timeout)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render(report)
    if report["problems"]:
        raise typer.Exit(1)
