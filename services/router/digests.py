"""Digest windows: the events of a type with ``digest: {window_s, key}`` that reach one user
(and key, e.g. the same ``post_id``) within ``window_s`` seconds of the first become one
notification, "Alice and 4 others commented on Hello", rendered from the type's ``digest``
template with the list of events.

**State.** The table ``digest_windows`` (keyed by user id, on the recipients topic's partitions
like ``known_devices``) holds each user's open windows as JSON::

    {"w": [{"code", "key", "start", "end", "count", "ids": [...], "items": [...]}],
     "o": [recipients offsets absorbed and not yet committed],
     "r": [{"until", "ids": [...]}: event ids of windows emitted in the last 10 minutes]}

``start``/``end`` are epoch milliseconds: ``start`` is the timestamp of the window's first
record on the recipients topic, ``end = start + window_s``. ``items`` keeps the first
:data:`MAX_ITEMS` events (what templates list), ``ids`` the first :data:`MAX_IDS` event ids (a
re-published event is counted once), ``count`` all of them.

**Absorbing** (stage 2, :func:`absorb`). A digest event always takes the hop through the
recipients topic (stage 1 never routes it locally), so each has a real offset on its user's
partition. Stage 2 adds it to the user's window and writes the new state itself: in memory
(``table.data``, bypassing Faust's own changelog write) and as a record on the table's
changelog topic, which is the record's output: the ledger commits its offset only once that
write is acknowledged (services.router.outputs), so a committed event is in the persisted
state. A record seen again (a restart or a rebalance re-reads from the committed offset) is
recognised by its offset in ``o`` and changes nothing; ``o`` is pruned below the partition's
committed offset. An event written to the recipients topic twice (stage 1 crashed before its
own offset was committed, and expanded the event again) has another offset but the same event
id: it is counted once while its window is open, and dropped for :data:`RECENT_MS` after its
window was emitted (``r``), so it never opens a second window.

**Emitting** (a timer on every worker, ``ROUTER_DIGEST_WINDOW_TICK_MS``, for the partitions
whose tables it holds): a window whose ``end`` has passed is routed like an event whose id is
derived from (user, type, key, window start) (:func:`digest_event_id`), so every id that
follows (notification, deliveries) is the same however often it is emitted. Its outputs are
produced and acknowledged (quiet-hours holds stored) *before* the window is removed from the
state; a crash (SIGKILL) or a rebalance in between emits it again, with the same ids: the
inbox upserts it, and the senders' journal does not send a delivery id twice. So there is
exactly one digest notification and one message per channel per (user, key, window start).

Bounds: a user's state is at most :data:`MAX_STATE_BYTES`; an event that would make it larger
is routed on its own, as if its type had no digest.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from faust.types.tuples import Message
from prometheus_client import Counter

from herald.errors import PermanentError
from herald.identity import HERALD_NAMESPACE
from herald.metrics import DELIVERIES, ERRORS, labelled
from herald.producer import AckedProducer
from herald.serde import Record
from herald.streaming import Outgoing, producer_config
from services.router import routing
from services.router.app import SERVICE
from services.router.runtime import Runtime, decoded, log, table_value

#: Events a digest's template can list (``events``); ``count`` covers all of them.
MAX_ITEMS: Final = 20
#: Event ids kept per window to count a re-published event once.
MAX_IDS: Final = 1_000
#: How long the event ids of an emitted window are remembered (see :func:`add_event`).
RECENT_MS: Final = 600_000
#: Largest JSON state of one user; past it an event is routed on its own.
MAX_STATE_BYTES: Final = 256_000

ABSORBED = Counter(
    "herald_digest_events_total", "Events added to a digest window (or seen again)", ["outcome"]
)
EMITTED = Counter("herald_digest_windows_emitted_total", "Digest windows routed at their end")

#: The digest template when an event type has none (``templates["digest"]``).
DEFAULT_TEMPLATE: Final = {
    "title": "{{ event_type_name }}{% if count > 1 %} ({{ count }}){% endif %}",
    "body": (
        "{{ count }} new {{ event_type_name }} notification{{ '' if count == 1 else 's' }}"
        "{% if actors %} from {{ actors | join(', ') }}{% endif %}."
    ),
    "html": None,
}


def digest_event_id(user_id: str, code: str, key: str, start_ms: int) -> str:
    """The event id of one digest window: the same for every emission of that window."""
    return str(uuid.uuid5(HERALD_NAMESPACE, f"digest:{code}:{start_ms}:{key}:{user_id}"))


def is_digested(event_type: Mapping[str, Any] | None) -> bool:
    """Whether events of this type are gathered into digest windows."""
    digest = (event_type or {}).get("digest")
    return bool(digest and digest.get("window_s", 0) > 0)


def takes_hop(runtime: Runtime, recipient: Mapping[str, Any]) -> bool:
    """Whether stage 1 must write this recipient to the recipients topic rather than route it
    here: a digest event needs its own offset there (see the module docstring)."""
    raw = table_value(runtime.router.event_types, recipient["event"]["event_type"].encode())
    return raw is not None and is_digested(decoded(raw, routing.EVENT_TYPE))


# --- state (pure) -------------------------------------------------------------------------


def load(raw: bytes | None) -> dict[str, Any]:
    """A user's state (a fresh copy, safe to change)."""
    state = json.loads(raw) if raw else {}
    return {key: list(state.get(key) or []) for key in ("w", "o", "r")}


