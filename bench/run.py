"""``make bench``: Herald's throughput and latency on this machine, everything co-located.

1. Brings up whatever is not running (local stack), on bench-only topics (a fresh prefix) and a
   fresh database schema, and starts router, senders and inapp_store as real processes.
2. Seeds an event type and the users (through the compacted topics, as ingest would).
3. Peak: publishes N events (fan-out F recipients each) as fast as the producer goes and waits
   until every delivery has a final status row in PostgreSQL: events/s and deliveries/s.
4. Latency: publishes again at half the measured peak rate (or at `--latency-rate`); p50/p99
   from publish to the delivery's final status row.
5. Reference: a raw confluent-kafka produce→consume of the same number of same-size messages.
6. The provider stand-ins' own ceiling at 0 ms latency (bench/standins.py), measured first on
   private copies, so that a sender figure can be told apart from a stand-in limit.
Prints a table and writes bench/results/latest.json. Stops what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer

from bench.standins import STANDIN_LABELS, ceilings
from herald.db import migrate
from herald.db.engine import search_path_options
from herald.devstack import stack
from herald.serde import encode
from herald.settings import Settings, get_settings
from herald.streaming import producer_config
from herald.supervisor import ServiceProcess, start_service, stop_all
from herald.topics import admin_client, create_topics, delete_topics
from schemas import CATALOGUE, Catalogue

RESULTS = Path(__file__).resolve().parent / "results"
FINAL = ("sent", "delivered", "failed", "dead", "skipped")


def seed(producer: Producer, catalogue: Catalogue, users: list[str], channels: list[str]) -> str:
    code = "bench.ping"
    now = datetime.now(UTC)
    producer.produce(
        catalogue.event_types.name,
        key=code,
        value=encode(
            "herald.EventType",
            {
                "code": code,
                "name": "Bench ping",
                "channels": channels,
                "templates": {
                    ch: {"title": "Ping {{ n }}", "body": "Ping number {{ n }}", "html": None}
                    for ch in channels
                },
                "updated_at": now,
            },
        ),
    )
    for i, user in enumerate(users):
        producer.produce(
            catalogue.users.name,
            key=user,
            value=encode(
                "herald.User",
                {
                    "user_id": user,
                    "email": f"{user}@bench.example",
                    "phone": f"+1555{i:07d}",
                    "display_name": user,
                    "updated_at": now,
                },
            ),
        )
    producer.flush(60)
    return code


def publish(
    producer: Producer,
    catalogue: Catalogue,
    code: str,
    users: list[str],
    count: int,
    fanout: int,
    rate: float | None,
    padding: str,
) -> dict[str, float]:
    """Publish ``count`` events; return event_id → publish time (epoch seconds)."""
    sent: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(count):
        if rate:
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        event_id = str(uuid.uuid4())
        recipients = [users[(i * fanout + j) % len(users)] for j in range(fanout)]
        value = encode(
            "herald.Event",
            {
                "event_id": event_id,
                "event_type": code,
                "occurred_at": datetime.now(UTC),
                "producer": "bench",
                "actor_id": None,
                "recipients": recipients,
                "context": {"n": str(i), "padding": padding},
                "metadata": {},
            },
        )
        while True:
            try:
                producer.produce(catalogue.events.name, key=event_id, value=value)
                break
            except BufferError:
                producer.poll(0.01)
        sent[event_id] = time.time()
        producer.poll(0)
    producer.flush(60)
    return sent


def wait_final(conn: psycopg.Connection[Any], expected: int, timeout: float) -> float:
    """Wait until ``expected`` deliveries have a final status; return when that was seen."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "select count(*) from notification_delivery where status = any(%s)", [list(FINAL)]
        ).fetchone()
        done = row[0] if row else 0
        if done >= expected:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {expected} deliveries final after {timeout}s")
        time.sleep(0.05)


