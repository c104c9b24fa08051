"""SMS bodies and numbers: pure functions, no network.

An SMS travels in 140-byte segments. A body written only in the GSM 03.38 alphabet uses
7-bit characters: 160 fit one segment, 153 each segment of a longer (concatenated) message;
characters of the extension table (``€ [ ] { } ^ ~ | \\``) take two. Any other character makes
the whole body UCS-2 (UTF-16): 70 code units in one segment, 67 when concatenated, and
characters outside the BMP (most emoji) take two. A character is never split across segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from herald.errors import PermanentError

#: E.164: a plus sign, then up to 15 digits, the first not zero (as the database checks).
E164 = re.compile(r"\+[1-9][0-9]{1,14}")

GSM7 = "GSM-7"
UCS2 = "UCS-2"
GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_LIMITS = {GSM7: (GSM7_SINGLE, GSM7_MULTI), UCS2: (UCS2_SINGLE, UCS2_MULTI)}
# The ellipsis must not change the encoding: "…" is not in the GSM 03.38 alphabet.
_ELLIPSIS = {GSM7: "...", UCS2: "…"}


def validate_e164(number: str) -> str:
    """``number`` when it is an E.164 phone number; PermanentError if not."""
    if not E164.fullmatch(number):
        raise PermanentError(
            f"not an E.164 phone number: {number!r}", error_class="sms.invalid_number"
        )
    return number


def encoding_of(text: str) -> str:
    """``GSM-7`` when every character is in the GSM 03.38 alphabet, else ``UCS-2``."""
    gsm = _GSM7_BASIC | _GSM7_EXTENSION
    return GSM7 if all(ch in gsm for ch in text) else UCS2


def _units(ch: str, encoding: str) -> int:
    if encoding == GSM7:
        return 2 if ch in _GSM7_EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1  # a UTF-16 surrogate pair


def split_segments(text: str) -> list[str]:
    """The segments ``text`` is sent in (one segment when it fits a single message)."""
    encoding = encoding_of(text)
    single, multi = _LIMITS[encoding]
    if sum(_units(ch, encoding) for ch in text) <= single:
        return [text]
    segments: list[str] = []
    current: list[str] = []
    used = 0
    for ch in text:
        units = _units(ch, encoding)
        if used + units > multi:
            segments.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += units
    segments.append("".join(current))
    return segments


def count_segments(text: str) -> int:
    """How many segments ``text`` takes."""
    return len(split_segments(text))


@dataclass(frozen=True)
class SmsBody:
    """A body ready to send: its text, encoding, segment count, and whether it was cut."""

    text: str
    encoding: str
    segments: int
    truncated: bool


def fit_body(text: str, max_segments: int) -> SmsBody:
    """``text`` cut to at most ``max_segments`` segments, ending in an ellipsis if cut.

    An empty body is a PermanentError: there is nothing to send.
    """
    if not text.strip():
        raise PermanentError("empty SMS body", error_class="sms.empty_body")
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    encoding = encoding_of(text)
    segments = count_segments(text)
    if segments <= max_segments:
        return SmsBody(text, encoding, segments, truncated=False)
    ellipsis = _ELLIPSIS[encoding]
    single, multi = _LIMITS[encoding]
    capacity = single if max_segments == 1 else multi * max_segments
    # Start from the most that could fit, then shorten until it really does (extension
    # characters and unsplittable pairs make the exact cut depend on the text).
    keep = min(len(text), capacity)
    while keep > 0:
        candidate = text[:keep].rstrip() + ellipsis
        if count_segments(candidate) <= max_segments:
            return SmsBody(
                candidate, encoding_of(candidate), count_segments(candidate), truncated=True
            )
        keep -= 1
    return SmsBody(ellipsis, encoding, 1, truncated=True)
