"""Provider failover: an ordered list of providers for one channel, each with its own breaker.

A :class:`ProviderChain` is the channel's send function (:class:`~herald.sender.pool.
SendFunction`) over several providers (``sms-a``, ``sms-b``, ... / ``smtp-a``, ``smtp-b``, ...),
tried in their configured order:

- A send goes to the first provider whose breaker is closed. When that provider fails with a
  transient error that certainly sent nothing (an error answer: HTTP 5xx/429, an SMTP 4xx
  reply, a refused connection), the same delivery falls through to the next provider.
- ``failures`` such failures in a row open the provider's breaker: sends skip it for its
  back-off (``backoff`` seconds, doubling after each failed probe up to ``backoff_max``).
  Once the back-off has passed, one send (the probe) tries it again while the others keep
  using the next provider; a probe that succeeds takes the provider back, and traffic returns
  to it. A probe that fails falls through like any other failure.
- When every provider's breaker is open, the one whose back-off ends first is tried anyway:
  the chain never refuses a send by itself, so the sender's own breaker
  (:class:`~herald.sender.breaker.Breaker`, in :class:`~herald.sender.handler.SenderHandler`)
  opens only when every provider fails.
- A failure whose outcome is unknown (a timeout or a connection lost after the request went
  out: the provider may have accepted the message) never falls through: sending the same
  delivery to another provider could deliver it twice, since an idempotency key is only
  honoured by the provider that received it. The delivery is *pinned* to that provider and its
  later attempts go there only, where the idempotency key (SMS) makes a resend safe. The pin
  is kept twice: in this process's memory (:class:`_Pins`, the fast path) and, durably, on the
  record: the handler writes ``x-provider-pin`` (:data:`herald.headers.H_PROVIDER_PIN`) on the
  retry-tier and dead-letter records of such a send, every later hop and ``herald dlq replay``
  keep it, and the handler hands the pin of a record it sends to the chain with the request
  (:func:`with_pin`). A pin from the record wins over memory, so the pin survives a sender
  restart and a retry tier's partition moving to another replica.
- A pin naming a provider this chain does not have (the configuration changed since: a
  provider removed) sends nothing: the delivery may already be at that provider, and any
  other one could deliver it a second time. It fails as a transient error whose outcome is
  unknown (:data:`PIN_UNKNOWN`, ``sender.pin_unknown``), so it walks the retry tiers, keeping
  its pin (a replica that still has the provider, or the configuration restored, sends it
  there), and then rests on the DLQ as ``dead`` for an operator. It counts toward no breaker.
  Provider names are positions (``sms-b`` is the second URL): removing or reordering
  providers while pinned deliveries wait in the tiers re-points their pins.
- A permanent error (an invalid number, a refused address) is returned at once, without
  trying the next provider.

The send journal's claim stays per delivery, not per provider: whichever provider sends it,
a delivery is claimed once and confirmed once. See :func:`resend_uncertain_safe` for what
this means for a delivery a dead sender left unconfirmed.

A successful send returns :class:`~herald.sender.pool.Sent` (the provider's message id and
the provider's name), which goes into the status event's ``provider``; an exception carries
the last provider tried in :attr:`~herald.errors.ProcessingError.provider`.
"""

from __future__ import annotations

import logging
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from herald.errors import ProcessingError, RetryableError
from herald.sender.breaker import Breaker
from herald.sender.pool import SendFunction, Sent, as_sent

log = logging.getLogger(__name__)

PROVIDER_ACTIVE = Gauge(
    "herald_sender_provider_active",
    "1 for the provider new sends go to (the first whose breaker is closed), 0 for the others",
    ["channel", "provider"],
)
PROVIDER_SENT = Counter(
    "herald_sender_provider_sent_total",
    "Deliveries a provider accepted",
    ["channel", "provider"],
)
PROVIDER_FAILURES = Counter(
    "herald_sender_provider_failures_total",
    "Transient failures of one provider (each may have fallen through to the next provider)",
    ["channel", "provider"],
)
PROVIDER_TRIPS = Counter(
    "herald_sender_provider_trips_total",
    "Times a provider's breaker opened and sends moved to the next provider",
    ["channel", "provider"],
)

#: Classifies a transient error: True when the provider may have accepted the message.
Uncertain = Callable[[RetryableError], bool]

#: The error class of a delivery pinned (``x-provider-pin``) to a provider the chain does not
#: have: not sent anywhere (see the module docstring).
PIN_UNKNOWN = "sender.pin_unknown"
#: The private key under which a request handed to a chain carries the record's pin
#: (:func:`with_pin`); not an Avro field, and removed before a provider's send sees it.
PIN_KEY = "_provider_pin"


