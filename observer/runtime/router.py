"""`Router`, stage one: source topics -> the keyed topic (see `keyed.py` for why).

It reads the source topics in the user's consumer group, decodes each record (`Ingest`),
writes each (flow, key) event to its shard's keyed partition and each bad record to the
dead-letter topic, and commits a batch's source offsets once everything it wrote was
acknowledged (`commits.py` keeps the assignment and commits). Keyed records carry no
timestamp of their own (the broker stamps them, which is what the keyed topic's retention
should go by); event time travels inside them. Every `mark_interval_ms` it sends the watermark
of each source partition it reads to every keyed partition. The producer retries for as long as
it takes (a broker restart is waited out); a record it could not write at all is a fatal error,
since going on would let deadlines fire without it.

Owned by the loop's thread, like everything it holds; `poll` is called once per turn of the
loop, before the tracker's.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from observer.config import ObserverConfig
from observer.correlation import Count
from observer.engine.effects import Publish
from observer.engine.state import Event
from observer.errors import ObserverError
from observer.ingest import Ingest, SourceRecord
from observer.metrics import Metrics
from observer.record_size import record_bytes
from observer.runtime.batch import dead_letter
from observer.runtime.commits import OffsetCommits
from observer.runtime.every import Every
from observer.runtime.keyed import Routed, encode_event, encode_mark
from observer.runtime.outbox import serialize_value
from observer.runtime.ports import Clock, EventSource, RawSink
from observer.runtime.tally import MinuteTally
from observer.runtime.watermark import TopicPartition, Watermarks

__all__ = ["Router"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    """Source records routed together: committable once nothing of theirs is unacknowledged."""

    offsets: dict[TopicPartition, int]
    outstanding: int
    closed: bool = False


def _keyed_values(
    events: list[tuple[str, Event]], rec: SourceRecord, shards: int, plain: bool
) -> tuple[list[tuple[int, Any]], int]:
    """(shard, keyed value) of each event of a record, and the largest value's size: the event
    as it is (`plain`: the keyed topic is in memory and the record JSON) or its JSON."""
    values: list[tuple[int, Any]] = []
    crc32 = zlib.crc32
    if plain:  # direct routing: no JSON round trip
        for flow, ev in events:
            # = shard_of(slot_id(flow, ev.key), shards), inlined: once per event
            sid = f"{flow}:{ev.key}".encode("utf-8", "surrogatepass")
            routed = Routed(flow, ev, rec.topic, rec.partition, rec.offset)
            values.append((crc32(sid) % shards, routed))
        return values, 0
    largest = 0
    for flow, ev in events:
        value = encode_event(flow, ev, rec.topic, rec.partition, rec.offset)
        largest = max(largest, len(value))
        sid = f"{flow}:{ev.key}".encode("utf-8", "surrogatepass")
        values.append((crc32(sid) % shards, value))
    return values, largest


class Router:
    """Routes source records to the keyed topic. A rebalance listener of its source."""

    def __init__(
        self,
        config: ObserverConfig,
        ingest: Ingest,
        *,
        source: EventSource,
        sink: RawSink,
        metrics: Metrics,
        clock: Clock,
        keyed_topic: str,
        tally: MinuteTally | None = None,
    ) -> None:
        self.config = config
        self.tally = tally  # correlation health: records read, ignored, dead letters
        self.ingest = ingest
        self.topics = config.topics()
        self.source = source
        self.sink = sink
        # the in-memory keyed topic of direct routing takes `Routed` events as they are
        self._in_memory: bool = getattr(sink, "keeps_objects", False)
        self.metrics = metrics
        self.clock = clock
        self.keyed_topic = keyed_topic
        self.shards = config.shards
        self.watermarks = Watermarks(config.idle_grace_ms)
        self.commits = OffsetCommits("router", source, self.watermarks, metrics, clock.monotonic)
        self._batches: deque[_Batch] = deque()
        self._failed: str | None = None
        self._mark_every = Every(config.mark_interval_ms / 1000.0, clock.monotonic)
        # With direct routing marks stay in memory: cheap enough to follow every batch read, so
        # a deadline fires without waiting for the next interval (which still applies while
        # nothing is read: an idle partition's watermark moves with the clock).
        self._marks_follow_reads = config.routing == "direct"
        # Through the broker, marks follow a batch read too, but at most every quarter interval
        # (16 keyed records each): a deadline waits ~5 ms for its mark instead of up to 20.
        self._mark_after_read = Every(config.mark_interval_ms / 4000.0, clock.monotonic)
        self._commit_every = Every(config.commit_interval_ms / 1000.0, clock.monotonic)
        self._subscribed = False

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._subscribed = True
        self.source.subscribe(self.ingest.topic_names(), self)

    def deploy(self, ingest: Ingest) -> None:
        """Decode with the flows of a new deployment; subscribe to the topics it reads when
        they changed (a rebalance assigns new ones, revokes those no flow reads any more)."""
        before = self.ingest.topic_names()
        self.ingest = ingest
        topics = ingest.topic_names()
        if topics != before and self._subscribed:
            log.info("router: now reading %s", ", ".join(topics))
            self.source.subscribe(topics, self)

    def close(self, timeout_s: float) -> None:
        """Flush what was routed, commit it, leave the group."""
        remaining = self.sink.flush(timeout_s)
        if remaining:
            log.warning("%d routed records not acknowledged at shutdown; not committed", remaining)
        self._settle()
        self.commits.commit(wait=True)
        self.source.close()
        self.sink.close()

    # -- rebalance listener ---------------------------------------------------------------------------

    def assigned(self, tps: list[TopicPartition]) -> None:
        self.commits.assigned(tps)
        log.info("router: assigned %s", _fmt(tps))

    def revoked(self, tps: list[TopicPartition]) -> None:
        # Everything routed from them must be acknowledged before their offsets are committed.
        remaining = self.sink.flush(self.config.shutdown_timeout_ms / 1000.0)
        self._settle()
        if remaining:
            log.warning("router: %d routed records unacknowledged at revocation", remaining)
        self.commits.revoked(tps)
        self.metrics.forget_partitions(tps)
        log.info("router: revoked %s", _fmt(tps))

    def lost(self, tps: list[TopicPartition]) -> None:
        self.commits.lost(tps)
        self.metrics.forget_partitions(tps)
        log.warning("router: lost %s (not committing)", _fmt(tps))

    def commit_done(self, error: str | None, offsets: dict[TopicPartition, int]) -> None:
        self.commits.commit_done(error, offsets)

    # -- one turn -----------------------------------------------------------------------------------

    def poll(self, timeout_s: float, read: bool = True) -> int:
        """Read and route one batch (unless `read` is False: the tracker is behind), send
        marks when due, commit what is acknowledged. Returns how many source records were read."""
        records = self.source.poll(self.config.batch_size, timeout_s) if read else []
        if records:
            self._route(records)
        self.sink.poll(0)
        if self._failed is not None:
            raise ObserverError(
                f"cannot write to the keyed topic {self.keyed_topic}: {self._failed}"
            )
        self._settle()
        if self._mark_every.due() or (
            records and (self._marks_follow_reads or self._mark_after_read.due())
        ):
            self._mark_every.restart()
            self._mark_after_read.restart()
            self._send_marks()
        if self._commit_every.due():
            self.commits.commit(wait=False)
        return len(records)

    def _observe(self, records: Sequence[SourceRecord]) -> dict[TopicPartition, int]:
        """One pass for the newest offset and read time per partition (both only move
        forward), told to the watermarks; returns the offsets to commit once routed."""
        seen: dict[TopicPartition, tuple[int, int]] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            prev = seen.get(tp)
            if prev is None or rec.offset > prev[0] or rec.timestamp > prev[1]:
                seen[tp] = (
                    rec.offset if prev is None or rec.offset > prev[0] else prev[0],
                    rec.timestamp if prev is None or rec.timestamp > prev[1] else prev[1],
                )
        observe = self.watermarks.observe
        for (topic, partition), (offset, ts) in seen.items():
            observe(topic, partition, offset, ts)
        return {tp: off + 1 for tp, (off, _ts) in seen.items()}

    def _route(self, records: Sequence[SourceRecord]) -> None:
        """Route one batch. Only the last record of each keyed partition asks for a delivery
        report: the idempotent producer acknowledges a partition's records in order, so that
        one stands for all before it (a Python callback per record would cost more than the
        rest of routing)."""
        batch = _Batch(self._observe(records), 0)
        self._batches.append(batch)
        shards = self.shards
        decode = self.ingest.decode
        outcomes: Counter[tuple[str, str]] = Counter()
        reasons: Counter[Count] = Counter()  # dead letters by topic and reason; key-less...
        routed: list[tuple[int, Any, Callable[[str | None], None] | None]] = []
        last: dict[int, int] = {}
        keyed_limit = self.topics.limits.of(self.keyed_topic)
        # A keyed topic kept in memory (direct routing) takes events as they are from topics
        # read as JSON only: their captured values are what a JSON round trip would give.
        plain = self.ingest.json_topics if self._in_memory else frozenset()
        for rec in records:
            try:
                d = decode(rec)
            except Exception as exc:
                log.exception(
                    "cannot decode record",
                    extra={"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
                )
                self.metrics.processing_errors.labels("decode").inc()
                reason = f"cannot decode: {type(exc).__name__}: {exc}"
                self._dead(batch, dead_letter(rec, reason, self.topics))
                outcomes[(rec.topic, "dead_letter")] += 1
                reasons[("topic", rec.topic, "dead_letter", "processing")] += 1
                continue
            if d.dead_letter is not None:
                self._dead(batch, d.dead_letter)
                outcomes[(rec.topic, "dead_letter")] += 1
                reasons[("topic", rec.topic, "dead_letter", d.code or "undecodable")] += 1
                if d.source is not None and d.code is not None:
                    reasons[("src", d.source[0], d.source[1], d.code)] += 1
                continue
            events = d.events
            if not events:
                outcomes[(rec.topic, "ignored")] += 1
                continue
            if d.dropped:
                self._captures_dropped(d.dropped, rec)
            values, largest = _keyed_values(events, rec, shards, rec.topic in plain)
            if largest and record_bytes(0, largest, 0) > keyed_limit:  # bounded captures: never
                reason = f"the event is larger than the keyed topic accepts ({keyed_limit} bytes)"
                self._dead(batch, dead_letter(rec, reason, self.topics))
                outcomes[(rec.topic, "dead_letter")] += 1
                reasons[("topic", rec.topic, "dead_letter", "too_large")] += 1
                continue
            outcomes[(rec.topic, "applied")] += 1
            for shard, value in values:
                last[shard] = len(routed)
                routed.append((shard, value, None))
        if routed:
            done = partial(self._delivered, batch)
            for i in last.values():
                routed[i] = (routed[i][0], routed[i][1], done)
            batch.outstanding += len(last)
            self.sink.produce_values(self.keyed_topic, routed)
        batch.closed = True
        self.metrics.record_events(outcomes)
        self._count(outcomes, reasons)

    def _count(self, outcomes: Counter[tuple[str, str]], counts: Counter[Count]) -> None:
        """Correlation health of a routed batch: records read and ignored per topic, dead
        letters by reason, events without key, type or time per (flow, source)."""
        for (topic, outcome), n in outcomes.items():
            counts[("topic", topic, "read", "")] += n
            if outcome == "ignored":
                counts[("topic", topic, "ignored", "")] += n
        self.metrics.record_correlation(counts)
        if self.tally is not None:
            self.tally.add(counts)

    def _captures_dropped(self, notes: list[str], rec: SourceRecord) -> None:
        """Captured values kept as null (over the capture budget): logged and counted."""
        self.metrics.budget_drops.labels("capture").inc(len(notes))
        where = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
        for note in notes:
            log.warning("%s", note, extra=where)

    def _dead(self, batch: _Batch, p: Publish) -> None:
        batch.outstanding += 1
        self.sink.produce(
            p.topic or self.topics.dlq,
            None,
            p.key if isinstance(p.key, bytes) or p.key is None else str(p.key).encode(),
            serialize_value(p),
            p.headers,
            None,
            partial(self._delivered, batch),
        )

    def _delivered(self, batch: _Batch, error: str | None) -> None:
        if error is not None:
            self._failed = error
            return
        batch.outstanding -= 1

    def _settle(self) -> None:
        """Batches fully acknowledged, oldest first, make their offsets committable."""
        batches = self._batches
        while batches and batches[0].closed and batches[0].outstanding == 0:
            self.commits.written(batches.popleft().offsets)

    # -- watermarks ---------------------------------------------------------------------------------

    def _send_marks(self) -> None:
        wms = self.watermarks
        if not wms.partitions:
            return
        for tp, (low, high, pos) in self.source.offsets(list(wms.partitions)).items():
            wms.offsets(tp, low, high, pos)
        now = self.clock.now_ms()
        known = []
        for tp in wms.partitions:
            wm = wms.partition_watermark(tp, now)
            if wm is not None:
                known.append((tp[0], tp[1], wm))
        self.metrics.set_lag({tp: st.lag() for tp, st in wms.partitions.items()})
        if not known:
            return
        value = encode_mark(known)
        self.sink.produce_values(self.keyed_topic, [(s, value, None) for s in range(self.shards)])

    def lag(self) -> int:
        """Records not read yet on the assigned source partitions (as last fetched)."""
        return self.watermarks.lag()


def _fmt(tps: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))
