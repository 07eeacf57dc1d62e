"""From a source record to engine events, or to a dead letter. Pure: no I/O.

A record is decoded once per format, then every (flow, source) reading its topic extracts
type, key, id, time and captures with compiled selectors. A record that cannot be decoded, or
that a flow wants but lacks its type, key or time, becomes one dead-letter record.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from observer.engine.budget import dropped_capture
from observer.engine.effects import Publish
from observer.engine.ids import observer_id
from observer.engine.state import Event
from observer.flows.aliases import alias_flow
from observer.flows.compiled import CompiledSource
from observer.flows.registry import FlowRegistry
from observer.flows.selectors import MISSING, RecordView, Selector, compile_selector
from observer.jsonexact import INT_MAX, INT_MIN, dumps, loads_exact, may_be_rounded
from observer.limits import MAX_CAPTURE_BYTES, MAX_EVENT_ID_BYTES, MAX_KEY_BYTES
from observer.record_size import fit_dead_letter
from observer.timefmt import MAX_TIME_MS, MIN_TIME_MS, parse_time
from observer.topics import Topics

__all__ = [
    "AvroDecoder",
    "Decoded",
    "Ingest",
    "SourceRecord",
    "ValueDecoder",
    "dead_letter",
    "local_decoder",
]

Headers = Sequence[tuple[str, Any]] | Mapping[str, Any]


@dataclass(slots=True)
class SourceRecord:
    """A record as read from a topic. `value`/`key` are bytes from Kafka; replay may pass a
    decoded JSON object or a str. Header values are bytes or str."""

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: Headers
    timestamp: int


@dataclass(slots=True)
class Decoded:
    """What a record yields: (flow name, event) pairs and at most one dead letter."""

    events: list[tuple[str, Event]] = field(default_factory=list)
    dead_letter: Publish | None = None
    reason: str | None = None
    # correlation health (issue 16): the dead letter's reason as a short code
    # (`correlation.DEAD_LETTER_REASONS`) and the (flow, source) that found it, if one did
    code: str | None = None
    source: tuple[str, str] | None = None
    # hostile input (issue 12): captured values not kept, over MAX_CAPTURE_BYTES (a note each)
    dropped: list[str] | None = None


@dataclass(frozen=True, slots=True)
class _Reader:
    flow: str  # where its events go: the flow, or `<flow>/<alias>` for a `via` source
    source: CompiledSource
    wanted: frozenset[str]  # event types some version of the flow reacts to
    captures: Mapping[str, tuple[tuple[str, Selector], ...]]  # type -> capture selectors
    # types with a capture of a header or the key: measured whatever the value's size
    measured: frozenset[str] = frozenset()
    # hostile input (issue 12): type -> alias value selectors, read exactly beyond 64 bits
    alias_values: Mapping[str, tuple[tuple[str, Selector], ...]] | None = None


# Reads a value of a registry format (avro, protobuf, json_schema) from its bytes; raises on
# a value it cannot read (an error with a `code` attribute names the dead letter's reason).
ValueDecoder = Callable[[bytes, CompiledSource], Any]
AvroDecoder = ValueDecoder  # its name before protobuf and json_schema


def local_decoder(data: bytes, source: CompiledSource) -> Any:
    """Without a schema registry: Avro read schemaless with the source's local schema."""
    import fastavro

    if source.format != "avro":
        raise ValueError(f"no schema registry to read {source.format} (its wire format)")
    if source.avro_schema is None:
        raise ValueError("no Avro schema for this source (set schema: or a schema registry)")
    return fastavro.schemaless_reader(io.BytesIO(data), source.avro_schema)