def with_pin(request: Mapping[str, Any], provider: str) -> dict[str, Any]:
    """A copy of ``request`` that a :class:`ProviderChain` sends through ``provider`` only
    (the record's ``x-provider-pin``). A plain send function sees one key more and ignores it."""
    return {**request, PIN_KEY: provider}


def provider_names(prefix: str, count: int) -> list[str]:
    """``prefix-a``, ``prefix-b``, ... for ``count`` providers (``sms-a``, ``sms-b``)."""
    if not 1 <= count <= len(string.ascii_lowercase):
        raise ValueError(f"between 1 and 26 providers, not {count}")
    return [f"{prefix}-{letter}" for letter in string.ascii_lowercase[:count]]


def resend_uncertain_safe(provider_count: int, idempotent: bool) -> bool:
    """Whether a delivery a dead sender left unconfirmed (journal state ``sending``) may be
    sent again automatically.

    Only with an idempotent provider (the SMS provider's idempotency key) and only when
    there is one provider: with several, the dead sender may have handed it to any of them
    (after a failover, or while falling through), and a key is honoured only by the provider
    that received it. Such deliveries are parked on the DLQ as ``sender.outcome_unknown``
    for an operator, exactly like email.
    """
    return idempotent and provider_count == 1


def never_uncertain(error: RetryableError) -> bool:
    return False


@dataclass
class _Provider:
    name: str
    send: SendFunction
    breaker: Breaker
    #: A probe is in flight (the breaker's back-off has passed; only one send tries it).
    probing: bool = False

    @property
    def tripped(self) -> bool:
        return self.breaker.current_backoff > 0


@dataclass
class _Pins:
    """Deliveries whose last send had an unknown outcome, and the provider it went to.

    The fast path, in this process's memory: the durable pin is the record's
    ``x-provider-pin``, which the chain honours even when this is empty (a restart)."""

    capacity: int = 100_000
    by_delivery: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def get(self, delivery_id: str) -> str | None:
        return self.by_delivery.get(delivery_id)

    def pin(self, delivery_id: str, provider: str) -> None:
        self.by_delivery[delivery_id] = provider
        self.by_delivery.move_to_end(delivery_id)
        while len(self.by_delivery) > self.capacity:
            self.by_delivery.popitem(last=False)

    def unpin(self, delivery_id: str) -> None:
        self.by_delivery.pop(delivery_id, None)


