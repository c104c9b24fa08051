"""Pure validation and normalisation of what clients send to the ingest API.

Each check is a plain function that returns the normalised value or raises ``ValueError`` with
a message a person can act on; the ``Annotated`` types below attach them to pydantic fields, so
a bad value becomes a 422 problem naming the field. No I/O here: the unit tests call these
directly.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, time
from functools import lru_cache
from typing import Annotated, Any, Literal, get_args
from zoneinfo import available_timezones

from pydantic import AfterValidator, Field, WithJsonSchema

from herald import bounds, templates
from herald.auth import check_user_id as check_user_id  # the shared rule, re-exported
from herald.identity import MAX_ID_LENGTH

#: Event type codes: lower case, starting with a letter, 2 to 64 characters.
EVENT_TYPE_CODE = re.compile(r"[a-z][a-z0-9_.-]{1,63}")
#: E.164: a plus sign, then at most 15 digits, the first not zero (as the database's check).
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Characters people write inside phone numbers for readability; dropped before checking.
_PHONE_SEPARATORS = re.compile(r"[\s().-]")
# An email address's shape (RFC 5321 dot-atom local part, host name with a top-level domain).
# Deliverability is the provider's business; this catches typos and junk early.
_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}))"
)
#: BCP 47 language tags, loosely: a language, then subtags (``en``, ``fr-CA``, ``zh-Hant-TW``).
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_HOUR_MINUTE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")

#: Delivery channels an event type may use.
Channel = Literal["inapp", "email", "sms", "webhook", "slack"]
CHANNEL_NAMES: tuple[str, ...] = get_args(Channel)


def check_event_type_code(code: str) -> str:
    """An event type code: ``^[a-z][a-z0-9_.-]{1,63}$`` (e.g. ``comment.created``)."""
    if not EVENT_TYPE_CODE.fullmatch(code):
        raise ValueError(
            f"{code!r} is not a valid event type code: use 2 to 64 lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter (e.g. comment.created)"
        )
    return code


def normalize_phone(phone: str) -> str:
    """A phone number in E.164 form; spaces, dots, dashes and parentheses are dropped first."""
    compact = _PHONE_SEPARATORS.sub("", phone)
    if not E164.fullmatch(compact):
        raise ValueError(
            f"{phone!r} is not an E.164 phone number: write '+', the country code and the "
            "number, at most 15 digits in all (e.g. +14155550123)"
        )
    return compact


def normalize_email(email: str) -> str:
    """An email address with its domain in lower case; ``ValueError`` if it has no valid shape."""
    candidate = email.strip()
    match = _EMAIL.fullmatch(candidate)
    if match is None or len(candidate) > 254 or len(match["local"]) > 64:
        raise ValueError(f"{email!r} is not a valid email address (expected name@example.com)")
    return f"{match['local']}@{match['domain'].lower()}"


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    """An IANA time zone name known to this system's zoneinfo database (``Europe/Paris``)."""
    if name not in _time_zones():
        raise ValueError(
            f"{name!r} is not a known IANA time zone name (e.g. UTC, Europe/Paris, "
            "America/New_York)"
        )
    return name


def normalize_locale(locale: str) -> str:
    """A BCP 47 language tag (``en``, ``fr-CA``); ``fr_CA`` is accepted as ``fr-CA``."""
    tag = locale.strip().replace("_", "-")
    if not _LOCALE.fullmatch(tag) or len(tag) > 35:
        raise ValueError(f"{locale!r} is not a language tag (e.g. en, en-GB, fr-CA)")
    return tag


def parse_hour_minute(value: str) -> time:
    """``HH:MM`` (24-hour clock) as a :class:`datetime.time`."""
    match = _HOUR_MINUTE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a time of day as HH:MM (24-hour clock, e.g. 22:30)")
    return time(int(match[1]), int(match[2]))


def format_hour_minute(value: time) -> str:
    """A time of day as ``HH:MM``."""
    return value.strftime("%H:%M")


def _check_hour_minute(value: str) -> str:
    return format_hour_minute(parse_hour_minute(value))