class Ingest:
    """Decodes source records for every deployed flow. Rebuild it when flows are deployed."""

    def __init__(
        self,
        registry: FlowRegistry,
        topics: Topics | None = None,
        decoder: ValueDecoder | None = None,
    ) -> None:
        self.topics = topics or Topics()
        self.decoder = decoder or local_decoder
        readers: dict[str, dict[tuple[str, str], _Reader]] = {}
        wanted: dict[tuple[str, str], set[str]] = {}
        caps: dict[tuple[str, str], dict[str, dict[str, Selector]]] = {}
        alias_caps: dict[tuple[str, str], dict[str, dict[str, Selector]]] = {}
        for flow in registry:
            for step in flow.steps:
                for src, etype in step.on:
                    wanted.setdefault((flow.name, src), set()).add(etype)
                    per_type = caps.setdefault((flow.name, src), {}).setdefault(etype, {})
                    per_type.update(dict(step.captures))
            for err in flow.errors:
                for src, etype in err.on:
                    wanted.setdefault((flow.name, src), set()).add(etype)
            for alias in flow.aliases:  # a `from` event carries the alias value: captured
                for src, etype in alias.on:
                    wanted.setdefault((flow.name, src), set()).add(etype)
                    per_type = caps.setdefault((flow.name, src), {}).setdefault(etype, {})
                    per_type[alias.value] = compile_selector(alias.value)
                    exact = alias_caps.setdefault((flow.name, src), {}).setdefault(etype, {})
                    exact[alias.value] = per_type[alias.value]
        for flow in registry.newest_flows() + list(registry):
            for source in flow.sources.values():
                slot = readers.setdefault(source.topic, {})
                if (flow.name, source.name) not in slot:
                    c = caps.get((flow.name, source.name), {})
                    slot[(flow.name, source.name)] = _Reader(
                        flow.name if source.via is None else alias_flow(flow.name, source.via),
                        source,
                        frozenset(wanted.get((flow.name, source.name), ())),
                        {t: tuple(sel.items()) for t, sel in c.items()},
                        frozenset(
                            t for t, sel in c.items() if any(not n.startswith("value") for n in sel)
                        ),
                        {
                            t: tuple(sel.items())
                            for t, sel in alias_caps.get((flow.name, source.name), {}).items()
                        }
                        or None,
                    )
        self._readers = {t: tuple(r.values()) for t, r in readers.items()}
        # topics every flow reads as JSON: their captured values are JSON's types already
        self.json_topics = frozenset(
            t for t, rs in self._readers.items() if all(r.source.format == "json" for r in rs)
        )

    def topic_names(self) -> list[str]:
        return sorted(self._readers)

    def decode(self, rec: SourceRecord) -> Decoded:
        """Decode one record into events for the flows that want it, or a dead letter."""
        out = Decoded()
        readers = self._readers.get(rec.topic)
        if not readers:
            return out
        headers = _headers(rec.headers)
        view: RecordView | None = None
        view_fmt = ""
        views: dict[str, RecordView] | None = None
        for r in readers:
            source = r.source
            fmt = source.format
            if view is None:
                try:
                    value = self._decode_value(rec.value, source)
                except Exception as exc:
                    return self._undecodable(rec, fmt, exc)
                view = RecordView(value, headers, rec.key, rec.timestamp)
                view_fmt = fmt
            elif fmt != view_fmt:  # another flow reads this topic in another format
                if views is None:
                    views = {view_fmt: view}
                other = views.get(fmt)
                if other is None:
                    try:
                        value = self._decode_value(rec.value, source)
                    except Exception as exc:
                        return self._undecodable(rec, fmt, exc)
                    other = views[fmt] = RecordView(value, headers, rec.key, rec.timestamp)
                view, view_fmt = other, fmt
            try:
                etype = source.type(view)
                if type(etype) is not str or not etype:
                    etype = _text_of(etype, _NO_TYPE, source.type_text, source, source.type, rec)
                if etype not in r.wanted:
                    continue
                key = source.key(view)
                if type(key) is not str or not key:
                    key = _text_of(key, _NO_KEY, source.key_text, source, source.key, rec)
                eid: Any = MISSING if source.id is None else source.id(view)
                if type(eid) is not str:
                    eid = _event_id(eid, source, rec)
                if len(key) > _SHORT or len(eid) > _SHORT:
                    _check_lengths(key, eid, source)
            except _Dead as dead:
                return self._dead(rec, dead.reason, dead.code, (r.flow, source.name))
            raw_time = source.time(view)
            if type(raw_time) is int and MIN_TIME_MS <= raw_time < MAX_TIME_MS:
                time = raw_time
            else:
                where = (r.flow, source.name)
                if raw_time is MISSING:
                    return self._dead(rec, f"no event time at {source.time_text}", "no_time", where)
                try:
                    time = parse_time(raw_time)
                except ValueError as bad_time:
                    reason = f"bad event time at {source.time_text}: {bad_time}"
                    return self._dead(rec, reason, "no_time", where)
            sels = r.captures.get(etype)
            captures: dict[str, Any] = {}
            if sels:
                raw = rec.value  # bytes from Kafka; replay passes decoded JSON
                decoded = type(raw) is not bytes and not isinstance(raw, _ENCODED)
                for sel, fn in sels:
                    v = fn(view)
                    if v is MISSING:
                        v = None
                    elif decoded:
                        v = _as_orjson_reads(v)
                    captures[sel] = v
                if r.alias_values is not None and etype in r.alias_values:
                    _exact_alias_values(captures, r.alias_values[etype], source, rec)
                if (
                    not (type(raw) is bytes and len(raw) * 6 <= MAX_CAPTURE_BYTES)
                    or etype in r.measured
                ):
                    self._fit_captures(out, r.flow, etype, eid, captures)
            out.events.append((r.flow, Event(source.name, etype, key, eid, time, captures)))
        return out

    def _decode_value(self, value: Any, source: CompiledSource) -> Any:
        if source.format == "json":
            if type(value) is bytes or isinstance(value, bytes | bytearray | memoryview | str):
                return orjson.loads(value)
            return value
        if source.format != "avro" and not isinstance(value, _ENCODED):
            return value  # protobuf, json_schema: already decoded (replay's JSON objects)
        if isinstance(value, str):
            value = base64.b64decode(value, validate=True)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError("an Avro value must be bytes (base64 text in replay)")
        return self.decoder(bytes(value), source)

    @staticmethod
    def _fit_captures(
        out: Decoded, flow: str, etype: str, eid: str, captures: dict[str, Any]
    ) -> None:
        """Keep an event's captured values within MAX_CAPTURE_BYTES together (as JSON), in
        capture order; a value that does not fit is kept as `dropped_capture` (which templates
        cannot use), with a note. (Not measured when the record itself is small enough: JSON
        writes a byte in at most 6.)"""
        total = 0
        for sel, v in captures.items():
            n = _json_bytes(v)
            if total + n <= MAX_CAPTURE_BYTES:
                total += n
                continue
            captures[sel] = dropped_capture(n)
            if out.dropped is None:
                out.dropped = []
            out.dropped.append(
                f"flow {flow}: {etype} {eid[:200]}: captured {sel} ({n} bytes) not kept: an "
                f"event's captured values may hold {MAX_CAPTURE_BYTES} bytes together"
            )

    def _dead(
        self, rec: SourceRecord, reason: str, code: str, where: tuple[str, str] | None = None
    ) -> Decoded:
        return Decoded([], dead_letter(rec, reason, self.topics), reason, code, where)

    def _undecodable(self, rec: SourceRecord, fmt: str, exc: Exception) -> Decoded:
        """A value that cannot be decoded; a decoder's error may name its own reason code
        (`code`, e.g. `schema` for a schema the registry would not give)."""
        code = getattr(exc, "code", None)
        return self._dead(
            rec, f"cannot decode {fmt} value: {exc}", code if type(code) is str else "undecodable"
        )