class ProviderChain:
    """A channel's send function over an ordered list of providers (see the module docstring).

    ``providers``: ``(name, send)`` pairs, primary first; each ``send`` returns the
    provider's message id and raises RetryableError/PermanentError like any channel's send.
    ``uncertain`` tells the transient errors after which the provider may have the message
    (no fall-through, the delivery is pinned to it). Safe to call from several threads.
    """

    def __init__(
        self,
        channel: str,
        providers: Sequence[tuple[str, SendFunction]],
        *,
        failures: int = 5,
        backoff: float = 5.0,
        backoff_max: float = 60.0,
        uncertain: Uncertain = never_uncertain,
        clock: Callable[[], float] = time.monotonic,
        pins_capacity: int = 100_000,
    ) -> None:
        if not providers:
            raise ValueError("a provider chain needs at least one provider")
        names = [name for name, _ in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be distinct: {names}")
        self.channel = channel
        self.providers = [
            _Provider(name, send, Breaker(max(failures, 1), backoff, backoff_max))
            for name, send in providers
        ]
        self.uncertain = uncertain
        self.clock = clock
        self.pins = _Pins(pins_capacity)
        self._by_name = {provider.name: provider for provider in self.providers}
        self._lock = threading.Lock()
        for provider in self.providers:
            PROVIDER_SENT.labels(channel, provider.name)
            PROVIDER_FAILURES.labels(channel, provider.name)
            PROVIDER_TRIPS.labels(channel, provider.name)
        self._publish_active()

    @property
    def names(self) -> list[str]:
        return [provider.name for provider in self.providers]

    def __len__(self) -> int:
        return len(self.providers)

    def active(self) -> str:
        """The provider new sends go to now."""
        with self._lock:
            return self._active().name

    def __call__(self, request: Mapping[str, Any]) -> Sent:
        pinned = request.get(PIN_KEY)
        if pinned is not None:
            request = {key: value for key, value in request.items() if key != PIN_KEY}
        delivery_id = str(request["delivery_id"])
        if pinned is None:
            with self._lock:
                pinned = self.pins.get(delivery_id)
        if pinned is not None:
            only = self._by_name.get(str(pinned))
            if only is None:
                raise self._unknown_pin(str(pinned))
            return self._send(only, request, delivery_id, taken=False)
        errors: list[tuple[str, RetryableError]] = []
        tried: set[str] = set()
        while True:
            with self._lock:
                provider, probe = self._next(tried)
            if provider is None:
                break
            tried.add(provider.name)
            try:
                return self._send(provider, request, delivery_id, taken=probe)
            except RetryableError as exc:
                if exc.uncertain_outcome:
                    raise
                errors.append((provider.name, exc))
        if len(errors) == 1:
            raise errors[0][1]
        last_name, last = errors[-1]
        summary = "; ".join(f"{name}: {exc.message}" for name, exc in errors)
        error = RetryableError(f"every provider failed: {summary}", error_class=last.error_class)
        error.provider = last_name
        raise error from last

    def _unknown_pin(self, pinned: str) -> RetryableError:
        error = RetryableError(
            f"pinned to provider {pinned!r}, where an earlier attempt's outcome is unknown, "
            f"and this sender has no such provider ({', '.join(self.names)}): not sent, since "
            "another provider could deliver it a second time. Restore that provider's "
            "configuration, then replay it",
            error_class=PIN_UNKNOWN,
        )
        error.uncertain_outcome = True
        return error

    # -- one provider ----------------------------------------------------------------------
    def _send(
        self, provider: _Provider, request: Mapping[str, Any], delivery_id: str, *, taken: bool
    ) -> Sent:
        """Send through ``provider``; update its breaker; annotate a failure with its name.

        ``taken``: this call holds the provider's probe."""
        try:
            message_id = as_sent(provider.send(request)).message_id
        except RetryableError as exc:
            exc.provider = provider.name
            exc.uncertain_outcome = self.uncertain(exc)
            PROVIDER_FAILURES.labels(self.channel, provider.name).inc()
            with self._lock:
                if exc.uncertain_outcome:
                    self.pins.pin(delivery_id, provider.name)
                self._failed(provider, exc, taken)
            raise
        except BaseException as exc:
            # A permanent refusal (or a bug): not the provider's fault; its breaker is left as
            # it is, and a probe it ended makes room for the next one.
            if isinstance(exc, ProcessingError):
                exc.provider = provider.name
            if taken:
                with self._lock:
                    provider.probing = False
            raise
        PROVIDER_SENT.labels(self.channel, provider.name).inc()
        with self._lock:
            self.pins.unpin(delivery_id)
            if taken:
                provider.probing = False
            if provider.breaker.success():
                log.info(
                    "provider %s answering again; sends return to it",
                    provider.name,
                    extra={"channel": self.channel, "provider": provider.name},
                )
            self._publish_active()
        return Sent(message_id, provider.name)

    # -- state (under the lock) ------------------------------------------------------------
    def _next(self, tried: set[str]) -> tuple[_Provider | None, bool]:
        """The next provider to try and whether this send is its probe; (None, False) when
        every available one was tried. With every breaker open and nothing tried yet, the
        one whose back-off ends first."""
        now = self.clock()
        for provider in self.providers:
            if provider.name in tried or provider.breaker.is_open(now):
                continue
            if provider.tripped:
                if provider.probing:
                    continue  # another send is probing it
                provider.probing = True
                return provider, True
            return provider, False
        if tried:
            return None, False
        return min(self.providers, key=lambda p: p.breaker.open_until), False

    def _failed(self, provider: _Provider, error: RetryableError, taken: bool) -> None:
        if taken:
            provider.probing = False
        elif provider.tripped:
            # A send begun before the breaker opened (or a last resort): only a probe's
            # failure lengthens the back-off.
            return
        if not provider.breaker.failure(self.clock()):
            return
        PROVIDER_TRIPS.labels(self.channel, provider.name).inc()
        self._publish_active()
        log.error(
            "provider %s: %d transient failures in a row; sending through %s for %g s",
            provider.name,
            provider.breaker.consecutive,
            self._active().name,
            provider.breaker.current_backoff,
            extra={
                "channel": self.channel,
                "provider": provider.name,
                "error_class": error.error_class,
                "error": error.message,
            },
        )

    def _active(self) -> _Provider:
        for provider in self.providers:
            if not provider.tripped:
                return provider
        return min(self.providers, key=lambda p: p.breaker.open_until)

    def _publish_active(self) -> None:
        active = self._active()
        for provider in self.providers:
            PROVIDER_ACTIVE.labels(self.channel, provider.name).set(int(provider is active))
