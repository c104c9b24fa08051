"""The chaos run's verdict, counted at the sinks.

For every expected (event, user, channel): delivered exactly once (emails by Message-ID in the
SMTP sink's stored messages, SMS by idempotency key in the message lists of BOTH SMS providers
together - the primary sms-a and the failover sms-b, so a message on both is a duplicate -,
in-app by the notification row in PostgreSQL, webhooks by ``webhook-id`` = delivery id among
the requests the webhook sink answered 2xx), or parked on a dead-letter topic with a reason.
Anything else is lost; more than once is duplicated. Plus DLQ counts by error class and each
consumer group's lag.

Webhooks are at-least-once by design (docs/CHANNELS.md: a webhook sender that died mid-send
sends the delivery again, and receivers drop a ``webhook-id`` they already handled), so for
them the verdict demands: none lost (each expected webhook received at least once, or parked);
a webhook received more than once is allowed only when a fault that leaves a send's outcome
unknown happened between its first and its last receipt - a SIGKILL (or unplanned exit) of a
webhook_sender, or a PostgreSQL crash (the send journal) - and is counted as ``resent``
(reported, not a failure); any other repeat is a duplicate and fails the run. Every other
channel must be exactly once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from herald.dlq import DeadLetter, dlq_topics, scan
from herald.sender import SenderRoutes
from herald.settings import Settings
from schemas import Catalogue
from services.sms_sender.client import messages_path
from tests.chaos.workload import Triple, Workload
from tests.integration.kafka_util import committed_and_end

CHANNELS = ("inapp", "email", "sms", "webhook")
#: Faults after which a webhook may be received again (its send's outcome was unknown): a
#: webhook sender killed or exited, the send journal's database crashed. (kind, wall time)
RESEND_FAULTS = ("webhook_sender", "postgres")
#: A request the sink recorded this long after the fault may still be the first send's (the
#: bytes were on the wire when the sender died).
RESEND_SLACK_S = 1.0


@dataclass
class Sinks:
    """What the sinks hold, read once."""

    emails: Counter[str]  # delivery id → messages stored
    sms: Counter[str]  # delivery id (idempotency key) → messages both providers created
    sms_dedup_hits: int  # requests a provider answered with an earlier message (same key)
    inapp: Counter[str]  # notification id → inbox rows
    letters: list[DeadLetter]
    #: delivery id (webhook-id) → the times (sink's wall clock) the sink received it and
    #: answered 2xx, oldest first
    webhooks: dict[str, list[float]] = field(default_factory=dict)
    #: webhook requests the sink answered otherwise (none are injected)
    webhook_refused: int = 0
    #: provider name (sms-a, sms-b) → messages it created
    sms_providers: dict[str, int] = field(default_factory=dict)

    @property
    def webhook_counts(self) -> Counter[str]:
        return Counter({d: len(times) for d, times in self.webhooks.items()})


def consumer_groups(catalogue: Catalogue) -> dict[str, list[str]]:
    """Each service's consumer group and the topics it consumes."""
    prefix = catalogue.prefix
    return {
        f"{prefix}herald-router": [catalogue.events.name, catalogue.recipients.name],
        f"{prefix}inapp_store": [
            catalogue.notifications.name,
            catalogue.for_channel("inapp").name,
            catalogue.delivery_status.name,
        ],
        f"{prefix}email_sender": SenderRoutes.for_channel(catalogue, "email").topics,
        f"{prefix}sms_sender": SenderRoutes.for_channel(catalogue, "sms").topics,
        f"{prefix}webhook_sender": SenderRoutes.for_channel(catalogue, "webhook").topics,
    }


def lag(settings: Settings, catalogue: Catalogue) -> dict[str, int]:
    """Records each group has not committed yet (a partition it never committed counts whole)."""
    out = {}
    for group, topics in consumer_groups(catalogue).items():
        offsets = committed_and_end(settings.kafka, group, topics).values()
        out[group] = sum(end - max(committed, 0) for committed, end in offsets if end > 0)
    return out


def _message_id_delivery(message_id: str) -> str:
    return message_id.strip().strip("<>").split("@", 1)[0]


def sms_providers(settings: Settings) -> dict[str, str]:
    """The SMS providers of the chaos stack by name: the primary and the failover stand-in."""
    return {
        "sms-a": settings.sms.sms_api_url,
        "sms-b": f"http://127.0.0.1:{settings.local.sms_b_port}",
    }


