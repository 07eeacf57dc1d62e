"""Commit bookkeeping: only what was written, forward only, retried after a failure."""

from __future__ import annotations

from observer.runtime.offsets import OffsetLedger, next_offsets

A, B = ("orders", 0), ("pay", 1)


def test_next_offsets_is_the_largest_offset_plus_one_per_partition() -> None:
    recs = [("orders", 0, 5), ("pay", 1, 2), ("orders", 0, 7), ("orders", 0, 6)]
    assert next_offsets(recs) == {A: 8, B: 3}
    assert next_offsets([]) == {}


def test_only_written_offsets_of_assigned_partitions_are_committable() -> None:
    ledger = OffsetLedger()
    ledger.assign([A])
    assert ledger.to_commit() == {}
    ledger.written({A: 8, B: 3})  # B is not assigned
    assert ledger.to_commit() == {A: 8}
    ledger.committing({A: 8})
    assert ledger.to_commit() == {}
    ledger.written({A: 5})  # never backwards
    assert ledger.to_commit() == {}
    ledger.written({A: 9})
    assert ledger.to_commit() == {A: 9}


def test_a_failed_commit_is_retried_unless_a_later_one_was_sent() -> None:
    ledger = OffsetLedger()
    ledger.assign([A, B])
    ledger.written({A: 8, B: 3})
    ledger.committing({A: 8, B: 3})
    ledger.commit_failed({A: 8, B: 3})
    assert ledger.to_commit() == {A: 8, B: 3}
    ledger.committing({A: 8, B: 3})
    ledger.written({A: 10})
    ledger.committing({A: 10})
    ledger.commit_failed({A: 8})  # an older commit failed after a newer one was sent
    assert ledger.to_commit() == {}


def test_revoke_returns_the_last_offsets_and_lost_returns_nothing() -> None:
    ledger = OffsetLedger()
    ledger.assign([A, B])
    ledger.written({A: 8, B: 3})
    ledger.committing({B: 3})
    assert ledger.revoke([A, B]) == {A: 8}
    assert ledger.assigned == frozenset()
    ledger.assign([A])
    ledger.written({A: 9})
    ledger.lost([A])
    assert ledger.to_commit() == {}
    ledger.written({A: 12})  # records of a partition no longer assigned
    assert ledger.to_commit() == {}


def test_to_commit_can_be_limited_to_some_partitions() -> None:
    ledger = OffsetLedger()
    ledger.assign([A, B])
    ledger.written({A: 1, B: 2})
    assert ledger.to_commit([B]) == {B: 2}
