"""Sending many deliveries at once, within the provider's rate limit.

:class:`SendPool` runs a channel's blocking ``send`` on up to ``concurrency`` threads (the
provider answers in 50-300 ms; the GIL is released while a thread waits on its socket), and
:class:`TokenBucket` spaces the sends so that all of them together stay within the
provider's rate limit. The pool only sends: claims, confirmations and every decision stay on
the batch thread (:class:`herald.sender.handler.SenderHandler`), which hands sends in with
:meth:`SendPool.submit` and takes their :class:`Outcome` back with :meth:`SendPool.completed`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from prometheus_client import Counter, Gauge, Histogram

RATE_LIMITED = Counter(
    "herald_sender_rate_limited_seconds_total",
    "Seconds sends waited for the provider's rate limit (summed over concurrent sends)",
    ["channel"],
)
RATE_LIMIT = Gauge(
    "herald_sender_rate_limit_per_second",
    "The configured provider rate limit (sends per second; 0: unlimited)",
    ["channel"],
)
IN_FLIGHT = Gauge(
    "herald_sender_in_flight",
    "Sends handed to the provider and not yet answered",
    ["channel"],
)
CONCURRENCY = Gauge(
    "herald_sender_concurrency",
    "The most sends this sender keeps in flight",
    ["channel"],
)
PROVIDER_SECONDS = Histogram(
    "herald_sender_provider_seconds",
    "Time the provider took to answer one send (SMTP transaction, SMS API call), rate-limit "
    "wait excluded; outcome ok or error",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class Sent(NamedTuple):
    """What a send function over several providers returns (:mod:`herald.sender.providers`):
    the provider's message id and which provider sent it (the status event's ``provider``)."""

    message_id: str
    provider: str | None


def as_sent(result: str | Sent) -> Sent:
    """A send function's result as a :class:`Sent` (provider None for a bare message id)."""
    return result if isinstance(result, Sent) else Sent(result, None)


class SendFunction(Protocol):
    """A channel's way of sending one delivery; safe to call from several threads at once.

    Returns the provider's id for the sent message (the email's Message-ID, the SMS sid), or
    a :class:`Sent` naming the provider too; raises :class:`~herald.errors.RetryableError` or
    :class:`~herald.errors.PermanentError` when it could not send.
    """

    def __call__(self, request: Mapping[str, Any]) -> str | Sent: ...


class TokenBucket:
    """At most ``rate`` acquisitions a second on average and ``burst`` at once, across all
    threads; ``rate`` 0 is unlimited.

    An acquisition takes a token even when none is left (the count goes negative) and is
    told how long to wait for it, so concurrent callers queue up in order, evenly spaced.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        #: Default: a tenth of a second's worth (at least one).
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.burst
        self.updated = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def acquire(self) -> float:
        """Take a token, waiting for it; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self.sleep(wait)
        return wait


#: The tag of the outcome :meth:`SendPool.wake` hands back: no send, skip it.
WAKE = -1


class Outcome(NamedTuple):
    """How one send ended: ``tag`` as given to :meth:`SendPool.submit`, and the provider's id
    or the exception it raised."""

    tag: int
    result: str | Sent | None
    error: BaseException | None


class SendPool:
    """Calls ``send`` on up to ``concurrency`` threads, each call after a token of ``limit``.

    Sends go to the threads through one queue and their outcomes come back through another:
    no ``concurrent.futures.Future`` per send (its condition and lock, and ``wait`` over every
    future in flight, were a quarter of the SMS sender's batch thread at 256 in flight,
    issue 10). ``concurrency`` 1 sends on the calling thread (no threads at all).
    """

    def __init__(
        self,
        send: SendFunction,
        *,
        channel: str,
        concurrency: int = 1,
        limit: TokenBucket | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.send = send
        self.channel = channel
        self.concurrency = concurrency
        self.limit = limit or TokenBucket(0)
        self._todo: queue.SimpleQueue[tuple[int, Mapping[str, Any]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: One release per thread waiting for work (as in ThreadPoolExecutor): a send takes
        #: one, or starts a thread while there are fewer than ``concurrency``.
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        RATE_LIMIT.labels(channel).set(self.limit.rate)
        CONCURRENCY.labels(channel).set(concurrency)
        RATE_LIMITED.labels(channel)
        for outcome in ("ok", "error"):
            PROVIDER_SECONDS.labels(channel, outcome)

    def submit(self, tag: int, request: Mapping[str, Any]) -> None:
        """Start sending ``request``; its :class:`Outcome` carries ``tag``."""
        if self.concurrency == 1:
            self._done.put(self._outcome(tag, request))
            return
        self._todo.put((tag, request))
        if not self._idle.acquire(blocking=False) and len(self._threads) < self.concurrency:
            self._start_thread()

    def wake(self) -> None:
        """Make a :meth:`completed` waiting now (or the next) return, with an outcome tagged
        :data:`WAKE` (safe from any thread; e.g. when a confirmation frees room in the window)."""
        self._done.put(Outcome(WAKE, None, None))

    def completed(self, *, at_least: int = 1, linger: float = 0.0) -> list[Outcome]:
        """Wait for one send to end; then take every other outcome already there, waiting up
        to ``linger`` seconds more while fewer than ``at_least`` have been taken. Only call it
        with sends in flight."""
        done = [self._done.get()]
        deadline = time.monotonic() + linger if linger > 0 else 0.0
        while True:
            try:
                done.append(self._done.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic() if len(done) < at_least else 0.0
            if left <= 0:
                return done
            try:
                done.append(self._done.get(timeout=left))
            except queue.Empty:
                return done

    def _start_thread(self) -> None:
        with self._lock:
            if len(self._threads) >= self.concurrency:
                return
            thread = threading.Thread(
                target=self._work, name=f"send-{self.channel}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while (item := self._todo.get()) is not None:
            self._done.put(self._outcome(*item))
            self._idle.release()

    def _outcome(self, tag: int, request: Mapping[str, Any]) -> Outcome:
        try:
            return Outcome(tag, self._send(request), None)
        except BaseException as exc:  # the batch thread decides what each failure means
            return Outcome(tag, None, exc)

    def _send(self, request: Mapping[str, Any]) -> str | Sent:
        waited = self.limit.acquire()
        if waited:
            RATE_LIMITED.labels(self.channel).inc(waited)
        started = time.perf_counter()
        outcome = "error"
        try:
            provider_id = self.send(request)
            outcome = "ok"
            return provider_id
        finally:
            PROVIDER_SECONDS.labels(self.channel, outcome).observe(time.perf_counter() - started)

    def close(self) -> None:
        """Wait for the sends in flight, then stop the threads."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._todo.put(None)
        for thread in threads:
            thread.join()