def next_due(raw: bytes) -> int:
    """When (epoch ms) a state next needs the timer: its first window's end, or, with no
    window open, when its emitted ids expire (then it is cleaned up)."""
    state = json.loads(raw)
    ends = [window["end"] for window in state.get("w") or ()]
    if ends:
        return min(ends)
    return max((recent["until"] for recent in state.get("r") or ()), default=0)


def dump(state: Mapping[str, Any]) -> bytes | None:
    """The state as table bytes; ``None`` (delete) when nothing is left in it."""
    if not state["w"] and not state["o"] and not state["r"]:
        return None
    return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()


def prune(state: dict[str, Any], committed: int | None) -> None:
    """Forget absorbed offsets below the partition's committed offset (never delivered again)."""
    if committed is not None:
        state["o"] = [offset for offset in state["o"] if offset >= committed]


def add_event(
    state: dict[str, Any],
    event: Mapping[str, Any],
    *,
    window_s: int,
    key_name: str | None,
    at_ms: int,
    offset: int,
    now_ms: int | None = None,
) -> str:
    """Add one event (its recipients record at ``offset``, timestamp ``at_ms``) to ``state``:
    to the open window of its type and key that has not ended at ``at_ms`` nor now
    (``now_ms``, default ``at_ms``), else to a new one starting at ``at_ms``.

    Returns ``added``; ``repeat`` (nothing changed) when ``offset`` was absorbed already;
    ``seen`` (only the offset recorded) when the event id is in an open window of its type
    and key or in a window emitted less than :data:`RECENT_MS` ago: the same event written to
    the recipients topic again, after a crash of stage 1 before its offset was committed."""
    if offset in state["o"]:
        return "repeat"
    now_ms = at_ms if now_ms is None else now_ms
    state["o"].append(offset)
    state["r"] = [recent for recent in state["r"] if recent["until"] > now_ms]
    code = event["event_type"]
    context = event.get("context") or {}
    key = str(context.get(key_name, "")) if key_name else ""
    event_id = event["event_id"]
    if any(
        event_id in w["ids"] for w in state["w"] if w["code"] == code and w["key"] == key
    ) or any(event_id in recent["ids"] for recent in state["r"]):
        return "seen"
    window = next(
        (
            w
            for w in reversed(state["w"])
            # A window whose end has passed is closed, even for a record stamped before it:
            # the timer may be emitting it.
            if w["code"] == code and w["key"] == key and max(at_ms, now_ms) < w["end"]
        ),
        None,
    )
    if window is None:
        window = {
            "code": code,
            "key": key,
            "start": at_ms,
            "end": at_ms + window_s * 1000,
            "count": 0,
            "ids": [],
            "items": [],
        }
        state["w"].append(window)
    window["count"] += 1
    if len(window["ids"]) < MAX_IDS:
        window["ids"].append(event_id)
    if len(window["items"]) < MAX_ITEMS:
        occurred = event.get("occurred_at")
        window["items"].append(
            {
                "event_id": event["event_id"],
                "actor_id": event.get("actor_id") or "",
                "occurred_at": occurred.isoformat() if isinstance(occurred, datetime) else "",
                "context": dict(context),
            }
        )
    return "added"