def _headers(raw_headers: Any) -> Mapping[str, Any]:
    """A record's headers by name (the last of repeated ones)."""
    kind = type(raw_headers)
    if kind is list or kind is tuple:  # confluent-kafka's [(name, bytes), ...]
        return dict(raw_headers)
    if kind is dict or isinstance(raw_headers, Mapping):  # no ABC check for a dict
        return raw_headers  # type: ignore[no-any-return]
    return dict(raw_headers)


class _Dead(Exception):
    """A record goes to the dead-letter topic for `reason` (`code`: its short form)."""

    def __init__(self, reason: str, code: str) -> None:
        self.reason = reason
        self.code = code


_ENCODED = (bytes, bytearray, memoryview, str)
_SHORT = min(MAX_KEY_BYTES, MAX_EVENT_ID_BYTES) // 4  # this many characters fit in UTF-8
_MAX_REASON = 1000  # characters of a dead letter's `observer-error`


def _check_lengths(key: str, eid: str, source: CompiledSource) -> None:
    """Raise _Dead for a key or event id longer than the limits (bytes of UTF-8)."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _Dead(
            f"correlation key at {source.key_text} longer than {MAX_KEY_BYTES} bytes", "too_large"
        )
    if len(eid.encode("utf-8", "surrogatepass")) > MAX_EVENT_ID_BYTES:
        raise _Dead(f"event id longer than {MAX_EVENT_ID_BYTES} bytes", "too_large")


def _json_bytes(value: Any) -> int:
    """Bytes of a captured value as JSON (as the state store keeps it)."""
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float:
        return 24
    if kind is str and len(value) * 6 + 2 <= MAX_CAPTURE_BYTES // 64:
        return len(value) * 6 + 2  # short text: the bound is enough
    try:
        return len(dumps(value))
    except (TypeError, ValueError):
        return MAX_CAPTURE_BYTES + 1


# what is missing; whether a boolean counts as text; the reason code
_NO_TYPE = ("no event type", True, "no_type")
_NO_KEY = ("no correlation key", False, "no_key")


def _exact(source: CompiledSource, selector: Selector, rec: SourceRecord) -> Any:
    """What `selector` reads from `rec` with its JSON value decoded again keeping integers of
    any size exact (orjson rounds those beyond 64 bits to floats, merging distinct keys)."""
    value = rec.value
    if source.format != "json":
        return selector(RecordView(value, {}, rec.key, rec.timestamp))
    if isinstance(value, _ENCODED):
        value = loads_exact(value)
    headers = rec.headers if isinstance(rec.headers, Mapping) else dict(rec.headers)
    return selector(RecordView(value, headers, rec.key, rec.timestamp))


def _text_of(
    value: Any,
    what: tuple[str, bool, str],
    where: str,
    source: CompiledSource,
    selector: Selector,
    rec: SourceRecord,
) -> str:
    """A type or key that is not a non-empty string, as text; raises _Dead if there is none.
    A number is its exact decimal text, also beyond 64 bits."""
    if may_be_rounded(value):
        value = _exact(source, selector, rec)
    if type(value) is str:
        if value:
            return value
    elif not (value is MISSING or value is None or isinstance(value, dict | list)) and (
        what[1] or not isinstance(value, bool)
    ):
        return str(value)
    raise _Dead(f"{what[0]} at {where}", what[2])


def _event_id(value: Any, source: CompiledSource, rec: SourceRecord) -> str:
    """The event id read, as exact text; topic/partition/offset when there is none."""
    if source.id is not None and may_be_rounded(value):
        value = _exact(source, source.id, rec)
    if value is MISSING or value is None or isinstance(value, dict | list):
        return f"{rec.topic}/{rec.partition}/{rec.offset}"
    return value if type(value) is str else str(value)


def _exact_alias_values(
    captures: dict[str, Any],
    selectors: tuple[tuple[str, Selector], ...],
    source: CompiledSource,
    rec: SourceRecord,
) -> None:
    """An alias value is a correlation key: an integer beyond 64 bits (which orjson, and
    state, keep only as the nearest float, merging 10^30 and 10^30 + 1) is kept as its exact
    decimal text, the text a `via` source's key of the same number reads as."""
    for sel, fn in selectors:
        if may_be_rounded(captures.get(sel)):
            exact = _exact(source, fn, rec)
            if type(exact) is int:
                captures[sel] = str(exact)


