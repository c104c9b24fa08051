"""``make bench``: Herald's throughput and latency on this machine, everything co-located.

One run prints and writes (``bench/results/latest.json``):

1. The provider stand-ins' own ceiling at 0 ms latency (bench/standins.py), on private copies,
   so that a sender figure can be told apart from a stand-in limit (``standin_*``); then a
   warm-up (``warmup``): ``--warmup-events`` (300,000) in-app events through a pipeline of
   their own (a broker started moments before spends a third of its CPU compiling), its rate
   reported as ``warmup.rate_per_s``.
2. ``inapp``: in-app only, fan-out 1, ``--events`` (100,000) published as fast as the producer
   goes: peak events/s and deliveries/s; then p50/p99 publish→final-status latency at 3,000
   events/s and at half the peak (``latency_ms_at``, keyed by the rate).
3. ``fanout2_all_channels``: fan-out 2 over in-app, email and SMS: deliveries/s.
4. For each of those, every service's peak RSS and CPU seconds (``services``), from /proc.
5. ``senders``: one sender's send path per channel with the stand-ins answering in 100 ms
   (bench/senders.py): deliveries/s and the number in flight.
6. ``raw_kafka_produce_consume_msgs_per_s``: a plain confluent-kafka produce→consume loop of
   the same records, the reference.

Each pipeline scenario runs on fresh bench-only topics, a fresh database schema and fresh
service processes; the local stack is brought up if it is not running and stopped after if
this run started it. ``--only-custom`` runs one scenario from the flags instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer

from bench import senders
from bench.standins import STANDIN_LABELS, ceilings, private_sms_standin, private_smtp_sink
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
    """Wait until ``expected`` deliveries have a final status; return when that was seen.

    The count scans the deliveries table (it has no index on status), on the same two cores as
    the pipeline: polling every 50 ms throughout cost PostgreSQL a sizeable share of a core
    once the table held 100,000+ rows. So the pause grows with the wait, to 1 % of it (the
    finish is seen at most that late), between 50 and 500 ms."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        row = conn.execute(
            "select count(*) from notification_delivery where status = any(%s)", [list(FINAL)]
        ).fetchone()
        done = row[0] if row else 0
        if done >= expected:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {expected} deliveries final after {timeout}s")
        time.sleep(min(0.5, max(0.05, (time.monotonic() - started) / 100)))


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


@dataclass
class Scenario:
    """One pipeline run: N events (fan-out F) on fresh topics, a fresh schema and fresh
    service processes (so each scenario's RSS and CPU are its own)."""

    name: str
    events: int
    fanout: int = 1
    channels: tuple[str, ...] = ("inapp",)
    users: int = 1_000
    payload_bytes: int = 200
    #: events/s of the latency runs after the peak (empty: none); 0 means half the peak
    latency_rates: tuple[float, ...] = ()
    latency_seconds: float = 10.0
    router_workers: int = 1
    timeout: float = 600.0
    #: events published at full speed, untimed, before the peak is measured
    warmup_events: int = 0


