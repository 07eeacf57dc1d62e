"""Watermarks: per partition the last record time, fully read = wall clock; over partitions
(as a shard combines the marks of every one), the minimum."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from observer.runtime.watermark import Watermarks

A, B = ("orders", 0), ("pay", 0)


def lowest(wm: Watermarks, now: int) -> int | None:
    """The minimum of every assigned partition's watermark at `now`; None if any is unknown
    or none is assigned (what a shard's watermark is once it has read marks of them all)."""
    marks = [wm.partition_watermark(tp, now) for tp in list(wm.partitions)]
    known = [m for m in marks if m is not None]
    return min(known) if known and len(known) == len(marks) else None


def test_unknown_until_every_partition_is_read_or_fully_read() -> None:
    wm = Watermarks()
    assert lowest(wm, 10_000) is None  # nothing assigned
    wm.assign([A, B])
    wm.observe("orders", 0, 0, 1_000)
    assert lowest(wm, 10_000) is None  # B: nothing read, high-water mark unknown
    wm.observe("pay", 0, 0, 2_000)
    assert lowest(wm, 10_000) == 1_000  # the minimum


def test_a_fully_read_partition_counts_as_the_wall_clock_less_the_grace() -> None:
    wm = Watermarks(idle_grace_ms=300)
    wm.assign([A, B])
    wm.observe("orders", 0, 4, 1_000)
    wm.offsets(A, 0, 10, None)  # 5 records not read yet
    wm.offsets(B, 0, 0, None)  # empty partition: nothing to read
    assert lowest(wm, 10_000) == 1_000
    wm.observe("orders", 0, 9, 1_500)  # now at the high-water mark
    wm.offsets(A, 0, 10, None)
    assert lowest(wm, 10_000) == 9_700


def test_a_committed_position_at_the_high_water_mark_is_fully_read() -> None:
    wm = Watermarks()
    wm.assign([A], positions={A: 42})
    wm.offsets(A, 0, 42, None)
    assert lowest(wm, 5_000) == 5_000
    wm2 = Watermarks()
    wm2.assign([A], positions={A: 40})
    wm2.offsets(A, 0, 42, None)
    assert lowest(wm2, 5_000) is None  # restarted and behind: no watermark until it reads


def test_never_moves_backwards() -> None:
    wm = Watermarks()
    wm.assign([A])
    wm.observe("orders", 0, 0, 5_000)
    wm.offsets(A, 0, 1, None)
    assert lowest(wm, 9_000) == 9_000  # fully read
    wm.observe("orders", 0, 1, 2_000)  # a new record with an old timestamp
    wm.offsets(A, 0, 5, None)  # and more to read
    assert lowest(wm, 9_500) == 9_000


def test_revoked_and_unassigned_partitions_do_not_count() -> None:
    wm = Watermarks()
    wm.assign([A, B])
    wm.observe("orders", 0, 0, 1_000)
    wm.observe("other", 3, 0, 1)  # not assigned: ignored
    assert ("other", 3) not in wm.partitions
    wm.revoke([B])
    assert lowest(wm, 9_000) == 1_000
    assert wm.partitions[A].lag() is None  # high-water mark unknown
    wm.offsets(A, 0, 7, None)
    assert wm.partitions[A].lag() == 6


def test_negative_offsets_and_missing_timestamps_are_ignored() -> None:
    wm = Watermarks()
    wm.assign([A])
    wm.offsets(A, -1001, -1001, -1001)
    wm.observe("orders", 0, 0, -1)
    assert wm.partitions[A].last_ts is None
    assert lowest(wm, 1) is None


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("observe"), st.sampled_from([A, B]), st.integers(0, 50), st.integers(-1, 10_000)
        ),
        st.tuples(
            st.just("offsets"), st.sampled_from([A, B]), st.integers(-1, 50), st.integers(-1, 60)
        ),
        st.tuples(st.just("tick"), st.just(A), st.integers(0, 2_000), st.just(0)),
    ),
    max_size=40,
)


@given(ops)
def test_the_observer_watermark_is_monotonic_while_the_assignment_is_stable(
    steps: list[tuple[str, tuple[str, int], int, int]],
) -> None:
    wm = Watermarks(idle_grace_ms=100)
    wm.assign([A, B])
    now = 10_000
    last = None
    for op, tp, x, y in steps:
        if op == "observe":
            wm.observe(tp[0], tp[1], x, y)
        elif op == "offsets":
            wm.offsets(tp, 0 if x >= 0 else -1, y, None)
        else:
            now += x
        value = lowest(wm, now)
        if last is not None:
            assert value is not None and value >= last
        last = value if value is not None else last
