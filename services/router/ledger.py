"""Which consumed offsets the router has finished, and so which offset it may commit.

The router commits the offsets of its two routed topics (events, recipients) from this ledger,
not from Faust's acknowledgement bookkeeping (services.router.app wires it into Faust's
consumer). The rule is one line: **offset N+1 is committed only when every offset from the
partition's committed offset up to N is finished** — its outputs acknowledged by the broker
(services.router.outputs), or known to hold no record. It does not depend on which records the
stream delivered, in which order, in which generation, or what Faust forgot across a rebalance.

Why not Faust's: Faust drops its per-partition state on every revocation
(``Consumer.on_partitions_revoked``), accepts acknowledgements for a partition before it knows
the partition's committed offset again, fills "gaps" in what it fetched as if acknowledged, and
lets a commit start one past its committed offset. With acknowledgements that arrive late
(delivery reports), across two quick rebalances, a chaos run saw records committed that were
never routed. With this ledger such a record cannot be committed.

A record the stream skipped would hold its partition's commit back for ever; so the ledger also
reports *gaps*: an offset at the commit point that is neither finished nor being routed while a
later one of the same partition is, for longer than ``repair_after`` seconds, on a partition
whose stream is flowing. The router reads a gap's records straight from the broker and routes
them (services.router.repair, run by services.router.agents); offsets with no record (a
transaction marker, a deleted segment) are finished as holes.

Pure bookkeeping: no I/O, no clock of its own (callers pass ``now``), so it is unit-tested alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: A topic partition: Faust's ``TP`` (a ``(topic, partition)`` named tuple) or any equal tuple.
TopicPartition = Any


class Gap(NamedTuple):
    """Offsets ``start`` up to (not including) ``end`` of ``tp`` are neither finished nor being
    routed, while ``end`` is."""

    tp: TopicPartition
    start: int
    end: int


@dataclass
class _Partition:
    #: The next offset to commit: every offset below it is finished. None until the committed
    #: offset is known (after the consumer's seek on assignment).
    base: int | None = None
    #: Finished offsets at or above ``base``.
    done: set[int] = field(default_factory=set)
    #: Offsets being routed now (taken from the stream, outputs not all acknowledged), with how
    #: many times (a record delivered again after a seek may be in flight twice).
    routing: dict[int, int] = field(default_factory=dict)
    #: Owned by this worker (assigned and not revoked since).
    owned: bool = False
    #: The stream delivered a record of this partition since it was last assigned: its tables
    #: are recovered and records flow, so a gap is a skip, not a stream that has not started.
    flowing: bool = False
    #: Since when the commit point has been a gap (None: it is not).
    gap_since: float | None = None
    gap_base: int | None = None

    def advance(self) -> None:
        if self.base is None:
            return
        while self.base in self.done:
            self.done.discard(self.base)
            self.base += 1


class Ledger:
    """Finished offsets per partition of ``topics``; see the module's docstring."""

    def __init__(self, topics: Collection[str], repair_after: float = 2.0) -> None:
        self.topics = frozenset(topics)
        self.repair_after = repair_after
        self._partitions: dict[TopicPartition, _Partition] = {}

    def tracks(self, tp: TopicPartition) -> bool:
        return bool(tp[0] in self.topics)

    def _part(self, tp: TopicPartition) -> _Partition:
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = _Partition()
        return part

    # --- ownership (the consumer's rebalance callbacks) ---------------------------------------

    def assigned(self, committed: Mapping[TopicPartition, int | None]) -> None:
        """The consumer owns these partitions and was positioned at their committed offsets
        (None: the group has committed nothing, so it reads from the log's start)."""
        for tp, offset in committed.items():
            if not self.tracks(tp):
                continue
            part = self._part(tp)
            part.owned = True
            start = offset or 0
            # Everything below a known base is finished (by this worker), so a lower committed
            # offset (the last commit lagged) may keep the base; a higher one (another worker
            # went further) moves it.
            part.base = start if part.base is None else max(part.base, start)
            part.done = {o for o in part.done if o >= part.base}
            part.gap_since = None
            part.advance()

    def revoked(self, tps: Iterable[TopicPartition]) -> None:
        """The consumer gave these partitions up: no commit, no gap until assigned again.
        Records still being routed stay counted (they finish later, and their outputs are
        acknowledged then, whoever owns the partition)."""
        for tp in tps:
            part = self._partitions.get(tp)
            if part is None:
                continue
            part.owned = False
            part.flowing = False
            part.base = None
            part.gap_since = None
            if not part.routing:
                del self._partitions[tp]

    def owned(self) -> list[TopicPartition]:
        return [tp for tp, part in self._partitions.items() if part.owned]

    # --- records ------------------------------------------------------------------------------

    def received(self, tp: TopicPartition, offset: int) -> None:
        """The router took ``offset`` (from the stream or a gap's repair) and is routing it."""
        part = self._part(tp)
        part.routing[offset] = part.routing.get(offset, 0) + 1
        if part.owned:
            part.flowing = True

    def finished(self, tp: TopicPartition, offset: int) -> None:
        """Every output of ``offset`` is acknowledged by the broker (or it holds no record)."""
        part = self._partitions.get(tp)
        if part is None:
            return
        if part.owned and part.base is not None and offset >= part.base:
            part.done.add(offset)
            part.advance()
        self.abandoned(tp, offset)

    def abandoned(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` was received but will not be finished by this worker (a gap's read that
        did not reach it): it is no longer being routed, so it can be a gap again."""
        part = self._partitions.get(tp)
        if part is None:
            return
        count = part.routing.get(offset, 0)
        if count > 1:
            part.routing[offset] = count - 1
        else:
            part.routing.pop(offset, None)
        if not part.owned and not part.routing:
            del self._partitions[tp]

    # --- commits and gaps ---------------------------------------------------------------------

    def committable(self, tp: TopicPartition) -> int | None:
        """The offset that may be committed for ``tp`` (every offset below it is finished),
        or None when it is not known or not owned."""
        part = self._partitions.get(tp)
        if part is None or not part.owned:
            return None
        return part.base

    def gaps(self, now: float) -> list[Gap]:
        """Commit points stuck behind records that are not being routed, for longer than
        ``repair_after``; each is reported once (its offsets are then counted as routing)."""
        found = []
        for tp, part in self._partitions.items():
            gap = self._gap(tp, part)
            if gap is None:
                part.gap_since = None
                continue
            if part.gap_since is None or part.gap_base != gap.start:
                part.gap_since, part.gap_base = now, gap.start
            if now - part.gap_since >= self.repair_after:
                found.append(gap)
        for gap in found:
            part = self._partitions[gap.tp]
            part.gap_since = None
            for offset in range(gap.start, gap.end):
                self.received(gap.tp, offset)
        return found

    @staticmethod
    def _gap(tp: TopicPartition, part: _Partition) -> Gap | None:
        base = part.base
        if base is None or not part.owned or not part.flowing:
            return None
        if base in part.done or part.routing.get(base):
            return None
        later = [o for o in part.routing if o > base]
        later.extend(part.done)  # all above base
        if not later:
            return None
        return Gap(tp, base, min(later))

    def describe(self, tp: TopicPartition) -> dict[str, Any]:
        """For logs and tests: the partition's base, finished and routing counts."""
        part = self._partitions.get(tp)
        if part is None:
            return {"owned": False}
        return {
            "owned": part.owned,
            "base": part.base,
            "done": len(part.done),
            "routing": sum(part.routing.values()),
            "flowing": part.flowing,
        }
