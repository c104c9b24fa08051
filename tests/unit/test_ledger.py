"""The router's commit ledger (services.router.ledger): what may be committed, and the gaps."""

from __future__ import annotations

from services.router.ledger import Gap, Ledger

TP = ("herald.recipients.v1", 5)
OTHER = ("herald.recipients.v1", 4)


def owned(committed: int | None = 100) -> Ledger:
    ledger = Ledger({TP[0]}, repair_after=2.0)
    ledger.assigned({TP: committed, ("changelog", 5): 7})
    return ledger


def test_commits_only_up_to_the_first_unfinished_offset_whatever_the_order() -> None:
    ledger = owned()
    for offset in range(100, 105):
        ledger.received(TP, offset)
    for offset in (101, 103, 104):  # reports can come in any order
        ledger.finished(TP, offset)
    assert ledger.committable(TP) == 100
    ledger.finished(TP, 100)
    assert ledger.committable(TP) == 102
    ledger.finished(TP, 102)
    assert ledger.committable(TP) == 105


def test_untracked_topics_and_unknown_partitions_are_not_committed_here() -> None:
    ledger = owned()
    assert not ledger.tracks(("changelog", 5))
    assert ledger.committable(("changelog", 5)) is None
    assert ledger.committable(OTHER) is None
    assert ledger.owned() == [TP]


def test_no_commit_while_the_committed_offset_is_unknown_or_the_partition_not_owned() -> None:
    ledger = Ledger({TP[0]})
    ledger.received(TP, 0)
    ledger.finished(TP, 0)
    assert ledger.committable(TP) is None  # not assigned: the stream's base is unknown
    ledger = owned()
    ledger.revoked([TP])
    assert ledger.committable(TP) is None
    assert ledger.owned() == []


def test_a_late_report_across_a_rebalance_cannot_commit_past_an_unrouted_record() -> None:
    """The chaos run's loss: records routed before a revocation finish after the partition is
    assigned again; the record at the committed offset was never routed by anyone."""
    ledger = owned(170)
    for offset in range(171, 176):
        ledger.received(TP, offset)
    ledger.revoked([TP])
    ledger.finished(TP, 171)  # between the revocation and the next assignment
    ledger.assigned({TP: 170})
    for offset in range(172, 176):
        ledger.finished(TP, offset)
    assert ledger.committable(TP) == 170  # 170 was never finished
    ledger.received(TP, 170)
    ledger.finished(TP, 170)
    # 171 finished while the partition was not owned: not counted, so it is routed again.
    assert ledger.committable(TP) == 171


def test_a_lower_committed_offset_keeps_what_this_worker_finished_a_higher_one_moves_on() -> None:
    ledger = owned(100)
    for offset in range(100, 110):
        ledger.received(TP, offset)
        ledger.finished(TP, offset)
    assert ledger.committable(TP) == 110
    ledger.revoked([TP])
    ledger.assigned({TP: 105})  # our last commit did not land
    assert ledger.committable(TP) == 105  # base was dropped on revoke: only what is known
    ledger.assigned({TP: 300})  # another worker went further
    assert ledger.committable(TP) == 300
    ledger.assigned({TP: 200})  # a seek that reads an older commit keeps the finished base
    assert ledger.committable(TP) == 300


def test_no_committed_offset_means_the_log_start() -> None:
    ledger = owned(None)
    ledger.received(TP, 0)
    ledger.finished(TP, 0)
    assert ledger.committable(TP) == 1


def test_a_skipped_record_is_reported_as_a_gap_once_it_has_waited() -> None:
    ledger = owned(100)
    ledger.received(TP, 100)
    ledger.finished(TP, 100)
    # The stream handed over 103 without 101 and 102.
    ledger.received(TP, 103)
    assert ledger.gaps(now=10.0) == []  # first seen
    assert ledger.gaps(now=11.9) == []
    assert ledger.gaps(now=12.0) == [Gap(TP, 101, 103)]
    assert ledger.gaps(now=20.0) == []  # reported once: its offsets are being routed now
    ledger.finished(TP, 101)  # routed from the broker
    ledger.finished(TP, 102)  # a hole (no record)
    ledger.finished(TP, 103)
    assert ledger.committable(TP) == 104
    assert ledger.gaps(now=30.0) == []


def test_an_abandoned_gap_offset_becomes_a_gap_again() -> None:
    ledger = owned(100)
    ledger.received(TP, 102)
    ledger.gaps(now=0.0)
    assert ledger.gaps(now=2.0) == [Gap(TP, 100, 102)]
    ledger.finished(TP, 100)
    ledger.abandoned(TP, 101)  # the broker did not answer in time
    ledger.gaps(now=3.0)
    assert ledger.gaps(now=5.0) == [Gap(TP, 101, 102)]


def test_no_gap_before_the_stream_flows_or_while_the_commit_point_is_being_routed() -> None:
    ledger = owned(100)
    # A report from before the assignment lands above the base; the stream has not started
    # (its tables are recovering): that is not a skip.
    ledger.revoked([TP])
    ledger.received(TP, 150)
    ledger.assigned({TP: 100})
    ledger.finished(TP, 150)
    ledger.gaps(now=0.0)
    assert ledger.gaps(now=100.0) == []
    # Flowing, with the commit point being routed (e.g. its output refused for a while).
    ledger.received(TP, 100)
    ledger.received(TP, 101)
    ledger.gaps(now=100.0)
    assert ledger.gaps(now=200.0) == []
    assert ledger.describe(TP)["routing"] == 2


def test_a_record_delivered_twice_stays_routing_until_both_finish() -> None:
    ledger = owned(100)
    ledger.received(TP, 100)
    ledger.received(TP, 100)  # delivered again after a seek
    ledger.received(TP, 101)
    ledger.finished(TP, 100)
    assert ledger.committable(TP) == 101
    ledger.gaps(now=0.0)
    assert ledger.gaps(now=5.0) == []
    assert ledger.describe(TP)["routing"] == 2


def test_a_gap_whose_read_fails_is_reported_again_not_left_routing() -> None:
    """A broker that does not answer the gap's read (an exception out of the reader) must not
    leave the gap's offsets counted as being routed, which would hold the commit for ever."""
    import asyncio
    from typing import Any, cast

    from faust.types import TP as FaustTP

    from services.router.repair import GapReader, GapRecords, repair

    tp = FaustTP(*TP)  # the repair logs the topic and partition by name

    class Reader:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, tp: Any, start: int, end: int) -> GapRecords:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("broker away")
            return GapRecords(holes=list(range(start, end)), complete=True)

    ledger = Ledger({tp.topic}, repair_after=2.0)
    ledger.assigned({tp: 100})
    ledger.received(tp, 102)
    reader = Reader()

    async def route(message: Any) -> None:
        raise AssertionError("the gap holds no record here")

    async def run(now: float) -> int:
        return await repair(ledger, cast(GapReader, reader), route, now)

    assert asyncio.run(run(0.0)) == 0  # first seen
    assert asyncio.run(run(2.0)) == 0 and reader.calls == 1  # reported; the read failed
    assert ledger.describe(tp)["routing"] == 1  # only 102, from the stream
    assert asyncio.run(run(2.5)) == 0  # seen again
    assert asyncio.run(run(4.5)) == 0 and reader.calls == 2  # read: 100 and 101 are holes
    ledger.finished(tp, 102)
    assert ledger.committable(tp) == 103
