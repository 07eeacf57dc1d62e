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
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from observer.engine.state import Event
from observer.runtime.watermark import TopicPartition

__all__ = [
    "Mark",
    "Routed",
    "ShardWatermarks",
    "decode_keyed",
    "encode_event",
    "encode_mark",
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", "surrogateescape")
    return str(v)


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
    try:
        return orjson.dumps(row, default=_jsonable)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, lone surrogates
        return json.dumps(row, default=_jsonable, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )


def encode_mark(watermarks: Iterable[tuple[str, int, int]]) -> bytes:
    return orjson.dumps({"w": [list(w) for w in watermarks]})


def decode_keyed(value: bytes) -> Routed | Mark:
    """A keyed record's value. Raises ValueError if it is not one the router writes."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            data = json.loads(value.decode("utf-8", "surrogatepass"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a keyed record: {exc}") from None
    if isinstance(data, dict):
        w = data.get("w")
        if not isinstance(w, list):
            raise ValueError("a mark without watermarks")
        return Mark(tuple((str(t), int(p), int(ms)) for t, p, ms in w))
    if not isinstance(data, list) or len(data) != 10:
        raise ValueError("not a keyed event")
    flow, source, etype, key, eid, time, captures, topic, partition, offset = data
    ev = Event(source, etype, key, eid, int(time), captures or {})
    return Routed(flow, ev, topic, int(partition), int(offset))


class ShardWatermarks:
    """The owned shards, and per owned shard the largest watermark read in marks for each
    source partition (a shard's watermark is the minimum over all of them)."""

    def __init__(self) -> None:
        self._marks: dict[int, dict[TopicPartition, int]] = {}

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

    def drop(self, shard: int) -> None:
        """The shard is no longer owned."""
        self._marks.pop(shard, None)

    def observe(self, shard: int, mark: Mark) -> bool:
        """Take a mark in; True if it moved any source partition's watermark forward (marks of
        shards not owned are ignored)."""
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
        topic); None while any of them has no mark yet, or when there are none."""
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
