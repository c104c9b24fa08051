"""The chaos suite (``make chaos``; a short run is tests/chaos/test_chaos_short.py).

On a private stack (tests/chaos/privatestack.py: its own Kafka, PostgreSQL, SMTP sink, two SMS
stand-ins and a webhook sink on free ports), runs router, inapp_store, email_sender,
sms_sender (with ``SMS_API_FALLBACK_URLS`` = the second stand-in, sms-b) and webhook_sender
as real processes, gives one user in three a webhook endpoint on the sink, publishes events
through a plain confluent-kafka producer and, driven by publishing progress, injects faults:

- SIGKILL of each service in turn, restarted 2 s later (every ``--kill-interval`` seconds);
  with ``--copies 2``, two of each service run and one copy at a time is killed;
- a broker SIGKILL and restart; a PostgreSQL SIGKILL (with its backends) and restart;
- an SMS outage: the primary provider answers 503 to every number, so SMS fail over to sms-b,
  which itself answers 503 to one user in ten (both fail: parked, then ``herald dlq replay``);
- poison records with garbled headers; an oversize event; an event to many recipients.

Then it waits (with deadlines) until every expected delivery is resolved and no group lags,
replays what an operator would replay, and prints the verdict counted at the sinks
(tests/chaos/verdict.py). Exit status 1 when anything was lost, duplicated or left lagging.

    python -m tests.chaos.harness --mode both --events 5000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from herald.db import migrate
from herald.devstack.process import StackError
from herald.supervisor import ServiceProcess, start_service
from herald.topics import create_topics
from schemas import CATALOGUE, Catalogue
from tests.chaos import workload as wl
from tests.chaos.privatestack import PrivateStack
from tests.chaos.verdict import Verdict, judge, lag, read_sinks, sms_providers
from tests.integration.services import TEST_RETRY_DELAYS_MS

SERVICES = ("services.router", "services.inapp_store", "services.email_sender",
            "services.sms_sender", "services.webhook_sender")  # fmt: skip
FAULTS = ("kills", "broker", "postgres", "sms-outage", "poison", "oversize", "bulk")


@dataclass
class Plan:
    """One chaos run: the workload and the fault schedule (as fractions of events published)."""

    label: str = "chaos"
    events: int = 5000
    rate: float = 40.0  # events/s
    users: int = 300
    copies: int = 1
    faults: tuple[str, ...] = FAULTS
    kill_interval: float = 12.0
    restart_after: float = 2.0
    #: kill only the services whose name starts with one of these (all when empty)
    kill_only: tuple[str, ...] = ()
    bulk_recipients: int = 10_000
    outage_seconds: float = 10.0
    #: the webhook sink answers after this long, so a killed webhook sender has sends in
    #: flight (whose outcome it never learns) and the resend after its restart is exercised
    webhook_latency_ms: float = 250.0
    #: progress at which each one-off fault fires
    at: dict[str, float] = field(default_factory=lambda: {
        "poison": 0.10, "sms-outage": 0.20, "broker": 0.35, "oversize": 0.45,
        "postgres": 0.60, "bulk": 0.80,
    })  # fmt: skip
    #: a blocking fault (broker, postgres) waits this long after the previous one
    min_gap: float = 8.0
    supervise: bool = True
    start_timeout: float = 180.0
    settle_timeout: float = 600.0
    #: consider the run settled when nothing changed for this long and no group lags
    quiet_seconds: float = 30.0


class Fleet:
    """The services as real processes; which copy is up; kills and restarts."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        copies: int,
        say: Callable[[str], None],
        kill_only: tuple[str, ...] = (),
    ):
        self.env = env
        self.log_dir = log_dir
        self.say = say
        self.modules: dict[str, str] = {}
        for copy in range(1, copies + 1):
            for module in SERVICES:
                short = module.removeprefix("services.")
                self.modules[f"{short}-{copy}" if copies > 1 else short] = module
        self.procs: dict[str, ServiceProcess] = {}
        self.killed: set[str] = set()
        self.unplanned: list[str] = []
        self.kills = 0
        #: (service name, wall time) of every SIGKILL and unplanned exit seen
        self.events: list[tuple[str, float]] = []
        self.rotation = [n for n in self.modules if not kill_only or n.startswith(kill_only)]

    def start(self, name: str) -> None:
        self.procs[name] = start_service(self.modules[name], self.env, self.log_dir, name=name)
        self.killed.discard(name)

    def start_all(self) -> None:
        for name in self.modules:
            self.start(name)

    def kill(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is None or not proc.running():
            return False
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        self.events.append((name, time.time()))
        self.killed.add(name)
        self.kills += 1
        return True

    def crashed(self) -> list[str]:
        """Services that exited without being killed here (recorded once each)."""
        out = []
        for name, proc in self.procs.items():
            if name not in self.killed and not proc.running():
                tail = [line for line in proc.output().splitlines() if line.strip()][-3:]
                account = f"{name} exit {proc.proc.returncode}: {' | '.join(tail)}"
                self.unplanned.append(account[:600])
                self.events.append((name, time.time()))
                self.killed.add(name)  # it is down; a restart (if supervising) brings it back
                out.append(name)
        return out

    def stop_all(self) -> None:
        procs = list(self.procs.values())
        for proc in procs:
            if proc.running():
                proc.proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop(timeout=30)


def service_env(stack: PrivateStack) -> dict[str, str]:
    s = stack.settings
    return {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": "",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "DATABASE_URL": s.database.database_url,
        "DATABASE_SCHEMA": "public",
        "SMTP_URL": s.smtp.smtp_url,
        "SMS_API_URL": s.sms.sms_api_url,
        "SMS_API_FALLBACK_URLS": sms_providers(s)["sms-b"],
        # The users' webhook endpoints are on the loopback webhook sink.
        "HERALD_ENDPOINTS_ALLOW_PRIVATE": "1",
        "HERALD_RETRY_DELAYS_MS": TEST_RETRY_DELAYS_MS,
        "HERALD_LOCAL_DIR": str(stack.state_dir),
        "ROUTER_METRICS_PORT": "0",
        "INAPP_STORE_METRICS_PORT": "0",
        "EMAIL_SENDER_METRICS_PORT": "0",
        "SMS_SENDER_METRICS_PORT": "0",
        "WEBHOOK_SENDER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception as exc:  # a sink briefly away (it is chaos): look again
            last = repr(exc)
        else:
            last = ""
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} {last}")
        time.sleep(interval)


class Run:
    """One chaos run on its own private stack."""

    def __init__(self, plan: Plan, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.say = say
        self.stack = PrivateStack(plan.label, say=lambda line: say(f"  stack {line}"))
        self.catalogue: Catalogue = CATALOGUE
        self.began = time.monotonic()
        self.timeline: list[str] = []
        #: (what, wall time) of the broker and PostgreSQL crashes (service kills: Fleet.events)
        self.crashes: list[tuple[str, float]] = []

    def note(self, line: str) -> None:
        entry = f"[{time.monotonic() - self.began:7.1f}s] {line}"
        self.timeline.append(entry)
        self.say(entry)

    @property
    def smtp_api(self) -> str:
        return f"http://127.0.0.1:{self.stack.smtp.api_port}"

    def execute(self) -> Verdict:
        plan = self.plan
        self.note(f"{plan.label}: {plan.events} events at {plan.rate}/s, {plan.copies} copies,"
                  f" faults {','.join(plan.faults) or 'none'}")  # fmt: skip
        fleet: Fleet | None = None
        publisher: wl.Publisher | None = None
        try:
            self.stack.up()
            settings = self.stack.settings
            create_topics(settings.kafka)
            migrate.upgrade(settings.database)
            bulk = plan.bulk_recipients if "bulk" in plan.faults else 0
            workload = wl.Workload(users=plan.users, bulk_recipients=bulk,
                                   webhook_sink=settings.webhook_sink.webhook_sink_url)  # fmt: skip
            workload.seed_endpoints(settings.database.libpq_url)
            workload.seed_topics(settings.kafka, self.catalogue)
            self.note(f"stack up ({self.stack.state_dir}); {plan.users} users"
                      f" ({len(workload.hooks)} with a webhook endpoint, +{bulk} bulk)"
                      " and event types seeded")  # fmt: skip
            hooks = settings.webhook_sink.webhook_sink_url
            latency = {"ms": plan.webhook_latency_ms}
            httpx.post(f"{hooks}/control/latency", json=latency, timeout=10).raise_for_status()
            fleet = Fleet(service_env(self.stack), self.stack.state_dir / "services",
                          plan.copies, self.note, plan.kill_only)  # fmt: skip
            fleet.start_all()
            publisher = wl.Publisher(settings.kafka, self.catalogue, workload, plan.events,
                                     plan.rate)  # fmt: skip
            self.wait_ready(publisher, workload)
            self.note("pipeline answers on every channel; publishing")
            publisher.start()
            self.chaos(fleet, publisher)
            publisher.join(60)
            self.note(f"published {publisher.acked} events ({len(publisher.failed)} refused)")
            self.operator_replays(fleet, workload)
            verdict = self.settle(fleet, workload)
            verdict.unplanned_exits = list(fleet.unplanned)
            self.note(f"services killed by the harness: {fleet.kills}")
            return verdict
        finally:
            try:
                if publisher is not None:
                    publisher.close()
                    del publisher  # its librdkafka threads would log the broker's shutdown
                    gc.collect()
            finally:
                try:
                    if fleet is not None:
                        fleet.stop_all()
                finally:
                    self.stack.down()
            (self.stack.state_dir / "timeline.txt").write_text("\n".join(self.timeline) + "\n")

    # --- phases ----------------------------------------------------------------------------

    def wait_ready(self, publisher: wl.Publisher, workload: wl.Workload) -> None:
        """A probe event reaches all three channels: the services are consuming."""
        event_id = wl.probe(publisher)
        publisher.producer.flush(30)
        user = workload.people[0]

        def arrived() -> bool:
            sinks = read_sinks(self.stack.settings, self.catalogue, self.smtp_api)
            expected = {k: v for k, v in workload.expected.items() if k[0] == event_id}
            by = {"inapp": sinks.inapp, "email": sinks.emails, "sms": sinks.sms,
                  "webhook": sinks.webhook_counts}  # fmt: skip
            return all(by[channel][sink_id] for (_, _, channel), sink_id in expected.items())

        wait_for(arrived, self.plan.start_timeout, f"the probe to reach {user.user_id}", 1.0)

    def chaos(self, fleet: Fleet, publisher: wl.Publisher) -> None:
        """Publish and inject faults until every event is published and every fault fired."""
        plan = self.plan
        one_offs = sorted((plan.at[f], f) for f in plan.faults if f in plan.at)
        timers: list[tuple[float, str, Callable[[], None]]] = []
        kills = "kills" in plan.faults and plan.kill_interval > 0
        next_kill = time.monotonic() + plan.kill_interval
        rotation = 0
        last_blocking = 0.0
        deadline = time.monotonic() + plan.events / plan.rate * 4 + 600

        def run_timers(restarts: bool = False) -> None:
            """Run the due timers (and with ``restarts`` every pending restart)."""
            now = time.monotonic()
            for timer in sorted(timers, key=lambda t: t[0]):
                if timer[0] <= now or (restarts and timer[1].startswith("restart")):
                    timers.remove(timer)
                    timer[2]()

        def restart(name: str) -> Callable[[], None]:
            def go() -> None:
                fleet.start(name)
                self.note(f"restarted {name}")

            return go

        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"publishing stalled at {publisher.acked}/{plan.events}")
            run_timers()
            for name in fleet.crashed():
                self.note(f"!! {name} exited on its own: {fleet.unplanned[-1]}")
                if plan.supervise:
                    timers.append((now + plan.restart_after, f"restart {name}", restart(name)))
            published = not publisher.thread.is_alive()
            if published and not one_offs and (not kills or rotation >= len(fleet.rotation)):
                break
            # Kills go on while publishing, and at least once round every service.
            if kills and (not published or rotation < len(fleet.rotation)) and now >= next_kill:
                name = fleet.rotation[rotation % len(fleet.rotation)]
                rotation += 1
                if fleet.kill(name):
                    self.note(f"SIGKILL {name} (at {publisher.progress():.0%})")
                    timers.append((now + plan.restart_after, f"restart {name}", restart(name)))
                next_kill = now + plan.kill_interval
            if one_offs and (publisher.progress() >= one_offs[0][0] or published):
                fault = one_offs[0][1]
                blocking = fault in ("broker", "postgres")
                if not blocking or now - last_blocking >= plan.min_gap:
                    one_offs.pop(0)
                    if blocking:
                        run_timers(restarts=True)  # no restart waits behind a long fault
                    self.fault(fault, publisher, timers)
                    if blocking:
                        last_blocking = time.monotonic()
            time.sleep(0.1)
        while timers:  # the outage's end and the last restarts
            run_timers()
            time.sleep(0.1)

    def fault(self, fault: str, publisher: wl.Publisher,
              timers: list[tuple[float, str, Callable[[], None]]]) -> None:  # fmt: skip
        at = f"(at {publisher.progress():.0%})"
        if fault == "broker":
            self.note(f"SIGKILL broker {at}")
            self.crashes.append(("broker", time.time()))
            down = self.stack.crash(self.stack.kafka)
            self.note(f"broker back after {down:.1f}s")
        elif fault == "postgres":
            self.note(f"SIGKILL PostgreSQL and its backends {at}")
            self.crashes.append(("postgres", time.time()))
            down = self.stack.crash(self.stack.postgres)
            self.note(f"PostgreSQL back after {down:.1f}s")
        elif fault == "sms-outage":
            # The primary fails for everyone: SMS fail over to sms-b. sms-b fails for the
            # outage's numbers only: those fail on both, are parked and replayed later.
            providers = sms_providers(self.stack.settings)
            primary = {"status": 503, "count": None}
            scoped = {"status": 503, "count": None, "to_prefix": wl.OUTAGE_PREFIX}
            for base, body in ((providers["sms-a"], primary), (providers["sms-b"], scoped)):
                httpx.post(f"{base}/control/fail", json=body, timeout=10).raise_for_status()
            seconds = self.plan.outage_seconds
            self.note(f"SMS provider sms-a answers 503 to every number, sms-b to"
                      f" {wl.OUTAGE_PREFIX}*, for {seconds:.0f}s {at}")  # fmt: skip

            def recover() -> None:
                for base in providers.values():
                    httpx.delete(f"{base}/control/fail", timeout=10).raise_for_status()
                self.note("SMS providers recovered")

            timers.append((time.monotonic() + self.plan.outage_seconds, "sms", recover))
        elif fault == "poison":
            wl.poison(publisher, publisher.workload.run)
            self.note(f"published 2 poison records {at}")
        elif fault == "oversize":
            wl.oversize(publisher)
            self.note(f"published an oversize event {at}")
        elif fault == "bulk":
            wl.bulk(publisher)
            self.note(f"published an event to {len(publisher.workload.bulk)} recipients {at}")

    def herald_dlq(self, *args: str) -> str:
        settings = self.stack.settings
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": "",
            "DATABASE_URL": settings.database.database_url,
        }
        result = subprocess.run([sys.executable, "-m", "herald.cli.main", "dlq", *args],
                                capture_output=True, text=True, env=env, timeout=300,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        out = (result.stdout + result.stderr).strip().splitlines()
        summary = out[-1] if out else ""
        self.note(f"herald dlq {' '.join(args)[:80]} -> exit {result.returncode}: {summary[:200]}")
        return result.stdout

    def operator_replays(self, fleet: Fleet, workload: wl.Workload) -> None:
        """What an operator does once the senders are idle: replay the SMS the outage parked,
        and the emails and SMS parked as outcome unknown that never arrived (SMS: at neither
        provider; with a failover provider a dead sender's unconfirmed SMS is parked)."""
        settings = self.stack.settings
        senders = [g for g in lag(settings, self.catalogue) if g.endswith("_sender")]

        def senders_idle() -> bool:
            lags = lag(settings, self.catalogue)
            return all(lags[g] == 0 for g in senders)

        try:
            wait_for(senders_idle, self.plan.settle_timeout / 2, "the senders to be idle", 2.0)
        except TimeoutError as exc:
            self.note(f"!! {exc}; replaying anyway")
        if "sms-outage" in self.plan.faults:
            self.herald_dlq("replay", "--error-class", "sms.5xx")
        sinks = read_sinks(settings, self.catalogue, self.smtp_api)
        unknown = [
            letter.delivery_id
            for letter in sinks.letters
            if letter.error_class == "sender.outcome_unknown"
            and letter.delivery_id
            and not sinks.emails[letter.delivery_id]
            and not sinks.sms[letter.delivery_id]
        ]
        if unknown:
            args = [arg for d in unknown for arg in ("--delivery-id", str(d))]
            self.herald_dlq("replay", *args)
        else:
            self.note("no email or SMS parked as outcome unknown is missing at the sinks")

    def settle(self, fleet: Fleet, workload: wl.Workload) -> Verdict:
        """Wait until every expected delivery is resolved and no group lags, or until nothing
        changed for ``quiet_seconds`` (something is lost), or the deadline."""
        settings = self.stack.settings
        deadline = time.monotonic() + self.plan.settle_timeout
        last: tuple[object, ...] | None = None
        since = time.monotonic()
        while True:
            for name in fleet.crashed():
                self.note(f"!! {name} exited on its own: {fleet.unplanned[-1]}")
                if self.plan.supervise:
                    fleet.start(name)
            try:
                # Lag first: what the groups committed by then is in the sinks read after it.
                lags = lag(settings, self.catalogue)
                verdict = judge(workload, read_sinks(settings, self.catalogue, self.smtp_api),
                                lags, [*fleet.events, *self.crashes],
                                "sms-outage" in self.plan.faults)  # fmt: skip
            except Exception as exc:
                self.note(f"reading the sinks failed ({exc!r}); again")
                time.sleep(2)
                continue
            delivered = tuple((name, c.delivered) for name, c in verdict.channels.items())
            state = (verdict.lost, verdict.duplicated, verdict.total_lag,
                     tuple(sorted(verdict.dlq.items())), delivered)  # fmt: skip
            stable = state == last
            if not stable:
                last, since = state, time.monotonic()
                self.note(f"waiting: unresolved {verdict.lost}, lag {verdict.lag}")
            # Resolved, and the same on two reads in a row (replayed records may be in flight).
            if verdict.lost == 0 and verdict.total_lag == 0 and stable:
                self.note("every expected delivery resolved, no lag")
                return verdict
            if verdict.total_lag == 0 and time.monotonic() - since > self.plan.quiet_seconds:
                self.note(f"no lag and nothing changed for {self.plan.quiet_seconds:.0f}s")
                return verdict
            if time.monotonic() > deadline:
                self.note("settle deadline passed")
                return verdict
            time.sleep(3)


def run_plan(plan: Plan, say: Callable[[str], None] = print) -> Verdict:
    run = Run(plan, say)
    verdict = run.execute()
    say(f"== {plan.label}: {plan.events} events, {plan.copies} copies of each service")
    say(verdict.render())
    result = {"plan": {k: v for k, v in vars(plan).items()}, "verdict": verdict.as_dict(),
              "timeline": run.timeline}  # fmt: skip
    (run.stack.state_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--mode",
        choices=("1", "2", "both"),
        default="both",
        help="1: one copy of each service; 2: two of each; both: 1 then 2",
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=40.0, help="events per second")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated subset of {','.join(FAULTS)} (or 'none')",
    )
    parser.add_argument("--kill-interval", type=float, default=12.0)
    parser.add_argument("--restart-after", type=float, default=2.0)
    parser.add_argument(
        "--kill-only",
        default="",
        help="comma-separated service name prefixes to kill (e.g. router); default: all",
    )
    parser.add_argument("--bulk-recipients", type=int, default=10_000)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument(
        "--webhook-latency-ms",
        type=float,
        default=250.0,
        help="how long the webhook sink takes to answer (sends in flight when a sender dies)",
    )
    parser.add_argument("--settle-timeout", type=float, default=600.0)
    parser.add_argument(
        "--no-supervise", action="store_true", help="do not restart a service that exits on its own"
    )
    args = parser.parse_args(argv)  # fmt: skip
    faults = () if args.faults == "none" else tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    # SIGTERM (e.g. from `timeout` or CI) unwinds like Ctrl-C, so the stack is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    modes = {"1": [1], "2": [2], "both": [1, 2]}[args.mode]
    verdicts = []
    for copies in modes:
        plan = Plan(
            label=f"mode{copies}", events=args.events, rate=args.rate, users=args.users,
            copies=copies, faults=faults, kill_interval=args.kill_interval,
            restart_after=args.restart_after,
            kill_only=tuple(p for p in args.kill_only.split(",") if p),
            bulk_recipients=args.bulk_recipients, outage_seconds=args.outage_seconds,
            webhook_latency_ms=args.webhook_latency_ms,
            settle_timeout=args.settle_timeout, supervise=not args.no_supervise,
        )  # fmt: skip
        try:
            verdicts.append(run_plan(plan, lambda line: print(line, flush=True)).passed)
        except (TimeoutError, StackError) as exc:
            # e.g. the pipeline never answered: no verdict, but the other mode still runs.
            print(f"== {plan.label}: FAILED before a verdict: {exc}", flush=True)
            verdicts.append(False)
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