def _as_orjson_reads(value: Any) -> Any:
    """A captured value of already decoded JSON (replay) as orjson would have read it from
    bytes: integers beyond its 64-bit range become the nearest float, so state holds only what
    the store can encode and replay keeps what `observer run` would."""
    kind = type(value)
    if kind is int:
        return value if INT_MIN <= value <= INT_MAX else float(value)
    if kind is list:
        return [_as_orjson_reads(v) for v in value]
    if kind is dict:
        return {k: _as_orjson_reads(v) for k, v in value.items()}
    return value


def dead_letter(rec: SourceRecord, reason: str, topics: Topics) -> Publish:
    """The dead letter of a record: its original key, value and headers, plus the observer's
    headers (the reason and where it was read); its observer-id depends only on where."""
    where = f"{rec.topic}/{rec.partition}/{rec.offset}"
    oid = observer_id("", 0, "", where, None, "dlq")
    original = list(rec.headers.items()) if isinstance(rec.headers, Mapping) else list(rec.headers)
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 1] + "…"
    ours = (
        ("observer-error", reason),
        ("observer-source-topic", rec.topic),
        ("observer-source-partition", str(rec.partition)),
        ("observer-source-offset", str(rec.offset)),
        ("observer-id", oid),
    )
    headers = (*tuple((str(k), v) for k, v in original), *ours)
    key, value = rec.key, rec.value
    raw_key = _raw(key)
    raw_value = _raw(value)
    fkey, fvalue, fheaders = fit_dead_letter(
        raw_key, raw_value, headers, topics.limits.of(topics.dlq), keep=len(ours)
    )
    if fvalue is not raw_value or fkey is not raw_key or len(fheaders) != len(headers):
        value, headers = fvalue, fheaders  # cut to fit: published as bytes
        if fkey is not raw_key:
            key = fkey
    return Publish("dlq", topics.dlq, key, value, headers, oid)


def _raw(value: Any) -> bytes | None:
    """A record's key or value as the bytes published (replay passes text or decoded JSON)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return dumps(value)
