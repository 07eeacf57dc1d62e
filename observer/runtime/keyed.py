"""The keyed topic: source events re-keyed by correlation key, and the watermark marks that
travel with them. Pure: no I/O.

Source topics are partitioned however their producers chose (a payment topic by payment id,
say), so the events of one instance are spread over partitions that different processes of
the group read. The router (stage one) decodes each source record and writes one record per
(flow, key) event to partition `shard_of(flow:key)` of the keyed topic; the tracker (stage two)
owns keyed partitions, and with them the shards of state, deadlines and outbox in Redis.

A deadline may fire only once every source partition was read past it. Each router sends, to
every keyed partition and after the events it routed, a *mark*: the watermark of each source
partition it reads. Per keyed partition the producer keeps order, so a mark saying source
partition X reached W is read after every event of X up to W routed to that partition. The
tracker's watermark for a shard is the minimum over all source partitions of the largest
mark read for them in the shard's partition.

Aliases (correlation by a second id) add two kinds of records, written by trackers: *hops*,
messages between the slots of one flow (`observer.engine.effects.Hop`), and *hop marks*. An
event via an alias value is routed to the value's shard, which forwards it to the holder's
shard: a second hop, after the source marks that covered it reached the holder's shard. So
when a deployed flow has aliases a shard's watermark is also at most every shard's hop mark:
the source watermark that shard had when the hops of everything it had read were handed to the
producer (`hops.py`), sent to every shard after those hops.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from observer.engine.effects import HOP_KINDS, Hop, Publish
from observer.engine.state import Event
from observer.ingest import SourceRecord, dead_letter
from observer.runtime.watermark import TopicPartition
from observer.topics import Topics

__all__ = [
    "HopMark",
    "Mark",
    "Routed",
    "ShardWatermarks",
    "decode_keyed",
    "encode_event",
    "encode_hop",
    "encode_hop_mark",
    "encode_mark",
    "routed_dead_letter",
]


@dataclass(slots=True)
class Routed:
    """One event read from the keyed topic, with where its source record is."""

    flow: str
    event: Event
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Mark:
    """Source partitions' watermarks (epoch ms) as a router knew them."""

    watermarks: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class HopMark:
    """Shards' source watermarks as of hops handed over (aliases): (shard, epoch ms) pairs."""

    watermarks: tuple[tuple[int, int], ...]


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", "surrogateescape")
    return str(v)


def _dumps(row: Any) -> bytes:
    try:
        return orjson.dumps(row, default=_jsonable)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, lone surrogates
        return json.dumps(row, default=_jsonable, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )


def encode_event(flow: str, event: Event, topic: str, partition: int, offset: int) -> bytes:
    """The keyed record of one event. Captured values travel as JSON: values JSON cannot hold
    (Avro bytes, decimals) arrive as strings."""
    row = [
        flow,
        event.source,
        event.type,
        event.key,
        event.id,
        event.time,
        event.captures or None,
        topic,
        partition,
        offset,
    ]
    return _dumps(row)


def encode_mark(watermarks: Iterable[tuple[str, int, int]]) -> bytes:
    return orjson.dumps({"w": [list(w) for w in watermarks]})


def encode_hop(hop: Hop) -> bytes:
    """The keyed record of a message between slots (its events without their key: the
    receiver's)."""
    events = [[e.source, e.type, e.id, e.time, e.captures or None] for e in hop.events]
    row = [hop.kind, hop.flow, hop.alias, hop.value, hop.key, hop.started, events]
    row += [hop.held_by, hop.source]
    return _dumps({"m": row})


def encode_hop_mark(watermarks: Iterable[tuple[int, int]]) -> bytes:
    return orjson.dumps({"h": [list(w) for w in watermarks]})


def _hop(row: Any) -> Hop:
    kind, flow, alias, value, key, started, events, held_by, source = row
    if kind not in HOP_KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    hop = Hop(kind, flow, alias, value, key, int(started), (), held_by, source)
    owner = hop.target()[1]
    hop.events = tuple(Event(s, t, owner, i, int(ms), c or {}) for s, t, i, ms, c in events)
    return hop