def remove(state: dict[str, Any], window: Mapping[str, Any], now_ms: int) -> None:
    """Drop the emitted ``window`` (matched by type, key and start) from ``state``, keeping its
    event ids until ``now_ms + RECENT_MS`` (see :func:`add_event`)."""
    ident = (window["code"], window["key"], window["start"])
    state["w"] = [w for w in state["w"] if (w["code"], w["key"], w["start"]) != ident]
    state["r"] = [recent for recent in state["r"] if recent["until"] > now_ms]
    state["r"].append({"until": now_ms + RECENT_MS, "ids": list(window["ids"])})


def _iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def digest_recipient(user_id: str, window: Mapping[str, Any]) -> Record:
    """The recipient's copy of the event a window stands for: its id derived from (user, type,
    key, start), its context the first event's context plus the digest's own variables:
    ``count``, ``others`` (count - 1), ``events`` (each listed event's context with its
    ``event_id``, ``actor_id`` and ``occurred_at``), ``first``, ``last``, ``actors`` (distinct
    ``actor_name`` or else ``actor_id`` of the listed events, in order), ``digest_key``,
    ``window_start`` and ``window_end`` (ISO 8601)."""
    items = window["items"]
    events = [
        {
            **item["context"],
            "event_id": item["event_id"],
            "actor_id": item["actor_id"],
            "occurred_at": item["occurred_at"],
        }
        for item in items
    ]
    actors = list(
        dict.fromkeys(
            str(e.get("actor_name") or e["actor_id"])
            for e in events
            if e.get("actor_name") or e["actor_id"]
        )
    )
    start, end = _iso(window["start"]), _iso(window["end"])
    context = {
        **(items[0]["context"] if items else {}),
        "count": window["count"],
        "others": window["count"] - 1,
        "events": events,
        "first": events[0] if events else {},
        "last": events[-1] if events else {},
        "actors": actors,
        "digest_key": window["key"],
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
    }
    code = window["code"]
    return {
        "user_id": user_id,
        "event": {
            "event_id": digest_event_id(user_id, code, window["key"], window["start"]),
            "event_type": code,
            "occurred_at": end,
            "producer": "herald-digest",
            "actor_id": None,
            "recipients": [user_id],
            "context": context,
            "metadata": {
                "digest_key": window["key"],
                "digest_window_start": start.isoformat(),
                "digest_count": str(window["count"]),
            },
        },
    }


def digest_type(event_type: Mapping[str, Any]) -> dict[str, Any]:
    """The event type as the digest renders it: its ``digest`` template (or
    :data:`DEFAULT_TEMPLATE`) for every channel (email's HTML from its ``html``)."""
    template = (event_type.get("templates") or {}).get("digest") or DEFAULT_TEMPLATE
    return {**event_type, "templates": {"inapp": template}}


# --- absorbing (stage 2) --------------------------------------------------------------------


def _changelog(runtime: Runtime, key: bytes, raw: bytes | None) -> Outgoing:
    table = runtime.router.digest_windows
    return Outgoing(table.changelog_topic.get_topic_name(), key, raw)


