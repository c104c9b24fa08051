"""Bounded strings: the most an event's ``context`` and ``metadata`` may carry.

Ids have their own bound (:data:`herald.identity.MAX_ID_LENGTH`, 255 characters); this module
bounds the two string maps of a ``herald.Event``, in one place for everyone who checks them:
the ingest API (422 naming the field), the router for events written straight to Kafka
(``record.too_long`` on the events DLQ) and inapp_store for notifications (their metadata).

=====================  =========  ========  ==========  =============================
map                    entries    key       value       keys and values together
=====================  =========  ========  ==========  =============================
``context``            64         128       8,192       65,536
``metadata``           32         128       1,024       8,192
=====================  =========  ========  ==========  =============================

Why these numbers: a context value is one template variable (a title, a link, a comment's
excerpt); 8,192 characters is about 1,300 words, five SMS-length messages' worth, and anything
longer belongs behind a link. A key names a variable or a tag. The total keeps an event (at
most 4 bytes of UTF-8 a character: 256 KB) far below Kafka's default ``message.max.bytes``
(1 MB), also as the recipient's copy stage 1 writes for every recipient. Metadata is carried
onto every notification row (``jsonb``) and returned with every inbox page: trace ids, source
ids, a URL; 1,024 characters hold any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

#: Longest key of ``context`` or ``metadata``.
MAX_KEY_LENGTH: Final = 128


@dataclass(frozen=True)
class MapLimits:
    """The bounds of one string map of an event."""

    #: The field's name, as error messages name it (``context``, ``metadata``).
    name: str
    max_entries: int
    max_key_length: int
    max_value_length: int
    #: Characters of every key and value together.
    max_total_length: int


CONTEXT: Final = MapLimits(
    "context",
    max_entries=64,
    max_key_length=MAX_KEY_LENGTH,
    max_value_length=8_192,
    max_total_length=65_536,
)
METADATA: Final = MapLimits(
    "metadata",
    max_entries=32,
    max_key_length=MAX_KEY_LENGTH,
    max_value_length=1_024,
    max_total_length=8_192,
)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else f"{text[:40]}…")


def check_map(values: Mapping[str, str], limits: MapLimits) -> None:
    """``ValueError`` naming the field, and the key when one is at fault, if ``values`` goes
    past ``limits``; shows only the start of an over-long key."""
    name = limits.name
    if len(values) > limits.max_entries:
        raise ValueError(
            f"{name} has {len(values)} entries; at most {limits.max_entries} are allowed"
        )
    total = 0
    for key, value in values.items():
        if len(key) > limits.max_key_length:
            raise ValueError(
                f"{name} key {_shown(key)} has {len(key)} characters; keys have at most "
                f"{limits.max_key_length}"
            )
        if len(value) > limits.max_value_length:
            raise ValueError(
                f"{name} value of {_shown(key)} has {len(value)} characters; values have at "
                f"most {limits.max_value_length}"
            )
        total += len(key) + len(value)
    if total > limits.max_total_length:
        raise ValueError(
            f"{name} has {total} characters in its keys and values; at most "
            f"{limits.max_total_length} in all"
        )
