"""The keyed topic's records and the per-shard watermark built from marks (pure parts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from observer.engine.effects import HOP_KINDS, Hop, HopKind
from observer.engine.state import Event
from observer.runtime.keyed import (
    HopMark,
    Mark,
    Routed,
    ShardWatermarks,
    decode_keyed,
    encode_event,
    encode_hop,
    encode_hop_mark,
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


# -- aliases: hops and hop marks -------------------------------------------------------------------


@given(
    kind=st.sampled_from(HOP_KINDS),
    value=st.text(max_size=12),
    key=st.text(max_size=12),
    eids=st.lists(st.text(max_size=6), max_size=3),
    captures=st.dictionaries(st.text(max_size=6), json_values, max_size=2),
)
def test_a_hop_survives_the_keyed_topic(
    kind: HopKind, value: str, key: str, eids: list[str], captures: dict[str, object]
) -> None:
    hop = Hop(kind, "delivery", "tracking", value, key, 7, (), "o-0", "shipping")
    owner = hop.target()[1]  # the events of a message belong to its receiver
    hop.events = tuple(Event("carrier", "PickedUp", owner, e, 5, captures) for e in eids)
    back = decode_keyed(encode_hop(hop))
    assert back == hop and isinstance(back, Hop)
    assert back.id() == hop.id()


def test_a_hop_mark_round_trips() -> None:
    assert decode_keyed(encode_hop_mark([(0, 5), (3, 9)])) == HopMark(((0, 5), (3, 9)))
    with pytest.raises(ValueError):
        decode_keyed(b'{"m": ["teleport", "f", "a", "v", "k", 1, [], null, null]}')


def test_with_hops_a_shard_watermark_waits_for_every_shard_s_hop_mark() -> None:
    sources = {("orders", 0), ("pay", 0)}
    wms = ShardWatermarks(hops=3)
    wms.reset(1)
    wms.observe(1, Mark((("orders", 0, 100), ("pay", 0, 90))))
    assert wms.source_value(1, sources) == 90
    assert wms.value(1, sources) is None  # no hop mark of any shard yet
    assert wms.observe(1, HopMark(((0, 80), (1, 95))))
    assert wms.value(1, sources) is None  # shard 2 has said nothing
    assert wms.observe(1, HopMark(((2, 200),)))
    assert wms.value(1, sources) == 80
    assert not wms.observe(1, HopMark(((0, 70),)))  # older: the largest one holds
    wms.observe(1, HopMark(((0, 300),)))
    assert wms.value(1, sources) == 90
    assert wms.values(sources) == {1: 90} and wms.values(sources, sources_only=True) == {1: 90}
    wms.reset(1)  # owned again: everything comes back with the marks
    assert wms.value(1, sources) is None
    without = ShardWatermarks()
    without.reset(0)
    without.observe(0, Mark((("orders", 0, 5), ("pay", 0, 6))))
    assert not without.observe(0, HopMark(((0, 1),)))  # no aliases: hop marks change nothing
    assert without.value(0, sources) == 5
