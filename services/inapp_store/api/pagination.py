"""Opaque inbox cursors: the position after the last notification of a page.

The inbox is ordered by ``(created_at DESC, id DESC)`` (the ``ix_notification_inbox`` index);
the next page is the rows strictly after the cursor's ``(created_at, id)`` in that order. A
keyset, not an offset, so pages neither skip nor repeat rows when notifications arrive (or are
read) between two page fetches: ``id`` breaks ties between equal timestamps, and the position
is a value, not a count of rows before it.

Clients treat the cursor as opaque. It is ``base64url("1:<epoch microseconds>:<uuid hex>")``:
microseconds keep PostgreSQL's timestamp precision exactly; the leading version lets the
format change without misreading old cursors.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

_VERSION: Final = "1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Longest cursor accepted (a valid one is about 70 characters).
MAX_CURSOR_LENGTH: Final = 200


class InvalidCursorError(ValueError):
    """The cursor was not made by this API (or was altered)."""


@dataclass(frozen=True)
class Cursor:
    """A position in an inbox: the ``(created_at, id)`` of the last row a page returned."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        """The opaque form handed to clients."""
        micros = (self.created_at - _EPOCH) // timedelta(microseconds=1)
        raw = f"{_VERSION}:{micros}:{self.id.hex}".encode("ascii")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The position a cursor names; :class:`InvalidCursorError` if it is not one."""
        if not text or len(text) > MAX_CURSOR_LENGTH:
            raise InvalidCursorError("the cursor is empty or too long")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
            version, micros, hex_id = raw.split(":")
            if version != _VERSION or not micros.lstrip("-").isdigit():
                raise ValueError(raw)
            created_at = _EPOCH + timedelta(microseconds=int(micros))
            return cls(created_at, uuid.UUID(hex=hex_id))
        except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise InvalidCursorError(
                "the cursor is not one this API returned; use next_cursor as given"
            ) from exc