def run_pipeline(settings: Settings, scenario: Scenario) -> dict[str, Any]:
    """Peak events/s and deliveries/s, latencies at the given rates, each service's peak RSS
    and CPU seconds, and the raw confluent-kafka loop on the same broker."""
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    database = settings.database.model_copy(update={"database_schema": schema})
    catalogue = CATALOGUE.with_prefix(prefix)
    services: list[ServiceProcess] = []
    channels = list(scenario.channels)
    create_topics(kafka, catalogue, prefix="")
    private = ExitStack()
    try:
        migrate.upgrade(database)
        env = {
            "KAFKA_TOPIC_PREFIX": prefix,
            "DATABASE_SCHEMA": schema,
            "ROUTER_METRICS_PORT": "0",
            "EMAIL_SENDER_METRICS_PORT": "0",
            "SMS_SENDER_METRICS_PORT": "0",
            "INAPP_STORE_METRICS_PORT": "0",
            # Private stand-ins: the bench's tens of thousands of messages must not pile up in
            # the local stack's sinks (the SMTP sink keeps them all, and loads them at start).
            **private_standins(private, channels),
        }
        log_dir = settings.local.local_dir / "bench-logs"
        services.append(start_service("services.inapp_store", env, log_dir))
        for worker in range(scenario.router_workers):
            services.append(start_service("services.router", env, log_dir, name=f"router-{worker}"))
        for channel, module in (("email", "services.email_sender"), ("sms", "services.sms_sender")):
            if channel in channels:
                services.append(start_service(module, env, log_dir))
        producer = Producer(producer_config(kafka, **{"linger.ms": 20}))
        users = [f"bench-user-{i}" for i in range(scenario.users)]
        code = seed(producer, catalogue, users, channels)
        padding = "x" * scenario.payload_bytes
        conn = psycopg.connect(
            database.libpq_url, autocommit=True, options=search_path_options(schema)
        )
        per_event = scenario.fanout * len(channels)

        # Warm-up: one event through every stage, so start-up is not measured as throughput;
        # then ``warmup_events`` more at full speed, so that the peak is the steady state and not
        # the broker's JIT compiling its hot paths (on a broker started moments before, its C2
        # compiler threads used a third of its CPU, and one run gave 4,859 in-app events/s
        # where a warm broker gave 6,208). The warm-up's own rate is reported apart.
        publish(producer, catalogue, code, users, 1, scenario.fanout, None, padding)
        done = per_event
        wait_final(conn, done, scenario.timeout)
        warmup_events_s = None
        if scenario.warmup_events:
            print(f"[{scenario.name}] warming up: {scenario.warmup_events:,} events", flush=True)
            t_warm = time.time()
            publish(
                producer, catalogue, code, users, scenario.warmup_events, scenario.fanout,
                None, padding,
            )  # fmt: skip
            done += scenario.warmup_events * per_event
            warmup_events_s = scenario.warmup_events / (
                wait_final(conn, done, scenario.timeout) - t_warm
            )
            print(f"[{scenario.name}] warm-up ran at {warmup_events_s:,.0f} events/s", flush=True)
        print(f"[{scenario.name}] pipeline warm; measuring peak...", flush=True)

        t0 = time.time()
        peak_sent = publish(
            producer, catalogue, code, users, scenario.events, scenario.fanout, None, padding
        )
        t_published = time.time()
        deliveries = scenario.events * per_event
        done += deliveries
        t1 = wait_final(conn, done, scenario.timeout)
        peak_events_s = scenario.events / (t1 - t0)
        peak_lat = latencies(conn, peak_sent)
        result: dict[str, Any] = {
            "events": scenario.events,
            "fanout": scenario.fanout,
            "channels": channels,
            "deliveries": deliveries,
            "publish_seconds": round(t_published - t0, 3),
            "pipeline_seconds": round(t1 - t0, 3),
            "events_per_s": round(peak_events_s, 1),
            "deliveries_per_s": round(deliveries / (t1 - t0), 1),
            "peak_latency_ms": summary(peak_lat),
            "warmup_events": scenario.warmup_events,
            "warmup_events_per_s": None if warmup_events_s is None else round(warmup_events_s, 1),
            "latency_ms_at": {},
        }
        print(f"[{scenario.name}] peak {peak_events_s:,.0f} events/s", flush=True)
        for wanted in scenario.latency_rates:
            rate = wanted or peak_events_s / 2
            count = max(int(rate * scenario.latency_seconds), 100)
            print(f"[{scenario.name}] latency at {rate:,.0f} events/s...", flush=True)
            sent = publish(producer, catalogue, code, users, count, scenario.fanout, rate, padding)
            done += count * per_event
            wait_final(conn, done, scenario.timeout)
            result["latency_ms_at"][f"{rate:.0f}"] = summary(latencies(conn, sent))
        result["services"] = {s.name: usage(s) for s in services if s.running()}
        sample = {
            "event_id": str(uuid.uuid4()),
            "event_type": code,
            "occurred_at": datetime.now(UTC),
            "recipients": users[: scenario.fanout],
            "context": {"n": "1", "padding": padding},
        }
        result["event_bytes"] = len(encode("herald.Event", sample))
        conn.close()
        return result
    finally:
        stop_all(services)
        private.close()
        existing = admin_client(kafka).list_topics(timeout=10).topics  # changelogs too
        delete_topics(kafka, [name for name in existing if name.startswith(prefix)])
        with psycopg.connect(settings.database.libpq_url, autocommit=True) as admin:
            admin.execute(f'drop schema if exists "{schema}" cascade')


