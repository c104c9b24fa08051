"""The circuit breaker of a sender: stop trying a provider that fails every request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Breaker:
    """Consecutive transient failures open it; it then holds records for a back-off that
    doubles on every failed probe (up to ``backoff_max``) and closes on the first success.

    ``failures=0`` disables it.
    """

    failures: int = 20
    backoff: float = 5.0
    backoff_max: float = 300.0
    consecutive: int = 0
    open_until: float = 0.0
    current_backoff: float = 0.0

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def success(self) -> bool:
        """Record a success; True when this closed a tripped breaker."""
        tripped = self.current_backoff > 0
        self.consecutive = 0
        self.current_backoff = 0.0
        self.open_until = 0.0
        return tripped

    def failure(self, now: float) -> bool:
        """Record a transient failure; True when the breaker (re)opens because of it."""
        self.consecutive += 1
        if not self.failures or self.consecutive < self.failures:
            return False
        if self.current_backoff:
            self.current_backoff = min(self.current_backoff * 2, self.backoff_max)
        else:
            self.current_backoff = min(self.backoff, self.backoff_max)
        self.open_until = now + self.current_backoff
        return True
