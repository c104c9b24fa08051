"""The channel-agnostic core of a sender service (email_sender, sms_sender).

A sender consumes its channel's deliveries topic and that topic's retry tiers with
:class:`herald.streaming.BatchLoop`. For every batch, :class:`SenderHandler` decides what
happens to each ``herald.DeliveryRequest``:

- undecodable or malformed → the channel's DLQ (never stops the stream);
- already sent (the send journal, one query per batch, plus this process's memory of what it
  sent recently) → skipped, never sent twice;
- begun but never confirmed by a sender that died mid-send (journal state ``sending``) →
  sent again only where the provider de-duplicates (``resend_uncertain``, the SMS provider's
  idempotency key); otherwise parked on the DLQ as ``sender.outcome_unknown`` for an operator;
- otherwise the delivery is claimed in the journal, then the channel's ``send(request)`` is
  called (up to ``concurrency`` sends in flight at once, within the provider's rate limit:
  :mod:`herald.sender.pool`):

  - it returns the provider's message id → a ``sent`` status;
  - it raises :class:`~herald.errors.RetryableError` → the next retry tier and a ``retrying``
    status, or the DLQ and a ``dead`` status once the tiers are used up;
  - it raises :class:`~herald.errors.PermanentError` → the DLQ and a ``failed`` status.

Claims are taken in one statement for each group of records about to be sent, and the sends
that complete together are confirmed in one; the handler returns only once every send of the
batch has a known outcome and its confirmation is written. The handler only decides and
sends; :class:`~herald.streaming.BatchLoop` produces what it returns and commits the offsets
afterwards. Records on a retry tier wait for their ``x-not-before`` in the loop (their
partition is paused), not here.

A provider that fails every request must not push the whole topic through the retry tiers
into the DLQ in seconds: after ``breaker_failures`` transient failures in a row the
:class:`Breaker` opens, the rest of the batch is held (rewound and paused, not tried), and the
sender backs off — doubling up to a ceiling — trying one record at a time until one succeeds.
Every transient failure in a row also halves the number of sends in flight.
``herald_sender_circuit_open`` is 1 while it waits; alert on it.

A channel with several providers (``SMTP_FALLBACK_URLS``, ``SMS_API_FALLBACK_URLS``) sends
through a :class:`~herald.sender.providers.ProviderChain`: each provider has its own breaker,
sends fall over to the next provider while the first fails, and return once a probe succeeds;
the handler's breaker then opens only when every provider fails. A send whose outcome is
unknown (a timeout) pins the delivery to its provider: the retry-tier and dead-letter records
carry ``x-provider-pin``, and the chain sends such a record through that provider only, after
a restart as before it.

Modules: :mod:`~herald.sender.handler` (the decisions), :mod:`~herald.sender.journal` (the
send journal), :mod:`~herald.sender.breaker`, :mod:`~herald.sender.pool` (concurrent sends
and the rate limit), :mod:`~herald.sender.providers` (provider failover),
:mod:`~herald.sender.service` (settings and the main loop).
"""

from herald.sender.breaker import Breaker
from herald.sender.handler import (
    CIRCUIT_OPEN,
    CIRCUIT_TRIPS,
    CLAIMS_LOST,
    DUPLICATES_SKIPPED,
    OUTCOME_UNKNOWN,
    REQUEST_SCHEMA,
    RecentlySent,
    SenderHandler,
    SenderRoutes,
    attempt_of,
    decode_request,
    replay_count_of,
)
from herald.sender.journal import (
    DONE_STATUSES,
    JOURNAL_RETRIES,
    Claim,
    JournalEntry,
    JournalStopped,
    PostgresJournal,
    SendJournal,
)
from herald.sender.pool import SendFunction, SendPool, Sent, TokenBucket
from herald.sender.providers import (
    PIN_UNKNOWN,
    ProviderChain,
    provider_names,
    resend_uncertain_safe,
    with_pin,
)
from herald.sender.service import SenderSettings, run_sender, serve_channel

__all__ = [
    "CIRCUIT_OPEN",
    "CIRCUIT_TRIPS",
    "CLAIMS_LOST",
    "DONE_STATUSES",
    "DUPLICATES_SKIPPED",
    "JOURNAL_RETRIES",
    "OUTCOME_UNKNOWN",
    "PIN_UNKNOWN",
    "REQUEST_SCHEMA",
    "Breaker",
    "Claim",
    "JournalEntry",
    "JournalStopped",
    "PostgresJournal",
    "ProviderChain",
    "RecentlySent",
    "SendFunction",
    "SendJournal",
    "SendPool",
    "SenderHandler",
    "SenderRoutes",
    "SenderSettings",
    "Sent",
    "TokenBucket",
    "attempt_of",
    "decode_request",
    "provider_names",
    "replay_count_of",
    "resend_uncertain_safe",
    "run_sender",
    "serve_channel",
    "with_pin",
]
