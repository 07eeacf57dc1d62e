"""Records waiting to be published, and the bookkeeping of their delivery. Pure: no I/O.

An effect `Publish` becomes an `OutboxRecord` (value already serialised, headers as bytes)
when its batch is planned; the record is written to the store's outbox in the same atomic
write as the state that produced it, published once that write returned, and removed from the
outbox once the broker (or the webhook) acknowledged it. After a crash, whatever is left in the
outbox is published again: always with the same `observer-id`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from observer.engine.effects import Publish
from observer.engine.ids import observer_id
from observer.record_size import (
    TRUNCATED_HEADER,
    RecordLimits,
    fit_dead_letter,
    header_bytes,
    record_bytes,
)
from observer.runtime.backoff import backoff_ms as retry_delay_ms
from observer.topics import Topics

__all__ = [
    "InFlight",
    "OutboxRecord",
    "decode_record",
    "encode_record",
    "oversized",
    "refused_dead_letter",
    "serialize_value",
    "to_record",
]

_FORMAT = 1
_LEN = struct.Struct(">i")
_HEAD = struct.Struct(">BqI")  # format, created_at, seq


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One record to publish. `webhook` set: POST `value` (JSON) there instead of Kafka.

    `created_at` (epoch ms) and `seq` order records of a batch when they are recovered.
    """

    observer_id: str
    category: str
    topic: str | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # None: a header without a value
    webhook: str | None = None
    created_at: int = 0
    seq: int = 0


def _bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    return str(v).encode()


def serialize_value(p: Publish, wire: Mapping[str, bytes] | None = None) -> bytes | None:
    """The record value: as the engine encoded it when it did; else a mapping/list/number as
    JSON (Avro with `avro_schema`), a str as UTF-8, bytes as is, None as a null value. An Avro
    action that names a registry `subject` gets the Confluent wire format's header from `wire`
    (subject -> magic byte and schema id, resolved when the observer starts)."""
    if p.encoded is not None:
        if p.subject is None:
            return p.encoded
        header = None if wire is None else wire.get(p.subject)
        if header is None:
            raise ValueError(f"schema registry subject '{p.subject}' was not resolved")
        return header + p.encoded
    value = p.value
    if value is None and p.category == "dlq":
        return None
    if isinstance(value, bytes | bytearray | memoryview | str):
        return _bytes(value)
    if p.avro_schema is not None and p.category == "action":
        import fastavro

        buf = io.BytesIO()
        if p.subject is not None:
            header = None if wire is None else wire.get(p.subject)
            if header is None:
                raise ValueError(f"schema registry subject '{p.subject}' was not resolved")
            buf.write(header)
        fastavro.schemaless_writer(buf, p.avro_schema, value)
        return buf.getvalue()
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


def to_record(
    p: Publish, created_at: int, seq: int, wire: Mapping[str, bytes] | None = None
) -> OutboxRecord:
    """Serialise an effect into the record that is stored and published (`wire`: the wire
    format's headers of registry subjects, see `serialize_value`)."""
    key = None if p.key is None else _bytes(p.key)
    headers = tuple([(k, None if v is None else _bytes(v)) for k, v in p.headers])
    return OutboxRecord(
        p.observer_id,
        p.category,
        p.topic,
        key,
        serialize_value(p, wire),
        headers,
        p.webhook,
        created_at,
        seq,
    )


_NONE = _LEN.pack(-1)


def encode_record(r: OutboxRecord) -> bytes:
    """Compact, length-prefixed bytes of a record (what the outbox stores)."""
    pack = _LEN.pack
    out = [_HEAD.pack(_FORMAT, r.created_at, r.seq)]
    append = out.append
    topic = None if r.topic is None else r.topic.encode()
    hook = None if r.webhook is None else r.webhook.encode()
    fields: list[bytes | None] = [
        r.observer_id.encode(),
        r.category.encode(),
        topic,
        r.key,
        r.value,
        hook,
    ]
    for b in fields:
        if b is None:
            append(_NONE)
        else:
            append(pack(len(b)))
            append(b)
    append(pack(len(r.headers)))
    for name, value in r.headers:
        nb = name.encode()
        append(pack(len(nb)))
        append(nb)
        if value is None:
            append(_NONE)
        else:
            append(pack(len(value)))
            append(value)
    return b"".join(out)


def decode_record(data: bytes) -> OutboxRecord:
    """Inverse of `encode_record`. Raises ValueError on bytes it did not write."""
    try:
        fmt, created_at, seq = _HEAD.unpack_from(data, 0)
        if fmt != _FORMAT:
            raise ValueError(f"unknown outbox record format {fmt}")
        pos = _HEAD.size
        parts: list[bytes | None] = []

        def take() -> bytes | None:
            nonlocal pos
            (n,) = _LEN.unpack_from(data, pos)
            pos += 4
            if n < 0:
                return None
            if pos + n > len(data):
                raise ValueError("truncated outbox record")
            b = data[pos : pos + n]
            pos += n
            return b

        for _ in range(6):
            parts.append(take())
        (nh,) = _LEN.unpack_from(data, pos)
        pos += 4
        headers = []
        for _ in range(nh):
            name = take()
            headers.append(((name or b"").decode(), take()))
        if pos != len(data):
            raise ValueError("trailing bytes in outbox record")
    except struct.error as exc:
        raise ValueError(f"bad outbox record: {exc}") from None
    oid, cat, topic, key, value, hook = parts
    return OutboxRecord(
        (oid or b"").decode(),
        (cat or b"").decode(),
        None if topic is None else topic.decode(),
        key,
        value,
        tuple(headers),
        None if hook is None else hook.decode(),
        created_at,
        seq,
    )


