"""The scenarios of ``herald demo`` (and ``make run``), played on a running Herald through its
public interfaces: the ingest/admin API, Kafka, the read API.

Each scenario is a function ``scenario(system) -> ScenarioResult``: it prints nothing itself but
returns a readable account (who got what on which channel) and a list of checks of the outcome
in PostgreSQL, the SMTP sink, the SMS stand-in and the webhook sink. ``herald demo`` prints them
and exits non-zero if a check failed; the integration tests assert on the same results.

Every run uses fresh ids (user ids and event type codes carry a random run id), so demos can be
repeated on the same system without colliding.
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from herald import digest, seed
from herald.auth import AuthSettings
from herald.channels import CHANNELS
from herald.db.engine import search_path_options
from herald.identity import derived_event_id, notification_id
from herald.producer import AckedProducer
from herald.serde import encode
from herald.settings import Settings
from herald.status import FINAL_STATUSES
from herald.streaming import Outgoing, producer_config
from schemas import CATALOGUE, Catalogue

_LABELS = {
    "inapp": "in-app",
    "email": "email",
    "sms": "SMS",
    "webhook": "webhook",
    "slack": "Slack",
}
#: Channels of the seeded ``comment.created`` (webhook and Slack skipped without an endpoint).
COMMENT_CHANNELS = len(seed.DEFAULT_EVENT_TYPES[seed.COMMENT_CREATED]["channels"])


def _encode_event(event: dict[str, Any]) -> bytes:
    return encode("herald.Event", event)


@dataclass
class Check:
    """One expected outcome and whether it happened."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    """What a scenario did: a readable account, the checks, and ids for tests to look at."""

    name: str
    account: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def say(self, line: str) -> None:
        self.account.append(line)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        return bool(ok)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def render(self) -> str:
        """The account and the checks as text for a terminal."""
        lines = [f"== {self.name}: {'PASS' if self.passed else 'FAIL'}"]
        lines += [f"   {line}" for line in self.account]
        for check in self.checks:
            mark = "ok  " if check.ok else "FAIL"
            # Details explain failures; on success only short ones are worth the space.
            short = check.detail and (not check.ok or len(check.detail) < 60)
            lines.append(f"   [{mark}] {check.what}" + (f" ({check.detail})" if short else ""))
        return "\n".join(lines)


@dataclass
class System:
    """A running Herald as its users see it: the ingest API, Kafka, the read API (optional),
    plus PostgreSQL, the SMTP sink, the SMS stand-in and the webhook sink to check outcomes."""

    api: httpx.Client
    settings: Settings
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    read_api: httpx.Client | None = None
    #: How long to wait for an outcome.
    timeout: float = 60.0
    #: How events are encoded for Kafka (tests use the plain-fastavro example producer).
    encode_event: Callable[[dict[str, Any]], bytes] = _encode_event
    #: The event types :meth:`seed` put.
    seeded: list[str] = field(default_factory=list)

    @classmethod
    def connect(cls, settings: Settings, timeout: float = 60.0) -> System:
        """Clients for the APIs at the local ports of ``settings``, with the admin API key."""
        keys = AuthSettings().admin_keys
        headers = {"X-API-Key": keys[0]} if keys else {}
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{settings.local.ingest_port}", headers=headers, timeout=15
        )
        read_api = httpx.Client(
            base_url=f"http://127.0.0.1:{settings.local.read_api_port}",
            headers=headers,
            timeout=15,
        )
        return cls(api, settings, read_api=read_api, timeout=timeout)

    def close(self) -> None:
        self.api.close()
        if self.read_api is not None:
            self.read_api.close()

    @property
    def kafka(self) -> Any:
        return self.settings.kafka

    @property
    def db(self) -> Any:
        return self.settings.database

    @property
    def catalogue(self) -> Catalogue:
        return CATALOGUE.with_prefix(self.settings.kafka.topic_prefix)

    @property
    def smtp_api(self) -> str:
        """The SMTP sink's HTTP API (the port after the SMTP port, as the local stack runs it)."""
        host, port = self.settings.smtp.address
        return f"http://{host}:{port + 1}"

    # --- looking ------------------------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one query in Herald's schema."""
        with psycopg.connect(
            self.db.libpq_url, options=search_path_options(self.db.database_schema)
        ) as conn:
            return conn.execute(query, params).fetchall()

    def emails(self) -> list[dict[str, Any]]:
        """Every message the SMTP sink holds."""
        return list(httpx.get(f"{self.smtp_api}/messages", timeout=15).json())

    def emails_to(self, address: str) -> list[dict[str, Any]]:
        """The SMTP sink's messages to ``address``."""
        return [m for m in self.emails() if address in m["rcpt_tos"]]

    def sms_to(self, number: str) -> list[dict[str, Any]]:
        """The SMS stand-in's messages to ``number``."""
        sid = self.settings.sms.sms_account_sid
        url = f"{self.settings.sms.sms_api_url}/2010-04-01/Accounts/{sid}/Messages.json"
        return [m for m in httpx.get(url, timeout=15).json()["messages"] if m["to"] == number]

    @property
    def webhook_sink(self) -> str:
        """The webhook sink's base URL (``herald.devstack.webhook_sink``)."""
        return str(self.settings.webhook_sink.webhook_sink_url).rstrip("/")

    def sink_requests(self, path: str) -> list[dict[str, Any]]:
        """The requests the webhook sink recorded at ``path`` (``/hooks/x``), oldest first."""
        url = f"{self.webhook_sink}/requests"
        return list(httpx.get(url, params={"path": path}, timeout=15).json())

    def status(self, user: str, channel: str) -> tuple[str, str | None] | None:
        """The latest delivery status (and error message) of ``user`` on ``channel``."""
        rows = self.sql(
            "select d.status, d.error_message from notification_delivery d"
            " where d.user_id = %s and d.channel = %s order by d.updated_at desc limit 1",
            user,
            channel,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def poll(self, check: Callable[[], Any], timeout: float | None = None) -> Any:
        """Call ``check`` until it returns something truthy or the time is up; its last result."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            result = check()
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    def deliveries(self, event_id: str, users: Sequence[str]) -> dict[tuple[str, str], str]:
        """``(user, channel) → status`` of the notifications ``event_id`` made for ``users``."""
        ids = {notification_id(event_id, user): user for user in users}
        rows = self.sql(
            "select notification_id::text, channel, status from notification_delivery"
            " where notification_id = any(%s::uuid[])",
            list(ids),
        )
        return {(ids[nid], channel): status for nid, channel, status in rows}

    def await_deliveries(
        self, event_id: str, users: Sequence[str], channels: int
    ) -> dict[tuple[str, str], str]:
        """:meth:`deliveries` once every user has a final status on ``channels`` channels."""

        def final() -> dict[tuple[str, str], str] | None:
            states = self.deliveries(event_id, users)
            done = sum(status in FINAL_STATUSES for status in states.values())
            return states if done >= len(users) * channels else None

        return self.poll(final) or self.deliveries(event_id, users)

    def inbox(self, event_id: str) -> dict[str, tuple[str, str]]:
        """``user → (title, message)`` of the notifications ``event_id`` made."""
        rows = self.sql(
            "select user_id, title, message from notification where event_id = %s::uuid",
            event_id,
        )
        return {user: (title, message) for user, title, message in rows}

    # --- acting -------------------------------------------------------------------------

    def seed(self) -> list[str]:
        """The default event types, seeded once per :class:`System` (idempotent anyway)."""
        if not self.seeded:
            self.seeded = seed.seed_event_types(self.api)
        return self.seeded

    def publish(
        self,
        event_type: str,
        recipients: list[str],
        event_id: str | None = None,
        actor_id: str | None = None,
        **context: str,
    ) -> str:
        """Publish an event straight to Kafka, as any application would; returns its id."""
        event_id = event_id or str(uuid.uuid4())
        event: dict[str, Any] = {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": datetime.now(UTC),
            "producer": "herald-demo",
            "actor_id": actor_id,
            "recipients": recipients,
            "context": context,
            "metadata": {},
        }
        record = Outgoing(self.catalogue.events.name, event_id, self.encode_event(event))
        refused = AckedProducer(producer_config(self.kafka)).deliver([record])
        if refused:
            raise RuntimeError(f"Kafka did not acknowledge the event: {refused[0].error}")
        return event_id

    def user(self, name: str, **fields: Any) -> str:
        """Create (PUT) user ``<name>-<run>`` with an email and a phone number; its id."""
        user_id = f"{name}-{self.run}"
        body = {
            "email": f"{user_id}@example.test",
            "phone": "+1555" + str(uuid.uuid4().int % 10**7).zfill(7),
            "display_name": name.capitalize(),
            **fields,
        }
        response = self.api.put(f"/v1/users/{user_id}", json=body)
        response.raise_for_status()
        return user_id

    def user_contact(self, user_id: str) -> dict[str, Any]:
        """The user as the ingest API stores it."""
        response = self.api.get(f"/v1/users/{user_id}")
        response.raise_for_status()
        return dict(response.json())


# --- reporting ---------------------------------------------------------------------------


def _tell(
    result: ScenarioResult,
    system: System,
    event_id: str,
    users: Sequence[str],
    states: dict[tuple[str, str], str],
    emails: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Say who got what on which channel; returns per user what arrived where."""
    inbox = system.inbox(event_id)
    got: dict[str, dict[str, Any]] = {}
    for user in users:
        contact = system.user_contact(user)
        mails = [m for m in emails if contact["email"] and contact["email"] in m["rcpt_tos"]]
        texts = system.sms_to(contact["phone"]) if contact["phone"] else []
        got[user] = {"inbox": inbox.get(user), "emails": mails, "sms": texts}
        parts = [
            f"{label} {states[(user, channel)]}"
            for channel, label in _LABELS.items()
            if (user, channel) in states
        ]
        title = inbox[user][0] if user in inbox else "-"
        result.say(f"{user:<28} {', '.join(parts) or 'nothing'}  «{title}»")
    return got


# --- the scenarios -------------------------------------------------------------------------


def registration(system: System) -> ScenarioResult:
    """1. Default event types exist; a new user gets default preferences; a
    ``user.registered`` event brings a welcome notification in the inbox and by email."""
    result = ScenarioResult("1. registration")
    codes = system.seed()
    listed = {row[0] for row in system.sql("select code from event_type where is_active")}
    result.check("default event types exist", set(codes) <= listed, ", ".join(codes))
    ada = system.user("ada")
    prefs = system.api.get(f"/v1/users/{ada}/preferences")
    body = prefs.json() if prefs.status_code == 200 else {}
    result.check(
        "the new user has default preferences (every channel on)",
        all(body.get(f"{c}_enabled") for c in CHANNELS),
        f"HTTP {prefs.status_code}",
    )
    event_id = system.publish(seed.USER_REGISTERED, [ada])
    states = system.await_deliveries(event_id, [ada], 2)
    got = _tell(result, system, event_id, [ada], states, system.emails())[ada]
    result.check("welcome notification in the inbox", got["inbox"] is not None)
    result.check("welcome email sent", states.get((ada, "email")) == "sent")
    subjects = [m["subject"] for m in got["emails"]]
    result.check("welcome email in the mailbox", subjects == ["Welcome to Herald, Ada!"])
    result.data.update(user=ada, event_id=event_id, states=states, got=got)
    return result


def login(system: System) -> ScenarioResult:
    """2. Logins carry a device; the first login from a device raises a mandatory
    ``security.login_alert`` (in-app and email), a known device raises nothing."""
    result = ScenarioResult("2. login from a new device")
    system.seed()
    lee = system.user("lee")
    laptop = {
        "device_id": f"laptop-{system.run}",
        "user_agent": "Firefox on Linux",
        "ip": "203.0.113.7",
    }
    phone = {
        "device_id": f"phone-{system.run}",
        "user_agent": "Safari on iOS",
        "ip": "198.51.100.4",
    }
    # Logins travel on the events topic keyed by event id, so two logins published together
    # may be routed in either order: each waits for the previous one's outcome.
    first = system.publish(seed.USER_LOGIN, [lee], **laptop)
    alert_first = derived_event_id(first, seed.LOGIN_ALERT)
    states_first = system.await_deliveries(alert_first, [lee], 2)
    result.say("login 1 from the laptop (never seen before):")
    _tell(result, system, alert_first, [lee], states_first, [])
    again = system.publish(seed.USER_LOGIN, [lee], **laptop)
    # The login itself is routed too (off by default: a skipped status) in the same step
    # that decides on the device: once that status is in, the decision is made.
    system.await_deliveries(again, [lee], 1)
    alert_again = derived_event_id(again, seed.LOGIN_ALERT)
    result.say("login 2 from the laptop again: known device, no alert")
    other = system.publish(seed.USER_LOGIN, [lee], **phone)
    alert_other = derived_event_id(other, seed.LOGIN_ALERT)
    states_other = system.await_deliveries(alert_other, [lee], 2)
    result.say("login 3 from a phone (never seen before):")
    _tell(result, system, alert_other, [lee], states_other, [])
    for name, states in (("laptop", states_first), ("phone", states_other)):
        result.check(
            f"new device ({name}): alert in-app and by email",
            states.get((lee, "inapp")) == "delivered" and states.get((lee, "email")) == "sent",
            str(states),
        )
    result.check("known device: no alert", not system.deliveries(alert_again, [lee]))
    address = system.user_contact(lee)["email"]
    mails = system.emails_to(address)
    result.check(
        "two alert emails, naming the devices",
        len(mails) == 2
        and all("New sign-in" in m["subject"] for m in mails)
        and any(phone["device_id"] in m["raw"] for m in mails)
        and any(laptop["device_id"] in m["raw"] for m in mails),
        f"{len(mails)} emails",
    )
    alerts = {"first": alert_first, "again": alert_again, "other": alert_other}
    result.data.update(user=lee, logins=[first, again, other], alerts=alerts)
    return result


def dynamic_event_type(system: System) -> ScenarioResult:
    """3. An event type created through the API at run time, without templates (they are
    generated); an event of it published a moment later over HTTP is delivered."""
    result = ScenarioResult("3. dynamic event type")
    system.seed()
    code = f"invoice.paid.{system.run}"
    response = system.api.post(
        "/v1/event-types",
        json={
            "code": code,
            "name": "Invoice paid",
            "channels": ["inapp", "email"],
            "context_keys": ["amount", "invoice"],
        },
    )
    result.check(
        f"event type {code} created (201)", response.status_code == 201, response.text[:200]
    )
    dee = system.user("dee")
    response = system.api.post(
        "/v1/events",
        json={
            "event_type": code,
            "recipients": [dee],
            "context": {"amount": "42.00 EUR", "invoice": "INV-7"},
        },
    )
    result.check("event accepted over HTTP (202)", response.status_code == 202, response.text[:200])
    event_id = response.json()["event_ids"][0] if response.status_code == 202 else str(uuid.uuid4())
    states = system.await_deliveries(event_id, [dee], 2)
    got = _tell(result, system, event_id, [dee], states, system.emails())[dee]
    title, message = got["inbox"] or ("", "")
    result.check(
        "inbox row rendered from generated templates",
        title == "Invoice paid" and "42.00 EUR" in message and "INV-7" in message,
        f"{title!r}: {message!r}",
    )
    result.check("email sent", states.get((dee, "email")) == "sent" and len(got["emails"]) == 1)
    result.data.update(user=dee, code=code, event_id=event_id, states=states, got=got)
    return result


def comment(system: System, participants: int = 20) -> ScenarioResult:
    """4. A ``comment.created`` event to every participant of a post, the author among them:
    everyone but the author is told, on their enabled channels."""
    result = ScenarioResult("4. comment fan-out")
    system.seed()
    author = system.user("author")
    readers = [system.user(f"reader{n:02d}") for n in range(participants)]
    # One reader has SMS off: their enabled channels are in-app and email.
    quiet = readers[0]
    response = system.api.put(f"/v1/users/{quiet}/preferences", json={"sms_enabled": False})
    result.check("a reader turned SMS off", response.status_code == 200, response.text[:200])
    post = f"Kafka at scale ({system.run})"
    event_id = system.publish(
        seed.COMMENT_CREATED,
        [author, *readers],
        actor_id=author,
        post_title=post,
        author_name="Author",
        excerpt="Partitions bound parallelism.",
    )
    states = system.await_deliveries(event_id, readers, COMMENT_CHANNELS)
    emails = [m for m in system.emails() if post in m["subject"]]
    got = _tell(result, system, event_id, readers[:3], states, emails)
    result.say(f"... and {participants - 3} more readers alike")
    inbox = system.inbox(event_id)
    result.check(
        f"{participants} inbox rows, none for the author", sorted(inbox) == sorted(readers)
    )
    result.check("the author got nothing", not system.deliveries(event_id, [author]))
    emailed = {rcpt for m in emails for rcpt in m["rcpt_tos"]}
    result.check(
        f"{participants} emails",
        all(states.get((r, "email")) == "sent" for r in readers) and len(emails) == participants,
        f"{len(emails)} in the mailbox",
    )
    texted = [r for r in readers if states.get((r, "sms")) == "sent"]
    result.check(
        f"{participants - 1} SMS; the reader with SMS off skipped",
        sorted(texted) == sorted(readers[1:]) and states.get((quiet, "sms")) == "skipped",
    )
    result.check(
        "SMS in the stand-in",
        len(system.sms_to(system.user_contact(readers[1])["phone"])) == 1
        and got[quiet]["sms"] == [],
    )
    result.data.update(
        author=author, readers=readers, event_id=event_id, states=states, emailed=emailed
    )
    return result


def preferences(system: System) -> ScenarioResult:
    """5. A user turns email off for comments: the next comment reaches them in-app and by
    SMS only; turning it back on restores email."""
    result = ScenarioResult("5. preferences")
    system.seed()
    pat, sam = system.user("pat"), system.user("sam")
    contact = system.user_contact(pat)
    off = {
        "event_overrides": {seed.COMMENT_CREATED: {"enabled": True, "channels": ["inapp", "sms"]}}
    }
    response = system.api.put(f"/v1/users/{pat}/preferences", json=off)
    result.check("email turned off for comments", response.status_code == 200, response.text[:200])
    result.say("pat turns email off for comments:")
    post = f"Preferences ({system.run})"
    first = system.publish(
        seed.COMMENT_CREATED, [pat], actor_id=sam, post_title=post, author_name="Sam", excerpt="one"
    )
    states_off = system.await_deliveries(first, [pat], COMMENT_CHANNELS)
    _tell(result, system, first, [pat], states_off, [])
    result.check(
        "in-app and SMS, email skipped",
        states_off.get((pat, "inapp")) == "delivered"
        and states_off.get((pat, "sms")) == "sent"
        and states_off.get((pat, "email")) == "skipped",
        str(states_off),
    )
    response = system.api.put(f"/v1/users/{pat}/preferences", json={})
    result.check("email turned back on", response.status_code == 200, response.text[:200])
    result.say("pat turns email back on:")
    second = system.publish(
        seed.COMMENT_CREATED, [pat], actor_id=sam, post_title=post, author_name="Sam", excerpt="two"
    )
    states_on = system.await_deliveries(second, [pat], COMMENT_CHANNELS)
    _tell(result, system, second, [pat], states_on, [])
    mails = system.emails_to(contact["email"])
    result.check(
        "email restored: exactly one email (the second comment)",
        states_on.get((pat, "email")) == "sent" and len(mails) == 1,
        f"{len(mails)} emails",
    )
    result.check("two SMS", len(system.sms_to(contact["phone"])) == 2)
    result.data.update(user=pat, events=[first, second], off=states_off, on=states_on)
    return result


def weekly_digest(system: System, now: datetime | None = None) -> ScenarioResult:
    """6. The weekly summary: a user with unread notifications gets one digest email listing
    them; running the job again the same week sends nothing more."""
    result = ScenarioResult("6. weekly summary")
    system.seed()
    max_, sam = system.user("max"), system.user("sam")
    contact = system.user_contact(max_)
    events = [
        system.publish(
            seed.COMMENT_CREATED,
            [max_],
            actor_id=sam,
            post_title=f"Post {n}",
            author_name="Sam",
            excerpt=f"comment {n}",
        )
        for n in (1, 2, 3)
    ]
    system.poll(lambda: all(system.inbox(e) for e in events))
    # The job looks at the week before ``now``: take it once the notifications are stored.
    now = now or datetime.now(UTC)
    read_id = notification_id(events[0], max_)
    if system.read_api is not None:
        response = system.read_api.post(f"/v1/users/{max_}/notifications/{read_id}/read")
        result.check(
            "one notification marked read (read API)",
            response.status_code == 200,
            response.text[:200],
        )
    unread = system.sql(
        "select count(*) from notification where user_id = %s and not is_read", max_
    )[0][0]
    result.say(f"{max_} has {unread} unread notifications this week")
    sent = digest.run_digest(system.settings, now, user_ids=[max_])
    event_id = digest.digest_event_id(max_, digest.iso_week(now))
    states = system.await_deliveries(event_id, [max_], 1)
    again = digest.run_digest(system.settings, now, user_ids=[max_])  # the same week: harmless
    # A marker email after the repeated digest: max's deliveries are keyed by user, so once
    # the marker is sent, a second digest would have been sent before it.
    marker = system.publish(
        seed.COMMENT_CREATED,
        [max_],
        actor_id=sam,
        post_title="Marker",
        author_name="Sam",
        excerpt="marker",
    )
    system.await_deliveries(marker, [max_], COMMENT_CHANNELS)
    mails = [m for m in system.emails_to(contact["email"]) if "unread" in m["subject"]]
    _tell(result, system, event_id, [max_], states, mails)
    result.check(
        "one digest published per run, the same event both times",
        [d.user_id for d in sent] == [max_] and sent[0].count == unread and again == sent,
    )
    result.check("digest email sent", states.get((max_, "email")) == "sent", str(states))
    result.check(
        "exactly one digest email, listing the unread titles",
        len(mails) == 1
        and f"{unread} unread" in mails[0]["subject"]
        and all(f"Post {n}" in mails[0]["raw"] for n in (2, 3)),
        f"{len(mails)} emails",
    )
    result.data.update(user=max_, event_id=event_id, unread=unread, states=states)
    return result


def _receiver_verify() -> Callable[..., bool] | None:
    """``verify`` of ``examples/webhook_receiver.py``: the standard-library receiver a user
    copies, not Herald's own signing code (loaded from the checkout: examples is no package
    of the installed distribution). ``None`` when the file is not there."""
    path = Path(__file__).resolve().parents[1] / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("herald_demo_webhook_receiver", path)
    if not path.is_file() or spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    verify: Callable[..., bool] = module.verify
    return verify


def webhooks(system: System) -> ScenarioResult:
    """7. A user registers a signed webhook and a Slack incoming webhook (both on the local
    webhook sink); a comment reaches both, and the webhook's signature verifies with the
    example receiver's ``verify`` and the secret the registration showed once."""
    result = ScenarioResult("7. comment to Slack and a signed webhook")
    system.seed()
    wen, sam = system.user("wen"), system.user("sam")
    paths = {"webhook": f"/hooks/{wen}", "slack": f"/slack/{wen}"}
    registered: dict[str, dict[str, Any]] = {}
    for kind, path in paths.items():
        response = system.api.put(
            f"/v1/users/{wen}/endpoints/{kind}", json={"url": system.webhook_sink + path}
        )
        result.check(
            f"{kind} endpoint registered (201)", response.status_code == 201, response.text[:200]
        )
        registered[kind] = response.json() if response.status_code == 201 else {}
    secret = registered["webhook"].get("secret") or ""
    listing = system.api.get(f"/v1/users/{wen}/endpoints")
    result.check(
        "the secret was shown once (not in the listing)",
        listing.status_code == 200 and bool(secret) and secret not in listing.text,
    )
    result.say(
        f"{wen} registered {system.webhook_sink}{paths['webhook']} (secret {secret[:10]}...)"
    )
    result.say(f"{wen} registered {system.webhook_sink}{paths['slack']} (Slack)")
    post = f"Webhooks ({system.run})"
    event_id = system.publish(
        seed.COMMENT_CREATED,
        [wen],
        actor_id=sam,
        post_title=post,
        author_name="Sam",
        excerpt="Signed & delivered <3",
    )
    states = system.await_deliveries(event_id, [wen], COMMENT_CHANNELS)
    _tell(result, system, event_id, [wen], states, [])
    hooks = system.poll(lambda: system.sink_requests(paths["webhook"]))
    posts = system.poll(lambda: system.sink_requests(paths["slack"]))
    result.check("webhook sent", states.get((wen, "webhook")) == "sent", str(states))
    result.check("Slack message sent", states.get((wen, "slack")) == "sent", str(states))
    result.check("one request at each endpoint", len(hooks) == 1 and len(posts) == 1)
    verify = _receiver_verify()
    if hooks and verify is not None:
        hook = hooks[0]
        body = hook["body"].encode()
        payload = json.loads(body)
        signature = hook["headers"].get("webhook-signature", "")
        result.say(
            f"webhook {hook['headers'].get('webhook-id')}: {payload['type']} "
            f"«{payload['data']['title']}», signature {signature[:16]}..."
        )
        result.check(
            "the signature verifies (examples/webhook_receiver.py)",
            verify(secret, hook["headers"], body),
        )
        result.check(
            "a tampered body does not",
            not verify(secret, hook["headers"], body.replace(b"Sam", b"Eve")),
        )
        result.check(
            "the payload names the event and the comment",
            payload["type"] == seed.COMMENT_CREATED
            and payload["data"]["event_id"] == event_id
            and post in payload["data"]["title"],
            hook["body"][:200],
        )
    else:
        result.check(
            "the signature verifies (examples/webhook_receiver.py)",
            False,
            "no request" if not hooks else "examples/webhook_receiver.py not found",
        )
    if posts:
        message = json.loads(posts[0]["body"])
        result.say(f"Slack: {message.get('text', '')!r}")
        result.check(
            "the Slack message has the comment as Block Kit text",
            post in message.get("text", "")
            and any(post in json.dumps(block) for block in message.get("blocks", [])),
            posts[0]["body"][:200],
        )
    result.data.update(
        user=wen, event_id=event_id, states=states, secret=secret, hooks=hooks, posts=posts
    )
    return result


#: Every scenario, in the order ``herald demo`` plays them.
SCENARIOS: tuple[Callable[[System], ScenarioResult], ...] = (
    registration,
    login,
    dynamic_event_type,
    comment,
    preferences,
    weekly_digest,
    webhooks,
)


def play(
    system: System,
    scenarios: Sequence[Callable[[System], ScenarioResult]] = SCENARIOS,
    say: Callable[[str], None] = print,
) -> list[ScenarioResult]:
    """Play ``scenarios`` in order, printing each account as it completes. A scenario that
    raises is reported as failed and the next one still runs."""
    results = []
    for scenario in scenarios:
        try:
            result = scenario(system)
        except Exception as exc:  # a demo reports every scenario, even after one breaks
            result = ScenarioResult(scenario.__name__)
            result.check("scenario ran", False, f"{type(exc).__name__}: {exc}")
        say(result.render())
        results.append(result)
    return results
