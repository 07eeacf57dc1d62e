"""The keyed topic's records and the per-shard watermark built from marks (pure parts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from observer.engine.state import Event
from observer.runtime.keyed import (
    Mark,
    Routed,
    ShardWatermarks,
    decode_keyed,
    encode_event,
    encode_mark,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    flow=st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True),
    key=st.text(max_size=12),
    eid=st.text(max_size=12),
    time=st.integers(0, 2**45),
    captures=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    offset=st.integers(0, 2**40),
)
def test_an_event_survives_the_keyed_topic(
    flow: str, key: str, eid: str, time: int, captures: dict[str, object], offset: int
) -> None:
    ev = Event("orders", "OrderPlaced", key, eid, time, captures)
    back = decode_keyed(encode_event(flow, ev, "shop.orders", 3, offset))
    assert back == Routed(flow, ev, "shop.orders", 3, offset)


def test_values_json_cannot_hold_arrive_as_strings() -> None:
    ev = Event("orders", "T", "k", "i", 1, {"raw": b"\x01ab", "big": 2**70})
    back = decode_keyed(encode_event("f", ev, "t", 0, 0))
    assert isinstance(back, Routed)
    assert back.event.captures == {"raw": "\x01ab", "big": 2**70}


def test_a_mark_round_trips_and_garbage_is_refused() -> None:
    assert decode_keyed(encode_mark([("a", 0, 5), ("b", 1, 7)])) == Mark((("a", 0, 5), ("b", 1, 7)))
    for bad in (b"", b"not json", b"[1,2]", b'{"x": 1}', b'"text"'):
        with pytest.raises(ValueError):
            decode_keyed(bad)


def test_a_shard_watermark_is_the_minimum_over_every_source_partition() -> None:
    sources = {("a", 0), ("a", 1), ("b", 0)}
    clocks = ShardWatermarks()
    clocks.reset(2)
    assert clocks.value(2, sources) is None
    clocks.observe(2, Mark((("a", 0, 100), ("a", 1, 90))))
    assert clocks.value(2, sources) is None  # b[0] never marked: nothing may fire
    assert clocks.observe(2, Mark((("b", 0, 120),))) is True  # moved: the loop ticks at once
    assert clocks.value(2, sources) == 90
    # a new owner of a[1] starts behind what an earlier owner reported: marks only go forward
    assert clocks.observe(2, Mark((("a", 1, 50),))) is False
    assert clocks.value(2, sources) == 90
    assert clocks.observe(2, Mark((("a", 1, 200),))) is True
    assert clocks.value(2, sources) == 100
    assert clocks.value(3, sources) is None  # a shard not owned
    assert clocks.value(2, set()) is None  # no source partitions known yet
    clocks.drop(2)
    assert clocks.value(2, sources) is None