def absorb(
    runtime: Runtime, recipient: Mapping[str, Any], event_type: Mapping[str, Any], message: Message
) -> list[Outgoing] | None:
    """Add a digest event to its user's window; its output is the table's changelog record
    (or nothing, for a record absorbed before). ``None``: the state would grow past
    :data:`MAX_STATE_BYTES`, so the caller routes the event on its own."""
    if message.offset is None or message.offset < 0:
        # Never routed in stage 1 (takes_hop); stage 1 writes it to the recipients topic.
        raise RuntimeError("a digest event must be routed from the recipients topic")
    table = runtime.router.digest_windows
    key = recipient["user_id"].encode()
    state = load(table_value(table, key))
    prune(state, runtime.committed_offset(message.tp))
    digest = event_type["digest"]
    at_ms = int((message.timestamp or time.time()) * 1000)
    outcome = add_event(
        state,
        recipient["event"],
        window_s=int(digest["window_s"]),
        key_name=digest.get("key"),
        at_ms=at_ms,
        offset=message.offset,
        now_ms=int(time.time() * 1000),
    )
    ABSORBED.labels(outcome).inc()
    if outcome == "repeat":
        return []
    raw = dump(state)
    if outcome == "added" and raw is not None and len(raw) > MAX_STATE_BYTES:
        log.warning(
            "digest state too large; event routed on its own",
            extra={"user_id": recipient["user_id"], "bytes": len(raw)},
        )
        return None
    _set(table, key, raw)
    return [_changelog(runtime, key, raw)]


def _set(table: Any, key: bytes, raw: bytes | None) -> None:
    # Straight into the store: the changelog record is produced by the caller, acknowledged
    # before the offset is committed (Faust's own write would not be waited for).
    if raw is None:
        table.data.pop(key, None)
    else:
        table.data[key] = raw


# --- emitting (a timer) ---------------------------------------------------------------------