def coerce_context(
    values: Mapping[str, Any], limits: bounds.MapLimits = bounds.CONTEXT
) -> dict[str, str]:
    """Template variables as strings: numbers and booleans as JSON writes them (``3``,
    ``2.5``, ``true``), null as an empty string. Lists and objects are refused: a template
    could only print them, and a producer sending one has usually made a mistake. The result
    must stay within ``limits`` (:mod:`herald.bounds`: entries, key and value lengths).
    """
    out: dict[str, str] = {}
    for key, value in values.items():
        if not key:
            raise ValueError("keys must not be empty")
        if isinstance(value, str):
            out[key] = value
        elif value is None:
            out[key] = ""
        elif isinstance(value, bool | int | float):
            out[key] = json.dumps(value)
        else:
            raise ValueError(
                f"value of {key!r} is a {_json_type(value)}; values must be strings, numbers, "
                "booleans or null"
            )
    bounds.check_map(out, limits)
    return out


def coerce_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """An event's metadata: :func:`coerce_context` under the metadata limits."""
    return coerce_context(values, bounds.METADATA)


def _json_type(value: object) -> str:
    if isinstance(value, Mapping):
        return "JSON object"
    if isinstance(value, list | tuple):
        return "JSON array"
    return type(value).__name__


def check_idempotency_key(key: str) -> str:
    """An ``Idempotency-Key`` header value: 1 to 255 visible characters."""
    stripped = key.strip()
    if not 1 <= len(stripped) <= MAX_ID_LENGTH or not stripped.isprintable():
        raise ValueError(f"Idempotency-Key must be 1 to {MAX_ID_LENGTH} visible characters")
    return stripped


def normalize_event_id(event_id: str) -> str:
    """An event id as a UUID in canonical text form (lower case, hyphenated)."""
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        raise ValueError(
            f"{event_id!r} is not a UUID; leave event_id out to have one generated, or send "
            "an Idempotency-Key header"
        ) from None


def as_utc(moment: datetime) -> datetime:
    """A timestamp in UTC; one without a time zone is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def check_storable_text(text: str) -> str:
    """Text PostgreSQL can store: without NUL characters (``\\u0000``), which neither its
    ``text`` nor its ``jsonb`` can hold."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return text


def check_template_source(source: str) -> str:
    """A Jinja2 template that parses (variables are only checked when rendering) and can be
    stored."""
    templates.validate(check_storable_text(source))
    return source


def unique_channels(channels: list[str]) -> list[str]:
    """Channels without repeats, in the order given."""
    return list(dict.fromkeys(channels))


def _string_map_schema(limits: bounds.MapLimits) -> dict[str, Any]:
    """The JSON Schema of a string map within ``limits`` (its total length is checked only
    by the validator)."""
    return {
        "type": "object",
        "maxProperties": limits.max_entries,
        "propertyNames": {"minLength": 1, "maxLength": limits.max_key_length},
        "additionalProperties": {
            "type": ["string", "number", "boolean", "null"],
            "maxLength": limits.max_value_length,
        },
    }


EventTypeCode = Annotated[
    str,
    Field(examples=["comment.created"], pattern=EVENT_TYPE_CODE.pattern),
    AfterValidator(check_event_type_code),
]
UserId = Annotated[str, Field(examples=["user-42"]), AfterValidator(check_user_id)]
Phone = Annotated[str, Field(examples=["+14155550123"]), AfterValidator(normalize_phone)]
Email = Annotated[str, Field(examples=["ada@example.com"]), AfterValidator(normalize_email)]
TimeZoneName = Annotated[str, Field(examples=["Europe/London"]), AfterValidator(check_timezone)]
Locale = Annotated[str, Field(examples=["en-GB"]), AfterValidator(normalize_locale)]
HourMinute = Annotated[str, Field(examples=["22:00"]), AfterValidator(_check_hour_minute)]
EventId = Annotated[
    str,
    Field(examples=["0f8fad5b-d9cb-469f-a165-70867728950e"]),
    AfterValidator(normalize_event_id),
]
TemplateSource = Annotated[str, AfterValidator(check_template_source)]
#: Free text stored in PostgreSQL (names, descriptions).
Text = Annotated[str, AfterValidator(check_storable_text)]
#: Template variables: string keys, scalar values turned into strings (herald.bounds.CONTEXT).
Context = Annotated[
    dict[str, Any],
    AfterValidator(coerce_context),
    WithJsonSchema(_string_map_schema(bounds.CONTEXT)),
]
#: An event's metadata: as :data:`Context`, within herald.bounds.METADATA.
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(coerce_metadata),
    WithJsonSchema(_string_map_schema(bounds.METADATA)),
]
