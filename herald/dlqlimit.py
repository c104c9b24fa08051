"""A DLQ-flood guard: tell bad data from a bad deploy (like arroyo's ``DlqLimit``).

A few records on the dead-letter topic are bad data. When most records go there, or a long
run in a row does, the cause is more likely a bad deploy (a template, a schema, a provider
credential) than the data, and draining the topic into the DLQ would turn one bug into
thousands of dead letters to replay. :class:`DlqLimit` is fed each record's outcome in order
and says when the consumer must stop: the batch loop then holds the batch's dead letters
(rewinds their partitions and pauses them for a back-off) instead of producing them, sets
``herald_dlq_guard_tripped{service}`` to 1 and logs an error; it tries again after the
back-off, and a fixed deploy (a restart) starts with a fresh guard.

It trips when, counting the record about to go to the DLQ:

- more than ``max_consecutive`` records in a row went to the DLQ, or
- at least ``min_seen`` of the last ``window`` records were seen and more than
  ``max_invalid_ratio`` of them went to the DLQ.

Either rule is off when its limit is 0.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GUARD_TRIPPED = Gauge(
    "herald_dlq_guard_tripped",
    "1 while the service holds its dead letters: too many records in a row, or too large a "
    "share, would have gone to the DLQ (a bad deploy, not bad data); see the service's log",
    ["service"],
)
GUARD_TRIPS = Counter(
    "herald_dlq_guard_trips_total",
    "Batches whose dead letters the DLQ-flood guard held back instead of producing",
    ["service"],
)


@dataclass
class DlqLimit:
    """The guard's state; see the module docstring. Pure: no clock, no I/O."""

    max_invalid_ratio: float = 0.9
    max_consecutive: int = 50
    window: int = 1000
    min_seen: int = 100
    consecutive: int = 0
    recent: deque[bool] = field(default_factory=deque)  # True: went to the DLQ
    invalid_in_window: int = 0

    def _push(self, invalid: bool) -> None:
        self.recent.append(invalid)
        self.invalid_in_window += invalid
        if len(self.recent) > self.window:
            self.invalid_in_window -= self.recent.popleft()
        self.consecutive = self.consecutive + 1 if invalid else 0

    def would_trip(self) -> str | None:
        """Why one more record to the DLQ now would exceed the limit (None: it would not)."""
        consecutive = self.consecutive + 1
        if self.max_consecutive and consecutive > self.max_consecutive:
            return f"{consecutive} records in a row to the DLQ (limit {self.max_consecutive})"
        seen = min(len(self.recent) + 1, self.window) if self.window else 0
        invalid = self.invalid_in_window + 1
        if self.window and len(self.recent) >= self.window:
            invalid -= self.recent[0]  # the oldest leaves the window
        if (
            self.max_invalid_ratio
            and seen >= self.min_seen
            and invalid / seen > self.max_invalid_ratio
        ):
            return (
                f"{invalid} of the last {seen} records to the DLQ"
                f" (limit {self.max_invalid_ratio:.0%})"
            )
        return None

    def check(self, outcomes: Iterable[bool]) -> tuple[int | None, str | None]:
        """Feed a batch's outcomes in order (True: to the DLQ). Returns ``(index, reason)`` of
        the first outcome that trips the guard, or ``(None, None)``. Outcomes before that index
        are counted; it and later ones are not (the loop holds them and they come again)."""
        for index, invalid in enumerate(outcomes):
            if invalid:
                reason = self.would_trip()
                if reason is not None:
                    return index, reason
            self._push(invalid)
        return None, None


class DlqLimitSettings(BaseSettings):
    """The guard's limits (environment ``HERALD_DLQ_GUARD_*``, one set for every service)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_DLQ_GUARD_", extra="ignore")

    #: Trip when more than this many records in a row go to the DLQ; 0: never.
    max_consecutive: int = Field(default=50, ge=0)
    #: Trip when more than this share of the last ``window`` records go to the DLQ; 0: never.
    max_invalid_ratio: float = Field(default=0.9, ge=0, le=1)
    #: How many recent records the share is taken over.
    window: int = Field(default=1000, ge=1, le=1_000_000)
    #: The share counts only once this many records were seen.
    min_seen: int = Field(default=100, ge=1)
    #: How long a tripped guard holds the dead letters before the loop tries them again.
    backoff_seconds: float = Field(default=30.0, gt=0, le=3600)

    def limit(self) -> DlqLimit:
        return DlqLimit(
            max_invalid_ratio=self.max_invalid_ratio,
            max_consecutive=self.max_consecutive,
            window=self.window,
            min_seen=min(self.min_seen, self.window),
        )