def read_sinks(settings: Settings, catalogue: Catalogue, smtp_api: str) -> Sinks:
    emails = httpx.get(f"{smtp_api}/messages", timeout=120).raise_for_status().json()
    sid = settings.sms.sms_account_sid
    sms: Counter[str] = Counter()
    per_provider: dict[str, int] = {}
    dedup_hits = 0
    for name, base in sms_providers(settings).items():
        listed = httpx.get(base + messages_path(sid), timeout=60).raise_for_status().json()
        log = httpx.get(f"{base}/control/log", timeout=60).raise_for_status().json()
        keys = [str(m.get("idempotency_key")) for m in listed["messages"]]
        sms.update(keys)
        per_provider[name] = len(keys)
        dedup_hits += sum(1 for entry in log if entry.get("duplicate"))
    hooks_url = settings.webhook_sink.webhook_sink_url
    requests = httpx.get(f"{hooks_url}/requests", timeout=120).raise_for_status().json()
    webhooks: dict[str, list[float]] = {}
    refused = 0
    for request in requests:
        if not 200 <= int(request.get("status", 0)) < 300:
            refused += 1
            continue
        headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
        webhooks.setdefault(str(headers.get("webhook-id")), []).append(float(request["at"]))
    with psycopg.connect(settings.database.libpq_url, connect_timeout=10) as conn:
        rows = conn.execute("SELECT id::text FROM notification").fetchall()
    return Sinks(
        emails=Counter(_message_id_delivery(m.get("message_id") or "") for m in emails),
        sms=sms,
        sms_dedup_hits=dedup_hits,
        inapp=Counter(row[0] for row in rows),
        letters=list(scan(settings.kafka, dlq_topics(catalogue), timeout=120)),
        webhooks={d: sorted(times) for d, times in webhooks.items()},
        webhook_refused=refused,
        sms_providers=per_provider,
    )


@dataclass
class ChannelCount:
    expected: int = 0
    delivered: int = 0
    parked: int = 0
    lost: int = 0
    duplicated: int = 0
    #: received more than once, as the design allows (webhooks resent after a fault that left
    #: the first send's outcome unknown); not a failure, reported
    resent: int = 0


@dataclass
class Verdict:
    channels: dict[str, ChannelCount]
    dlq: Counter[tuple[str, str]]
    #: the same, counting a record parked more than once (consumed again after a fault) once
    dlq_distinct: Counter[tuple[str, str]]
    lag: dict[str, int]
    sms_dedup_hits: int
    specials: list[tuple[str, bool]]  # (kind, parked)
    lost_examples: list[str] = field(default_factory=list)
    duplicate_examples: list[str] = field(default_factory=list)
    unplanned_exits: list[str] = field(default_factory=list)
    #: provider → SMS it created (sms-a the primary, sms-b the failover)
    sms_providers: dict[str, int] = field(default_factory=dict)
    #: the run made the primary SMS provider fail: sms-b must have taken over some SMS
    sms_failover_expected: bool = False
    webhook_refused: int = 0
    resent_examples: list[str] = field(default_factory=list)

    @property
    def failover_missing(self) -> bool:
        return self.sms_failover_expected and not self.sms_providers.get("sms-b")

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.channels.values())

    @property
    def duplicated(self) -> int:
        return sum(c.duplicated for c in self.channels.values())

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    @property
    def unparked_specials(self) -> int:
        return sum(1 for _, parked in self.specials if not parked)

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.total_lag == 0
            and self.unparked_specials == 0
            and not self.unplanned_exits
            and not self.failover_missing
        )

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} lost")
        if self.duplicated:
            out.append(f"{self.duplicated} duplicated")
        if self.total_lag:
            out.append(f"lag {self.total_lag}")
        if self.unparked_specials:
            out.append(f"{self.unparked_specials} poison records not parked")
        if self.unplanned_exits:
            out.append(f"{len(self.unplanned_exits)} services exited on their own")
        if self.failover_missing:
            out.append("the SMS outage sent nothing through the failover provider sms-b")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "channels": {name: vars(count) for name, count in self.channels.items()},
            "dlq": [
                {"topic": t, "error_class": e, "count": n, "distinct": self.dlq_distinct[(t, e)]}
                for (t, e), n in self.dlq.items()
            ],
            "lag": self.lag,
            "sms_dedup_hits": self.sms_dedup_hits,
            "specials": [{"kind": k, "parked": p} for k, p in self.specials],
            "lost_examples": self.lost_examples,
            "duplicate_examples": self.duplicate_examples,
            "unplanned_exits": self.unplanned_exits,
            "sms_providers": self.sms_providers,
            "webhook_refused": self.webhook_refused,
            "resent_examples": self.resent_examples,
        }

    def render(self) -> str:
        lines = [f"{'channel':<8}{'expected':>10}{'delivered':>11}{'parked':>8}{'lost':>7}"
                 f"{'dup':>6}{'resent':>8}"]  # fmt: skip
        for name, c in self.channels.items():
            lines.append(f"{name:<8}{c.expected:>10}{c.delivered:>11}{c.parked:>8}{c.lost:>7}"
                         f"{c.duplicated:>6}{c.resent:>8}")  # fmt: skip
        lines.append(
            "demanded: inapp, email, sms exactly once (sms counted over sms-a and sms-b"
            " together); webhook at least once, a repeat allowed only after a webhook_sender"
            " SIGKILL/exit or a PostgreSQL crash between its receipts (counted in 'resent',"
            " receivers de-duplicate on webhook-id), any other repeat counted in 'dup'"
        )
        providers = ", ".join(f"{n} {c}" for n, c in self.sms_providers.items())
        lines.append(f"SMS created per provider: {providers or 'none'}"
                     + (" (failover expected)" if self.sms_failover_expected else ""))  # fmt: skip
        if self.webhook_refused:
            lines.append(f"webhook requests the sink refused: {self.webhook_refused}")
        lines.append("dead letters (records, distinct):" + ("" if self.dlq else " none"))
        for (topic, error_class), count in sorted(self.dlq.items()):
            distinct = self.dlq_distinct[(topic, error_class)]
            lines.append(f"  {topic:<36}{error_class:<28}{count:>6}{distinct:>6}")
        lines.append("lag: " + ", ".join(f"{g} {n}" for g, n in self.lag.items()))
        lines.append(f"SMS requests the provider de-duplicated (same key): {self.sms_dedup_hits}")
        for kind, parked in self.specials:
            lines.append(f"{kind}: {'parked on the DLQ' if parked else 'NOT on any DLQ'}")
        for exit_ in self.unplanned_exits:
            lines.append(f"exited on its own: {exit_}")
        for example in self.lost_examples:
            lines.append(f"lost e.g. {example}")
        for example in self.duplicate_examples:
            lines.append(f"duplicated e.g. {example}")
        for example in self.resent_examples:
            lines.append(f"resent (allowed) e.g. {example}")
        verdict = "PASS" if self.passed else "FAIL: " + ", ".join(self.problems())
        lines.append(verdict)
        return "\n".join(lines)