def private_standins(stack: ExitStack, channels: list[str]) -> dict[str, str]:
    """Start an SMTP sink and an SMS stand-in of the scenario's own (0 ms, on free ports, the
    sink's store in a temporary folder), closed with ``stack``; the environment that points
    the senders at them."""
    env: dict[str, str] = {}
    if "email" in channels:
        env["SMTP_URL"] = f"smtp://127.0.0.1:{stack.enter_context(private_smtp_sink(0))}"
    if "sms" in channels:
        env["SMS_API_URL"] = f"http://127.0.0.1:{stack.enter_context(private_sms_standin(0))}"
    return env


def summary(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and mean of latencies in seconds, as milliseconds."""
    return {
        "p50": round(percentile(values, 0.5) * 1000, 1),
        "p99": round(percentile(values, 0.99) * 1000, 1),
        "mean": round(statistics.fmean(values) * 1000, 1) if values else None,
    }


def suite(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios of one ``make bench`` (issue 10): in-app at peak and at 3,000 events/s,
    and fan-out 2 over all three channels; or one custom scenario from the flags."""
    if args.only_custom:
        return [
            Scenario(
                "custom",
                args.events,
                args.fanout,
                tuple(c.strip() for c in args.channels.split(",") if c.strip()),
                args.users,
                args.payload_bytes,
                (args.latency_rate or 0,),
                router_workers=args.router_workers,
                timeout=args.timeout,
            )
        ]
    return [
        Scenario(
            "inapp",
            args.events,
            latency_rates=(3000, 0),
            timeout=args.timeout,
        ),
        Scenario(
            "fanout2_all_channels",
            args.fanout_events,
            fanout=2,
            channels=("inapp", "email", "sms"),
            timeout=args.timeout,
            warmup_events=args.warmup_events // 100,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events of the in-app run")
    parser.add_argument(
        "--fanout-events", type=int, default=5_000, help="events of the fan-out 2 run"
    )
    parser.add_argument(
        "--warmup-events",
        type=int,
        default=300_000,
        help="in-app events through a pipeline of their own before the scenarios (0: none); "
        "the fan-out run also warms its own with a hundredth as many",
    )
    parser.add_argument("--sender-count", type=int, default=10_000, help="sends per channel")
    parser.add_argument("--sender-concurrency", type=int, default=512, help="sends in flight")
    parser.add_argument("--sender-latency-ms", type=float, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--only-custom",
        action="store_true",
        help="run one pipeline scenario from the flags below instead of the suite",
    )
    parser.add_argument("--fanout", type=int, default=1, help="(custom) recipients per event")
    parser.add_argument("--users", type=int, default=1_000, help="(custom)")
    parser.add_argument("--channels", default="inapp", help="(custom) e.g. inapp,email,sms")
    parser.add_argument("--payload-bytes", type=int, default=200, help="(custom)")
    parser.add_argument("--router-workers", type=int, default=1, help="(custom)")
    parser.add_argument(
        "--latency-rate", type=float, default=None, help="(custom) default: half of the peak"
    )
    parser.add_argument(
        "--standin-seconds", type=float, default=3, help="time bound of each stand-in run"
    )
    parser.add_argument(
        "--skip-standins", action="store_true", help="do not measure the stand-ins' ceiling"
    )
    parser.add_argument("--skip-senders", action="store_true", help="no sender-only run")
    args = parser.parse_args()

    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": vars(args),
    }
    if not args.skip_standins:
        print("measuring the provider stand-ins' ceiling...", flush=True)
        result.update(ceilings(seconds=args.standin_seconds))

    settings = get_settings()
    started_parts = stack.up(settings, say=lambda line: print(line, flush=True))
    try:
        if args.warmup_events:
            # The broker's JIT and the services' first runs, on topics and a schema of their
            # own: warming up in the measured schema made its tables (and the completion
            # poll's scans) 300,000 events larger, and the peak after it lower than the
            # warm-up's own rate (5,386 against 5,966 events/s).
            print(f"warming up: {args.warmup_events:,} in-app events...", flush=True)
            warm = run_pipeline(
                settings, Scenario("warmup", args.warmup_events, timeout=args.timeout)
            )
            result["warmup"] = {"events": args.warmup_events, "rate_per_s": warm["events_per_s"]}
        for scenario in suite(args):
            result[scenario.name] = run_pipeline(settings, scenario)
        if not args.skip_senders and not args.only_custom:
            print("measuring the senders at the provider latency...", flush=True)
            rates = senders.measure(
                args.sender_count, args.sender_latency_ms, args.sender_concurrency
            )
            result["senders"] = {
                "provider_latency_ms": args.sender_latency_ms,
                "in_flight": args.sender_concurrency,
                **{f"{channel}_deliveries_per_s": round(r, 1) for channel, r in rates.items()},
            }
        first = next(v for v in result.values() if isinstance(v, dict) and "events_per_s" in v)
        kafka = settings.kafka.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}."})
        catalogue = CATALOGUE.with_prefix(kafka.topic_prefix)
        create_topics(kafka, catalogue, prefix="")
        try:
            result["raw_kafka_produce_consume_msgs_per_s"] = round(
                raw_reference(
                    settings.model_copy(update={"kafka": kafka}),
                    catalogue.recipients.name,
                    min(first["events"], 100_000),
                    first["event_bytes"],
                ),
                1,
            )
        finally:
            existing = admin_client(kafka).list_topics(timeout=10).topics
            delete_topics(kafka, [n for n in existing if n.startswith(kafka.topic_prefix)])
    finally:
        stack.down(settings, only=started_parts)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
    print()
    for name, value in table(result):
        print(f"{name:<48}  {value}")
    print(f"\nwritten to {RESULTS / 'latest.json'}")


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The printed summary of ``latest.json``."""
    rows: list[tuple[str, str]] = []
    if "warmup" in result:
        rows.append((f"warm-up, own pipeline: in-app events/s ({result['warmup']['events']:,})",
                     f"{result['warmup']['rate_per_s']:,}"))  # fmt: skip
    for name, run in result.items():
        if not (isinstance(run, dict) and "events_per_s" in run):
            continue
        rows.append((f"{name}: events", f"{run['events']:,} (fan-out {run['fanout']}, "
                     f"channels {','.join(run['channels'])})"))  # fmt: skip
        if run.get("warmup_events_per_s") is not None:
            rows.append((f"{name}: warm-up events/s ({run['warmup_events']:,} events)",
                         f"{run['warmup_events_per_s']:,}"))  # fmt: skip
        rows.append((f"{name}: peak events/s", f"{run['events_per_s']:,}"))
        rows.append((f"{name}: peak deliveries/s", f"{run['deliveries_per_s']:,}"))
        for rate, lat in run["latency_ms_at"].items():
            rows.append((f"{name}: latency at {int(rate):,} events/s p50 / p99",
                         f"{lat['p50']} / {lat['p99']} ms"))  # fmt: skip
        for service, use in run["services"].items():
            rows.append((f"{name}: {service} peak RSS / CPU",
                         f"{use['peak_rss_mb']:,.0f} MB / {use['cpu_seconds']} s"))  # fmt: skip
    if "senders" in result:
        sent = result["senders"]
        for channel in ("sms", "email", "webhook"):
            if f"{channel}_deliveries_per_s" not in sent:
                continue  # a result written before the channel was measured
            rows.append((f"sender {channel} deliveries/s ({sent['in_flight']} in flight, "
                         f"{sent['provider_latency_ms']:g} ms)",
                         f"{sent[f'{channel}_deliveries_per_s']:,}"))  # fmt: skip
    if "raw_kafka_produce_consume_msgs_per_s" in result:
        rows.append(("raw confluent-kafka produce→consume msgs/s",
                     f"{result['raw_kafka_produce_consume_msgs_per_s']:,}"))  # fmt: skip
    rows += [(STANDIN_LABELS[k], f"{v:,.0f}") for k, v in result.items() if k in STANDIN_LABELS]
    return rows


if __name__ == "__main__":
    main()
