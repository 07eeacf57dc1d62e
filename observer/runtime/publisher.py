"""`Publisher`: hands the tracker's outbox records over, and follows them until acknowledged.

A record goes to the webhook workers if it names a webhook, else to the producer (`_dispatch`,
the one place that chooses). `InFlight` keeps every record handed over until the broker (or
the webhook) acknowledged it; acknowledged records are then deleted from the store's outbox by
the next write (`writes.py` takes them). A record the broker refused is handed over again after
a backoff; records found in a shard's outbox (after a crash, a store failure, or from a previous
owner) are handed over again with their own ids, oldest first.

A record the broker refuses for good (too large, invalid: `final` in the delivery report), or
that is larger than its topic accepts before it is even sent, never stops the loop nor stays in
the outbox: its dead letter takes its place (`outbox.refused_dead_letter`), and the outbox entry
goes once that is acknowledged.

Delivery reports arrive inside `serve` (the producer's poll), on the loop's thread.

Hop records (aliases: messages between slots, `hops.py`) go to the keyed topic through `hops`,
its producer (the router's, which never gives a record up; or the keyed topic in memory with
direct routing). Their order per partition is what hop marks rely on, so a hop the producer
could not deliver is not retried out of order: `hop_failed` says so and the tracker stops.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial

from observer.metrics import Metrics
from observer.runtime.hops import HOP_CATEGORY, hop_partition
from observer.runtime.outbox import (
    InFlight,
    OutboxRecord,
    decode_record,
    oversized,
    refused_dead_letter,
)
from observer.runtime.ports import Clock, RawSink, RecordSink, WebhookSender
from observer.topics import Topics

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

_RETRY_BACKOFF_MAX_MS = 30_000


class Publisher:
    """The tracker's producer and webhook workers, and the records in flight between them."""

    def __init__(
        self,
        sink: RecordSink,
        webhooks: WebhookSender,
        metrics: Metrics,
        clock: Clock,
        *,
        retry_backoff_ms: int,
        topics: Topics | None = None,
        hops: RawSink | None = None,
        shards: int = 1,
    ) -> None:
        self.sink = sink
        self.topics = topics or Topics()  # dead letters of refused records, and record limits
        self.hops = hops  # aliases: the keyed topic's producer, for hop records
        self.shards = shards
        self.hop_failed: str | None = None
        self.webhooks = webhooks
        self.metrics = metrics
        self.clock = clock
        self.inflight = InFlight(retry_backoff_ms, _RETRY_BACKOFF_MAX_MS)
        self._published: Counter[str] = Counter()  # acknowledged since the last `count`

    def __len__(self) -> int:
        """Records handed over and not acknowledged yet."""
        return len(self.inflight)

    def start(self) -> None:
        self.webhooks.start()

    def publish(self, records: Sequence[tuple[int, OutboxRecord]]) -> None:
        """Hand (shard, record) pairs over, in order."""
        sent = self.inflight.sent
        for shard, rec in records:
            sent(shard, rec)
            self._dispatch(shard, rec)

    def republish(self, entries: Iterable[tuple[int, str, bytes]]) -> None:
        """Hand over again the (shard, observer-id, record) entries of an outbox that are not
        in flight already, oldest first."""
        found: list[tuple[int, OutboxRecord]] = []
        for shard, oid, data in entries:
            if oid in self.inflight:
                continue
            try:
                found.append((shard, decode_record(data)))
            except ValueError as exc:
                log.error("outbox entry %s cannot be decoded (%s); left in place", oid, exc)
        if found:
            found.sort(key=lambda x: (x[1].created_at, x[1].seq))
            log.info("publishing %d records left in the outbox", len(found))
            self.publish(found)

    def _dispatch(self, shard: int, rec: OutboxRecord) -> None:
        if rec.webhook is not None:
            self.webhooks.submit(shard, rec)
        elif rec.category == HOP_CATEGORY and rec.topic is not None and self.hops is not None:
            partition = hop_partition(rec, self.shards)
            done = partial(self._on_hop_delivery, rec.observer_id)
            self.hops.produce_values(rec.topic, [(partition, rec.value or b"", done)])
        else:
            too_large = oversized(rec, self.topics.limits)
            if too_large is not None:
                self._refused(rec.observer_id, too_large)
            else:
                self.sink.send(rec, self._on_delivery)

    def _on_hop_delivery(self, oid: str, error: str | None) -> None:
        if error is None:
            self.inflight.delivered(oid)
        elif self.hop_failed is None:
            self.hop_failed = error

    def _on_delivery(self, oid: str, error: str | None, final: bool = False) -> None:
        rec = self.inflight.record(oid)
        if error is None:
            if rec is not None:
                self._published[rec.category] += 1
            self.inflight.delivered(oid)
            return
        if final:
            self._refused(oid, error)
            return
        category = rec.category if rec is not None else "?"
        self.metrics.publish_failures.labels(category).inc()
        retry_at = self.inflight.failed(oid, self.clock.now_ms())
        log.warning(
            "delivery of %s record %s failed (%s); retrying at %s",
            category,
            oid,
            error,
            retry_at,
            extra={"observer_id": oid},
        )

    def _refused(self, oid: str, error: str) -> None:
        """The record of outbox entry `oid` can never be published: its dead letter is sent in
        its place (a dead letter without a value, or nothing, if it was one already)."""
        rec = self.inflight.record(oid)
        if rec is None:
            return
        self.metrics.records_refused.labels(rec.category).inc()
        dead = refused_dead_letter(rec, error, self.topics)
        where = {"observer_id": oid, "topic": rec.topic}
        if dead is None:
            self.metrics.records_refused.labels("dropped").inc()
            log.error("dead letter %s refused (%s): dropped", oid, error, extra=where)
            self.inflight.delivered(oid)
            return
        log.error(
            "%s record %s for %s refused (%s): dead-lettered instead",
            rec.category,
            oid,
            rec.topic,
            error,
            extra=where,
        )
        self.inflight.replace(oid, dead)
        self._dispatch(-1, dead)

    def serve(self) -> None:
        """Delivery reports, finished webhooks, and records whose retry time has come."""
        self.sink.poll(0)
        self._collect_webhooks()
        for shard, rec in self.inflight.due_retries(self.clock.now_ms()):
            self._dispatch(shard, rec)

    def _collect_webhooks(self) -> None:
        for _shard, oid, ok in self.webhooks.take_done():
            if ok:
                self._published["webhook"] += 1
            else:
                self.metrics.webhooks_given_up.inc()
            self.inflight.delivered(oid)

    def count(self) -> None:
        """Add what was acknowledged since the last call to the published metric."""
        if self._published:
            for cat, n in self._published.items():
                self.metrics.published.labels(cat).inc(n)
            self._published.clear()

    def flush(self, timeout_s: float) -> int:
        """Wait for the producer's deliveries (webhooks finished meanwhile are collected too);
        returns how many records the producer still has."""
        remaining = self.sink.flush(timeout_s)
        self._collect_webhooks()
        return remaining

    def close(self) -> None:
        self.webhooks.stop(1.0)
        self.sink.close()