def _parked(letters: list[DeadLetter]) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """What the dead letters park: delivery/notification ids, (event, user) pairs, events."""
    ids: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    events: set[str] = set()
    for letter in letters:
        record = letter.record or {}
        if record.get("delivery_id"):
            ids.add(str(record["delivery_id"]))
        elif record.get("notification_id"):
            ids.add(str(record["notification_id"]))
        elif isinstance(record.get("event"), dict) and record.get("user_id"):
            pairs.add((str(record["event"]["event_id"]), str(record["user_id"])))
        elif record.get("event_id"):
            events.add(str(record["event_id"]))
        elif letter.key:
            events.add(letter.key.decode(errors="replace"))
    return ids, pairs, events


def _resend_explained(times: list[float], faults: list[tuple[str, float]]) -> str | None:
    """The fault that explains a webhook received at ``times`` (sorted) more than once: one
    of :data:`RESEND_FAULTS` after the first receipt and before the last; else None."""
    first, last = times[0], times[-1]
    for kind, at in faults:
        if kind.startswith(RESEND_FAULTS) and first <= at + RESEND_SLACK_S and at <= last:
            return kind
    return None


def judge(
    workload: Workload,
    sinks: Sinks,
    lags: dict[str, int],
    faults: list[tuple[str, float]] | None = None,
    sms_failover_expected: bool = False,
) -> Verdict:
    """``faults``: (what, wall time) of each fault the run injected (a service name for a
    SIGKILL or an unplanned exit, ``postgres``, ``broker``), to judge repeated webhooks."""
    counts = {channel: ChannelCount() for channel in CHANNELS}
    ids, pairs, events = _parked(sinks.letters)
    lost: list[str] = []
    duplicated: list[str] = []
    resent: list[str] = []
    by_channel = {"inapp": sinks.inapp, "email": sinks.emails, "sms": sinks.sms,
                  "webhook": sinks.webhook_counts}  # fmt: skip
    with workload.lock:
        expected: dict[Triple, str] = dict(workload.expected)
        kinds = dict(workload.events)
    for (event_id, user, channel), sink_id in expected.items():
        count = counts[channel]
        count.expected += 1
        seen = by_channel[channel][sink_id]
        where = f"{channel} {kinds.get(event_id)} event {event_id} user {user} id {sink_id}"
        if seen == 1:
            count.delivered += 1
        elif seen > 1:
            count.delivered += 1
            cause = None
            if channel == "webhook":
                cause = _resend_explained(sinks.webhooks[sink_id], faults or [])
            if cause is not None:
                count.resent += 1
                resent.append(f"{where} x{seen} (around {cause})")
            else:
                count.duplicated += 1
                duplicated.append(f"{where} x{seen}")
        elif sink_id in ids or (event_id, user) in pairs or event_id in events:
            count.parked += 1
        else:
            count.lost += 1
            lost.append(where)
    letter_keys = {(letter.key or b"").decode(errors="replace") for letter in sinks.letters}
    specials = [(s.kind, s.key in letter_keys or s.key in events) for s in workload.specials]
    return Verdict(
        channels=counts,
        dlq=Counter((letter.topic, letter.error_class) for letter in sinks.letters),
        dlq_distinct=Counter(
            (topic, error_class)
            for topic, error_class, _, _ in {
                (letter.topic, letter.error_class, letter.key, letter.value)
                for letter in sinks.letters
            }
        ),
        lag=lags,
        sms_dedup_hits=sinks.sms_dedup_hits,
        specials=specials,
        lost_examples=lost[:5],
        duplicate_examples=duplicated[:5],
        sms_providers=dict(sinks.sms_providers),
        sms_failover_expected=sms_failover_expected,
        webhook_refused=sinks.webhook_refused,
        resent_examples=resent[:3],
    )
