"""The ``x-*`` headers of the design (section 5): one typed, tolerant reader and one writer.

Any application may write headers on a topic Herald reads, so nothing here trusts them:
:func:`read_headers` never raises. It returns the typed values it could read and, in
``problems``, one line per ``x-*`` header it could not (not UTF-8, empty, not a number, out of
range, repeated with different values). A record with problems is poison on its own
(:data:`HEADERS_INVALID`): it goes to its DLQ, and the stream flows on.

On a dead letter made from such a record (:func:`herald.streaming.failure_record`) the
unreadable values are kept verbatim under ``x-garbled-<name>`` (``x-attempt`` →
``x-garbled-attempt``) and the typed headers are written anew with readable values (attempt 1,
the record's own topic/partition/offset, the failure time, replay count 0), so ``herald dlq``
can list and replay it like any other dead letter.

``x-provider-pin`` is the provider failover's durable pin (:mod:`herald.sender.providers`): the
provider a delivery's send went to when its outcome was unknown (``sms-a``). The sender writes
it on the retry-tier and dead-letter records of such a send, every later hop and ``herald dlq
replay`` keep it, and the sender sends a record carrying it through that provider only. An
unreadable pin is a problem like any other (the record is parked, never sent elsewhere).

Headers Herald does not own (tracing, an application's own) are passed on as they came, bytes
and all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

H_ATTEMPT = "x-attempt"
H_NOT_BEFORE = "x-not-before"
H_ORIGINAL_TOPIC = "x-original-topic"
H_ORIGINAL_PARTITION = "x-original-partition"
H_ORIGINAL_OFFSET = "x-original-offset"
H_ERROR_CLASS = "x-error-class"
H_ERROR_MESSAGE = "x-error-message"
H_FIRST_FAILED_AT = "x-first-failed-at"
H_REPLAY_COUNT = "x-replay-count"
#: The service that wrote a status event, on the ones a service reads back itself
#: (inapp_store's in-app ``delivered``), so that it skips its own echo without decoding it.
H_WRITTEN_BY = "x-written-by"
#: The provider a delivery is pinned to after a send whose outcome is unknown (a timeout after
#: the request went out): its later attempts go there only (:mod:`herald.sender.providers`).
H_PROVIDER_PIN = "x-provider-pin"

#: Where an unreadable value is kept on a dead letter: ``x-attempt`` → ``x-garbled-attempt``.
GARBLED_PREFIX = "x-garbled-"
#: The error class of a record whose ``x-*`` headers cannot be read.
HEADERS_INVALID = "headers.invalid"

#: What a header value may be on the wire (confluent-kafka gives bytes, or None).
RawValue = str | bytes | None
RawHeaders = Iterable[tuple[str, RawValue]] | Mapping[str, RawValue] | None

_INT = re.compile(r"[0-9]{1,19}")
_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_PROVIDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Longest error message written (and the longest value quoted in a problem).
MAX_MESSAGE = 1000
_QUOTE = 60


def _int_range(low: int, high: int) -> Any:
    def read(text: str) -> int:
        if not _INT.fullmatch(text):
            raise ValueError("not a whole number")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"out of range {low}..{high}")
        return value

    return read


def _seconds(text: str) -> float:
    if not _SECONDS.fullmatch(text):
        raise ValueError("not epoch seconds")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def _topic(text: str) -> str:
    if not _TOPIC.fullmatch(text):
        raise ValueError("not a topic name")
    return text


def _provider(text: str) -> str:
    if not _PROVIDER.fullmatch(text):
        raise ValueError("not a provider name")
    return text


def _text(text: str) -> str:
    if not text:
        raise ValueError("empty")
    return text


#: How each header of the design is read: (attribute, parser).
_READERS: dict[str, tuple[str, Any]] = {
    H_ATTEMPT: ("attempt", _int_range(1, 1_000_000)),
    H_NOT_BEFORE: ("not_before", _seconds),
    H_ORIGINAL_TOPIC: ("original_topic", _topic),
    H_ORIGINAL_PARTITION: ("original_partition", _int_range(0, 2**31 - 1)),
    H_ORIGINAL_OFFSET: ("original_offset", _int_range(0, 2**63 - 1)),
    H_ERROR_CLASS: ("error_class", _text),
    H_ERROR_MESSAGE: ("error_message", lambda text: text),
    H_FIRST_FAILED_AT: ("first_failed_at", _seconds),
    H_REPLAY_COUNT: ("replay_count", _int_range(0, 1_000_000)),
    H_PROVIDER_PIN: ("provider_pin", _provider),
}
#: Every ``x-*`` header of the design.
DESIGN_HEADERS = tuple(_READERS)


@dataclass(frozen=True)
class Headers:
    """A record's headers, read. A typed field is None when its header is absent or
    unreadable; ``problems`` says which were unreadable and why."""

    attempt: int | None = None
    not_before: float | None = None
    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    first_failed_at: float | None = None
    replay_count: int | None = None
    #: The provider the delivery is pinned to (``x-provider-pin``), None when not pinned.
    provider_pin: str | None = None
    #: One line per unreadable design header: ``x-attempt='x': not a whole number``.
    problems: tuple[str, ...] = ()
    #: The design headers that were unreadable, with their raw values (the last one seen).
    garbled: dict[str, bytes] = field(default_factory=dict)
    #: Every header as text (the last value wins for a repeated name; bytes decoded with
    #: replacement characters): for display, never for decisions.
    text: dict[str, str] = field(default_factory=dict)
    #: Every header as it came, in order.
    raw: tuple[tuple[str, RawValue], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_message(self) -> str:
        """The problems as one sentence for ``x-error-message``."""
        return "unreadable header " + "; ".join(self.problems)


def _items(raw: RawHeaders) -> list[tuple[str, RawValue]]:
    if not raw:
        return []
    items = raw.items() if isinstance(raw, Mapping) else raw
    out: list[tuple[str, RawValue]] = []
    for name, value in items:
        out.append((name if isinstance(name, str) else str(name), value))
    return out


def _as_bytes(value: RawValue) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def _quote(value: bytes) -> str:
    shown = repr(value[:_QUOTE])[1:]  # b'...' -> '...'
    return shown + ("…" if len(value) > _QUOTE else "")


def read_headers(raw: RawHeaders) -> Headers:
    """Read every header of a record (``message.headers()``); never raises."""
    items = _items(raw)
    text: dict[str, str] = {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    garbled: dict[str, bytes] = {}
    seen: dict[str, bytes] = {}
    for name, value in items:
        data = _as_bytes(value)
        text[name] = data.decode("utf-8", "replace")
        reader = _READERS.get(name)
        if reader is None:
            continue
        if name in seen:
            if seen[name] != data and name not in garbled:
                problems.append(f"{name} repeated with different values")
                garbled[name] = data
                values.pop(reader[0], None)
            continue
        seen[name] = data
        attribute, parse = reader
        try:
            if value is None:
                raise ValueError("no value")
            decoded = data.decode("utf-8")
            values[attribute] = parse(decoded.strip() if attribute != "error_message" else decoded)
        except (UnicodeDecodeError, ValueError) as exc:
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            problems.append(f"{name}={_quote(data)}: {reason}")
            garbled[name] = data
    return Headers(**values, problems=tuple(problems), garbled=garbled, text=text, raw=tuple(items))


def header_problems(raw: RawHeaders) -> list[str]:
    """Why the record's design headers cannot be read (empty when they all can)."""
    return list(read_headers(raw).problems)