def decode_keyed(value: bytes | Routed) -> Routed | Mark | Hop | HopMark:
    """A keyed record's value (a `Routed` event as it is, from the keyed topic kept in memory).
    Raises ValueError if it is not one the router writes."""
    if type(value) is Routed:
        return value
    assert isinstance(value, bytes | bytearray | memoryview)
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            data = json.loads(value.decode("utf-8", "surrogatepass"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a keyed record: {exc}") from None
    if isinstance(data, dict):
        w = data.get("w")
        if isinstance(w, list):
            return Mark(tuple((str(t), int(p), int(ms)) for t, p, ms in w))
        if "m" in data:
            return _hop(data["m"])
        h = data.get("h")
        if isinstance(h, list):
            return HopMark(tuple((int(s), int(ms)) for s, ms in h))
        raise ValueError("a mark without watermarks")
    if not isinstance(data, list) or len(data) != 10:
        raise ValueError("not a keyed event")
    flow, source, etype, key, eid, time, captures, topic, partition, offset = data
    ev = Event(source, etype, key, eid, int(time), captures or {})
    return Routed(flow, ev, topic, int(partition), int(offset))


class ShardWatermarks:
    """The owned shards, and per owned shard the largest watermark read in marks for each
    source partition (a shard's watermark is the minimum over all of them) and, with `hops`
    (the shard count, when a flow has aliases), the largest hop mark read for each shard."""

    def __init__(self, hops: int = 0) -> None:
        self._marks: dict[int, dict[TopicPartition, int]] = {}
        self._hops: dict[int, dict[int, int]] = {}
        self.hops = hops

    def __contains__(self, shard: object) -> bool:
        return shard in self._marks

    def __len__(self) -> int:
        return len(self._marks)

    def owned(self) -> list[int]:
        """The owned shards, in order."""
        return sorted(self._marks)

    def reset(self, shard: int) -> None:
        """The shard is (again) owned: what it knew comes back with the marks it reads."""
        self._marks[shard] = {}
        self._hops[shard] = {}

    def drop(self, shard: int) -> None:
        """The shard is no longer owned."""
        self._marks.pop(shard, None)
        self._hops.pop(shard, None)

    def _observe_hops(self, shard: int, mark: HopMark) -> bool:
        known = self._hops.get(shard)
        if known is None or not self.hops:
            return False
        moved = False
        for origin, wm in mark.watermarks:
            if wm > known.get(origin, -(2**62)):
                known[origin] = wm
                moved = True
        return moved

    def observe(self, shard: int, mark: Mark | HopMark) -> bool:
        """Take a mark (or a hop mark) in; True if it moved any source partition's (or shard's)
        watermark forward (marks of shards not owned are ignored)."""
        if type(mark) is HopMark:
            return self._observe_hops(shard, mark)
        assert isinstance(mark, Mark)
        known = self._marks.get(shard)
        if known is None:
            return False
        moved = False
        for topic, partition, wm in mark.watermarks:
            tp = (topic, partition)
            if wm > known.get(tp, -(2**62)):
                known[tp] = wm
                moved = True
        return moved

    def value(self, shard: int, sources: Collection[TopicPartition]) -> int | None:
        """The shard's watermark: the minimum over `sources` (every partition of every source
        topic) and, with hops, over every shard's hop mark; None while any of them is not
        known yet, or when there are no sources."""
        low = self.source_value(shard, sources)
        if low is None or not self.hops:
            return low
        hops = self._hops.get(shard, {})
        for origin in range(self.hops):
            wm = hops.get(origin)
            if wm is None:
                return None
            if wm < low:
                low = wm
        return low

    def values(
        self, sources: Collection[TopicPartition], *, sources_only: bool = False
    ) -> dict[int, int]:
        """{shard: watermark} of the owned shards whose watermark is known (`sources_only`:
        from source marks alone)."""
        value = self.source_value if sources_only else self.value
        out = {}
        for shard in self._marks:
            wm = value(shard, sources)
            if wm is not None:
                out[shard] = wm
        return out

    def source_value(self, shard: int, sources: Collection[TopicPartition]) -> int | None:
        """The shard's watermark from source marks alone (what its hop marks say)."""
        known = self._marks.get(shard)
        if known is None or not sources:
            return None
        low: int | None = None
        for tp in sources:
            wm = known.get(tp)
            if wm is None:
                return None
            if low is None or wm < low:
                low = wm
        return low


def routed_dead_letter(
    r: Routed,
    reason: str,
    originals: Mapping[tuple[str, int, int], SourceRecord],
    topics: Topics,
) -> Publish:
    """The dead letter of an event that failed past routing: its source record read again
    (or, if that is gone, the event as routed, with the same headers)."""
    original = originals.get((r.topic, r.partition, r.offset))
    if original is None:
        original = SourceRecord(
            r.topic,
            r.partition,
            r.offset,
            r.event.key.encode("utf-8", "surrogatepass"),
            encode_event(r.flow, r.event, r.topic, r.partition, r.offset),
            (),
            r.event.time,
        )
    return dead_letter(original, reason, topics)
