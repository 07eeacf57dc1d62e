"""How large a record is, how large each topic accepts, and how a dead letter is cut to fit.

A leaf module: the engine (action and alert records), ingest (dead letters of source records)
and the runtime (records the broker refuses) measure records the same way, so `observer
replay` and `observer run` agree on which record is too large. Sizes are an upper bound of a
record's size in a batch of its own, uncompressed: what the broker compares with
`max.message.bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "TRUNCATED_HEADER",
    "RecordLimits",
    "fit_dead_letter",
    "header_bytes",
    "record_bytes",
]

DEFAULT_MAX_RECORD_BYTES = 1_048_588
"""Kafka's default `message.max.bytes` (and so every topic's default `max.message.bytes`)."""

TRUNCATED_HEADER = "observer-truncated"
"""Added to a dead letter that was cut to fit: what was cut, from how many bytes to how many."""

_RECORD_OVERHEAD = 100  # a batch of one record: the batch header and the record's varints
_HEADER_OVERHEAD = 10  # the two length varints of a header

Header = tuple[str, str | bytes | None]


def _len(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    return len(str(value).encode("utf-8", "surrogatepass"))


def header_bytes(headers: Iterable[tuple[str, object]]) -> int:
    """Bytes of record headers as `record_bytes` counts them (text as UTF-8)."""
    return sum(_len(name) + _len(value) + _HEADER_OVERHEAD for name, value in headers)


def record_bytes(key: int, value: int, headers: int) -> int:
    """The size of a record with a key, a value and headers of these sizes (bytes; headers as
    `header_bytes` counts them), in a batch of its own, uncompressed."""
    return _RECORD_OVERHEAD + key + value + headers


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """The largest record (bytes, as `record_bytes` counts) a topic accepts: `default` for any
    topic, lower for the topics in `topics` (what the broker said about them)."""

    default: int = DEFAULT_MAX_RECORD_BYTES
    topics: tuple[tuple[str, int], ...] = ()
    _by_topic: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_topic", {t: min(n, self.default) for t, n in self.topics})

    def of(self, topic: str | None) -> int:
        """The limit of `topic` (bytes)."""
        if topic is None:
            return self.default
        return self._by_topic.get(topic, self.default)


def _cut(data: bytes, by: int) -> bytes:
    return data[: max(len(data) - by, 0)]


def fit_dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header],
    limit: int,
    keep: int = 0,
) -> tuple[bytes | None, bytes | None, tuple[Header, ...]]:
    """A dead letter within `limit`: as it is if it fits; else its value is cut (its headers
    kept, plus `observer-truncated` saying so). Only if the key and headers alone are too
    large, the key is cut too, then the values of the headers before the last `keep` (the
    observer's own, which are never cut), largest first."""
    hdrs = list(headers)
    size = record_bytes(_len(key), _len(value), header_bytes(hdrs))
    if size <= limit:
        return key, value, tuple(hdrs)
    cut: list[str] = []
    note_room = len(TRUNCATED_HEADER) + _HEADER_OVERHEAD + 120
    over = size - limit + note_room
    if value:
        kept = _cut(bytes(value), over)
        cut.append(f"value {len(value)} bytes to {len(kept)}")
        over -= len(value) - len(kept)
        value = kept
    if over > 0 and key:
        kept = _cut(bytes(key), over)
        cut.append(f"key {len(key)} bytes to {len(kept)}")
        over -= len(key) - len(kept)
        key = kept
    originals = len(hdrs) - keep
    order = sorted(range(originals), key=lambda i: -_len(hdrs[i][1]))
    for i in order:
        if over <= 0:
            break
        name, v = hdrs[i]
        if not v:
            continue
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass")
        kept = _cut(raw, over)
        cut.append(f"header {name[:40]!r} {len(raw)} bytes to {len(kept)}")
        over -= len(raw) - len(kept)
        hdrs[i] = (name, kept)
    note = "; ".join(cut)
    if len(note) > 120:
        note = note[:119] + "…"
    return key, value, (*hdrs, (TRUNCATED_HEADER, note))