def headers_text(raw: RawHeaders) -> dict[str, str]:
    """A record's headers as text (the last value wins for a repeated name)."""
    return read_headers(raw).text


def seconds(value: float) -> str:
    """An epoch time as a header value (milliseconds precision)."""
    return f"{value:.3f}"


def write_headers(
    original: RawHeaders, updates: Mapping[str, str | bytes | int | float | None]
) -> list[tuple[str, RawValue]]:
    """``original`` with the headers in ``updates`` written anew (ints as digits, floats as
    epoch seconds, str and bytes as they are; None removes the header). Every occurrence of an
    updated name is dropped first, so a repeated header never survives; other headers are kept
    as they came."""
    out = [(name, value) for name, value in _items(original) if name not in updates]
    for name, value in updates.items():
        if value is None:
            continue
        if isinstance(value, bool):
            raise TypeError(f"{name}: a bool is not a header value")
        encoded: str | bytes
        if isinstance(value, float):
            encoded = seconds(value)
        elif isinstance(value, int):
            encoded = str(value)
        else:
            encoded = value[:MAX_MESSAGE] if name == H_ERROR_MESSAGE else value
        out.append((name, encoded))
    return out


def garbled_name(name: str) -> str:
    """Where an unreadable design header's value is kept: ``x-attempt`` → ``x-garbled-attempt``."""
    return GARBLED_PREFIX + name.removeprefix("x-")