def latencies(conn: psycopg.Connection[Any], sent: dict[str, float]) -> list[float]:
    rows = conn.execute(
        "select n.event_id::text, d.updated_at from notification_delivery d"
        " join notification n on n.id = d.notification_id where d.status = any(%s)",
        [list(FINAL)],
    ).fetchall()
    return [row[1].timestamp() - sent[row[0]] for row in rows if row[0] in sent]


def raw_reference(settings: Settings, topic: str, count: int, size: int) -> float:
    """Messages/s of a plain confluent-kafka produce→consume loop of ``count`` messages."""
    producer = Producer(producer_config(settings.kafka))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"bench-raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    payload = os.urandom(size)
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=str(i), value=payload)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    received = 0
    while received < count:
        received += sum(1 for m in consumer.consume(1000, 1.0) if not m.error())
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def usage(service: ServiceProcess) -> dict[str, float]:
    """A running service's peak resident memory (MB, the kernel's high-water mark) and the CPU
    seconds it has used, from /proc (Linux)."""
    pid = service.proc.pid
    peak_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "cpu_seconds": round(cpu, 1)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--fanout", type=int, default=1, help="recipients per event")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--channels", default="inapp", help="comma-separated: inapp,email,sms")
    parser.add_argument("--payload-bytes", type=int, default=200, help="context padding")
    parser.add_argument("--latency-events", type=int, default=5_000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--router-workers", type=int, default=1, help="router processes")
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="events/s of the latency run (default: half of the measured peak)",
    )
    parser.add_argument(
        "--standin-seconds", type=float, default=3, help="time bound of each stand-in run"
    )
    parser.add_argument(
        "--skip-standins", action="store_true", help="do not measure the stand-ins' ceiling"
    )
    args = parser.parse_args()

    standins: dict[str, float] = {}
    if not args.skip_standins:
        print("measuring the provider stand-ins' ceiling...", flush=True)
        standins = ceilings(seconds=args.standin_seconds)

    settings = get_settings()
    started_parts = stack.up(settings, say=lambda line: print(line, flush=True))
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    database = settings.database.model_copy(update={"database_schema": schema})
    catalogue = CATALOGUE.with_prefix(prefix)
    services: list[ServiceProcess] = []
    create_topics(kafka, catalogue, prefix="")
    try:
        migrate.upgrade(database)
        env = {
            "KAFKA_TOPIC_PREFIX": prefix,
            "DATABASE_SCHEMA": schema,
            "ROUTER_METRICS_PORT": "0",
            "EMAIL_SENDER_METRICS_PORT": "0",
            "SMS_SENDER_METRICS_PORT": "0",
            "INAPP_STORE_METRICS_PORT": "0",
        }
        log_dir = settings.local.local_dir / "bench-logs"
        services.append(start_service("services.inapp_store", env, log_dir))
        for worker in range(args.router_workers):
            services.append(start_service("services.router", env, log_dir, name=f"router-{worker}"))
        channels = [c.strip() for c in args.channels.split(",") if c.strip()]
        for channel, module in (("email", "services.email_sender"), ("sms", "services.sms_sender")):
            if channel in channels:
                services.append(start_service(module, env, log_dir))
        producer = Producer(producer_config(kafka, **{"linger.ms": 20}))
        users = [f"bench-user-{i}" for i in range(args.users)]
        code = seed(producer, catalogue, users, channels)
        padding = "x" * args.payload_bytes
        conn = psycopg.connect(
            database.libpq_url, autocommit=True, options=search_path_options(schema)
        )

        # Warm-up: one event through every stage, so start-up is not measured as throughput.
        publish(producer, catalogue, code, users, 1, args.fanout, None, padding)
        base = args.fanout * len(channels)
        wait_final(conn, base, args.timeout)
        print("pipeline warm; measuring peak...", flush=True)

        t0 = time.time()
        peak_sent = publish(
            producer, catalogue, code, users, args.events, args.fanout, None, padding
        )
        t_published = time.time()
        deliveries = args.events * args.fanout * len(channels)
        t1 = wait_final(conn, base + deliveries, args.timeout)
        peak_events_s = args.events / (t1 - t0)
        peak_lat = latencies(conn, peak_sent)

        rate = args.latency_rate or peak_events_s / 2
        print(f"peak {peak_events_s:,.0f} events/s; latency at {rate:,.0f} events/s", flush=True)
        rate_sent = publish(
            producer, catalogue, code, users, args.latency_events, args.fanout, rate, padding
        )
        wait_final(
            conn,
            base + deliveries + args.latency_events * args.fanout * len(channels),
            args.timeout,
        )
        rate_lat = latencies(conn, rate_sent)
        resources = {service.name: usage(service) for service in services if service.running()}

        sample = {
            "event_id": str(uuid.uuid4()),
            "event_type": code,
            "occurred_at": datetime.now(UTC),
            "recipients": users[: args.fanout],
            "context": {"n": "1", "padding": padding},
        }
        event_size = len(encode("herald.Event", sample))
        raw = raw_reference(
            settings.model_copy(update={"kafka": kafka}),
            catalogue.recipients.name,
            args.events,
            event_size,
        )
        result = {
            "when": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "params": vars(args),
            "events": args.events,
            "deliveries": deliveries,
            "publish_seconds": round(t_published - t0, 3),
            "pipeline_seconds": round(t1 - t0, 3),
            "events_per_s": round(peak_events_s, 1),
            "deliveries_per_s": round(deliveries / (t1 - t0), 1),
            "peak_latency_ms": {
                "p50": round(percentile(peak_lat, 0.5) * 1000, 1),
                "p99": round(percentile(peak_lat, 0.99) * 1000, 1),
            },
            "latency_rate_events_per_s": round(rate, 1),
            "latency_at_rate_ms": {
                "p50": round(percentile(rate_lat, 0.5) * 1000, 1),
                "p99": round(percentile(rate_lat, 0.99) * 1000, 1),
                "mean": round(statistics.fmean(rate_lat) * 1000, 1) if rate_lat else None,
            },
            "raw_kafka_produce_consume_msgs_per_s": round(raw, 1),
            "event_bytes": event_size,
            "services": resources,
            **standins,
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
        rows = [
            ("events", f"{args.events:,} (fan-out {args.fanout}, channels {','.join(channels)})"),
            ("deliveries", f"{deliveries:,}"),
            ("peak events/s", f"{result['events_per_s']:,}"),
            ("peak deliveries/s", f"{result['deliveries_per_s']:,}"),
            ("latency at peak p50 / p99", "{p50} / {p99} ms".format(**result["peak_latency_ms"])),
            (
                f"latency at {rate:,.0f} events/s p50 / p99",
                "{p50} / {p99} ms".format(**result["latency_at_rate_ms"]),
            ),
            ("raw confluent-kafka produce→consume msgs/s", f"{raw:,.0f}"),
        ]
        rows += [(STANDIN_LABELS[key], f"{value:,.0f}") for key, value in standins.items()]
        rows += [
            (f"{name}: peak RSS / CPU", f"{use['peak_rss_mb']:,.0f} MB / {use['cpu_seconds']} s")
            for name, use in resources.items()
        ]
        width = max(len(r[0]) for r in rows)
        print()
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        print(f"\nwritten to {RESULTS / 'latest.json'}")
    finally:
        stop_all(services)
        try:
            existing = admin_client(kafka).list_topics(timeout=10).topics  # changelogs too
            delete_topics(kafka, [name for name in existing if name.startswith(prefix)])
            with psycopg.connect(settings.database.libpq_url, autocommit=True) as admin:
                admin.execute(f'drop schema if exists "{schema}" cascade')
        finally:
            stack.down(settings, only=started_parts)


if __name__ == "__main__":
    main()