def oversized(r: OutboxRecord, limits: RecordLimits) -> str | None:
    """Why the broker would refuse `r` as too large (None: it fits). Measured exactly only when
    its key and value make up half the limit (the engine and ingest keep records within it:
    this catches records of an outbox written with a larger limit)."""
    limit = limits.of(r.topic)
    key = 0 if r.key is None else len(r.key)
    value = 0 if r.value is None else len(r.value)
    if 2 * (key + value) <= limit and len(r.headers) < 16:
        return None
    size = record_bytes(key, value, header_bytes(r.headers))
    if size <= limit:
        return None
    return f"the record of {size} bytes is larger than topic {r.topic!r} accepts ({limit} bytes)"


def refused_dead_letter(r: OutboxRecord, error: str, topics: Topics) -> OutboxRecord | None:
    """What takes the place of a record the broker refuses for good: its dead letter (the
    record, its value cut to fit if need be, with `observer-error` and `observer-target-topic`
    and an `observer-id` of its own); for a dead letter, the same without its value; None for a
    dead letter without a value (nothing left to cut: it is dropped). The outbox entry keeps
    its id (`observer_id`), so the dead letter's acknowledgement removes the record."""
    if r.category == "dlq":
        if not r.value:
            return None
        note = (TRUNCATED_HEADER, f"value of {len(r.value)} bytes left out: {error}"[:200].encode())
        return OutboxRecord(
            r.observer_id,
            "dlq",
            r.topic,
            r.key,
            None,
            (*r.headers, note),
            None,
            r.created_at,
            r.seq,
        )
    oid = observer_id("", 0, "", r.observer_id, None, "refused")
    ours: tuple[tuple[str, bytes | None], ...] = (
        ("observer-error", f"the broker refused the record: {error}"[:1000].encode()),
        ("observer-target-topic", (r.topic or "").encode()),
        ("observer-id", oid.encode()),
    )
    original = tuple(h for h in r.headers if h[0] != "observer-id")
    key, value, headers = fit_dead_letter(
        r.key, r.value, (*original, *ours), topics.limits.of(topics.dlq), keep=len(ours)
    )
    fitted = tuple((n, v if isinstance(v, bytes | None) else str(v).encode()) for n, v in headers)
    return OutboxRecord(
        r.observer_id, "dlq", topics.dlq, key, value, fitted, None, r.created_at, r.seq
    )


@dataclass(slots=True)
class _Entry:
    shard: int
    record: OutboxRecord
    attempts: int = 0
    retry_at: int | None = None


@dataclass(slots=True)
class InFlight:
    """Records handed to the producer (or webhook worker) and not yet acknowledged.

    `delivered` moves a record to the acked list, whose ids the next store write deletes from
    the outbox; `failed` schedules a retry with exponential backoff (ms), capped.
    """

    backoff_ms: int = 500
    backoff_max_ms: int = 30_000
    _pending: dict[str, _Entry] = field(default_factory=dict)
    _acked: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, oid: object) -> bool:
        return oid in self._pending

    def sent(self, shard: int, record: OutboxRecord) -> None:
        """A record was handed over; a record sent again (recovery) keeps its attempt count."""
        entry = self._pending.get(record.observer_id)
        if entry is None:
            self._pending[record.observer_id] = _Entry(shard, record)
        else:
            entry.retry_at = None

    def record(self, oid: str) -> OutboxRecord | None:
        entry = self._pending.get(oid)
        return None if entry is None else entry.record

    def replace(self, oid: str, record: OutboxRecord) -> None:
        """Send `record` in place of the one of entry `oid` (its dead letter): the entry's
        acknowledgement is then the new record's."""
        entry = self._pending.get(oid)
        if entry is not None:
            entry.record = record
            entry.attempts = 0
            entry.retry_at = None

    def delivered(self, oid: str) -> None:
        entry = self._pending.pop(oid, None)
        if entry is not None:
            self._acked.append((entry.shard, oid))

    def failed(self, oid: str, now: int) -> int | None:
        """Delivery failed: schedule a retry; returns its time (ms), None if unknown."""
        entry = self._pending.get(oid)
        if entry is None:
            return None
        entry.attempts += 1
        entry.retry_at = now + retry_delay_ms(entry.attempts, self.backoff_ms, self.backoff_max_ms)
        return entry.retry_at

    def due_retries(self, now: int) -> list[tuple[int, OutboxRecord]]:
        """Records whose retry time has come (they count as in flight again)."""
        out = []
        for entry in self._pending.values():
            if entry.retry_at is not None and entry.retry_at <= now:
                entry.retry_at = None
                out.append((entry.shard, entry.record))
        return out

    def has_acked(self) -> bool:
        """Whether records were acknowledged since the last `take_acked`."""
        return bool(self._acked)

    def take_acked(self) -> list[tuple[int, str]]:
        """(shard, observer-id) of acknowledged records since the last call."""
        acked, self._acked = self._acked, []
        return acked

    def restore_acked(self, acked: Iterable[tuple[int, str]]) -> None:
        """Put back acks whose outbox deletion did not reach the store (retried next write)."""
        self._acked[:0] = list(acked)