class Emitter:
    """Routes the windows that have ended, on the worker holding their user's tables."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._producer: AckedProducer | None = None
        #: :func:`next_due` by user key, with the hash of the state it was read from (bytes
        #: keep their hash: a tick costs no JSON parsing for the states that did not change).
        self._due: dict[bytes, tuple[int, int]] = {}

    @property
    def producer(self) -> AckedProducer:
        if self._producer is None:
            self._producer = AckedProducer(producer_config(self.runtime.router.settings.kafka))
        return self._producer

    async def tick(self) -> int:
        """Emit every window that has ended; returns how many were emitted."""
        from services.router.stage1 import partition_of  # stage1 imports this module

        runtime = self.runtime
        table = runtime.router.digest_windows
        partitions = runtime.catalogue.recipients.partitions
        now_ms = int(time.time() * 1000)
        emitted = 0
        items = list(table.data.items())
        if len(self._due) > 2 * len(items) + 1024:
            self._due = {}
        for key, raw in items:
            digest = hash(raw)
            known = self._due.get(key)
            if known is None or known[0] != digest:
                known = self._due[key] = (digest, next_due(raw))
            if known[1] > now_ms:
                continue
            tp = runtime.recipient_tps[partition_of(key, partitions)]
            if not runtime.holds_tables(tp):
                continue
            state = load(raw)
            due = [w for w in state["w"] if w["end"] <= now_ms]
            if not due:
                self._clean(key, state, tp, now_ms)
            for window in due:
                if not await self._emit(key, window, tp):
                    return emitted
                emitted += 1
        return emitted

    def _clean(self, key: bytes, state: dict[str, Any], tp: Any, now_ms: int) -> None:
        """A state with no open window whose emitted ids expired: forget what is no longer
        needed (and the whole state once nothing is left)."""
        state["r"] = [recent for recent in state["r"] if recent["until"] > now_ms]
        prune(state, self.runtime.committed_offset(tp))
        raw = dump(state)
        if raw != table_value(self.runtime.router.digest_windows, key):
            _set(self.runtime.router.digest_windows, key, raw)
            write_changelog(self.runtime, _changelog(self.runtime, key, raw))
        if raw is not None:  # offsets not committed yet: look again in a minute
            self._due[key] = (hash(raw), now_ms + 60_000)

    async def _emit(self, key: bytes, window: Mapping[str, Any], tp: Any) -> bool:
        """Route one window, then remove it; False to stop this tick (Kafka refused, or the
        partition moved: the window stays, and is emitted again with the same ids)."""
        runtime = self.runtime
        router = runtime.router
        user_id = key.decode()
        generation = runtime.app.consumer_generation_id
        try:
            outgoing, held = self._route(user_id, window)
        except LookupError as exc:  # the user erased, the type deleted: nobody to tell
            log.info("digest window dropped", extra={"user_id": user_id, "reason": str(exc)})
            outgoing, held = [], []
        except PermanentError as exc:
            # A digest that can never be routed (the user or type gone, a template error):
            # dropped, loudly, rather than retried every tick.
            ERRORS.labels(SERVICE, exc.error_class).inc()
            log.error(
                "digest window dropped",
                extra={"user_id": user_id, "window": _ident(window), "error": exc.message},
            )
            outgoing, held = [], []
        if outgoing:
            refused = await asyncio.to_thread(self.producer.deliver, outgoing)
            if refused:
                ERRORS.labels(SERVICE, "digest.produce").inc()
                log.error(
                    "digest not acknowledged by Kafka; emitting it again later",
                    extra={"user_id": user_id, "error": str(refused[0].error)},
                )
                return False
        await runtime.hold(held)
        if runtime.app.consumer_generation_id != generation or not runtime.holds_tables(tp):
            return False  # the new owner emits it again (same ids) and removes it
        state = load(table_value(router.digest_windows, key))
        remove(state, window, int(time.time() * 1000))
        prune(state, runtime.committed_offset(tp))
        raw = dump(state)
        _set(router.digest_windows, key, raw)
        write_changelog(runtime, _changelog(runtime, key, raw))
        EMITTED.inc()
        log.info("digest window emitted", extra={"user_id": user_id, "window": _ident(window)})
        return True

    def _route(self, user_id: str, window: Mapping[str, Any]) -> tuple[list[Outgoing], list[Any]]:
        router = self.runtime.router
        raw_user = table_value(router.users, user_id.encode())
        raw_type = table_value(router.event_types, window["code"].encode())
        if raw_user is None or raw_type is None:
            raise LookupError("the user or the event type is gone")
        user = decoded(raw_user, routing.USER)
        raw_preferences = table_value(router.preferences, user_id.encode())
        preferences = decoded(raw_preferences, routing.PREFERENCES) if raw_preferences else None
        event_type = digest_type(decoded(raw_type, routing.EVENT_TYPE))
        recipient = digest_recipient(user_id, window)
        routed = routing.route(recipient, user, preferences, event_type, datetime.now(UTC))
        for status in routed.statuses:
            labelled(DELIVERIES, status["channel"], status["status"]).inc()
        return routing.routed_outputs(routed, self.runtime.catalogue), routing.held_rows(routed)


def write_changelog(runtime: Runtime, record: Outgoing) -> None:
    """A state written outside stage 2 (a window emitted, a state cleaned or forgotten), on
    the producer of stage 2's writes (so in order with them). Not waited for: if it is lost,
    the changelog keeps the state before it (an emitted window is emitted again after a
    restart, with the same ids; a cleaned state is cleaned again)."""

    def done(sent: Outgoing, error: Any) -> None:
        if error is not None:
            log.warning("digest state not written", extra={"error": str(error)})

    try:
        runtime.outputs.producer.send(record, done)
    except Exception as exc:  # BufferError, KafkaException: the same as a lost write
        log.warning("digest state not written", extra={"error": str(exc)})


def forget(runtime: Runtime, key: bytes) -> None:
    """Drop a user's digest state (an erasure): deleted here and tombstoned on the changelog,
    on the producer of every other write of this table (so in order with them)."""
    table = runtime.router.digest_windows
    if key in table.data:
        _set(table, key, None)
        write_changelog(runtime, _changelog(runtime, key, None))


def _ident(window: Mapping[str, Any]) -> str:
    return f"{window['code']}/{window['key']}/{window['start']}"


def register(runtime: Runtime) -> Emitter:
    """Add the digest timer to the worker's app."""
    emitter = Emitter(runtime)
    interval = runtime.router.router_settings.digest_window_tick_ms / 1000

    async def digest_windows() -> None:
        """Route the digest windows that have ended (services.router.digests)."""
        try:
            await emitter.tick()
        except Exception:  # the next tick tries again; the windows are still there
            ERRORS.labels(SERVICE, "digest.emit").inc()
            log.exception("emitting digest windows failed")

    runtime.app.timer(interval, name="digest_windows")(digest_windows)
    return emitter
