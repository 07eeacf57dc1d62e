"""`StoreWrites`: the tracker's writes to the state store, and what follows each one.

A batch's write is sent without waiting (`send`); the tracker reads and plans the next batch
meanwhile, and only then reads the reply (`settle`). Once a write returned, its records are
handed to the publisher and its offsets become committable `commit_delay_ms` later: Redis
with AOF `everysec` may lose the last second of confirmed writes in a crash, and then those
records must still be read again. Ticks write synchronously (`write`).

Every write also deletes from the outbox the records acknowledged since the previous one. This
module is the one place that takes those acknowledgements, and that puts them back when the
write fails (the next write carries them again).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from observer.correlation import latency_counts
from observer.errors import StoreError
from observer.metrics import Metrics
from observer.runtime.batch import BatchPlan
from observer.runtime.due_bounds import DueBounds
from observer.runtime.outbox import InFlight
from observer.runtime.ports import Clock, Pending, StateStore, WriteBatch
from observer.runtime.publisher import Publisher
from observer.runtime.tally import MinuteTally
from observer.runtime.watermark import TopicPartition

__all__ = ["StoreWrites"]

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, int]

# A final commit waits for the newest write to be durable, but when stopping at most this
# long: Redis' `everysec` has written its last second to disk by then, whatever the delay.
_STOPPING_DURABLE_WAIT_S = 2.0


@dataclass(slots=True)
class _Sent:
    """A write whose reply has not been read, and what to do once it has."""

    reply: Pending[list[str]]
    acked: list[tuple[int, str]]  # outbox deletions it carries
    plan: BatchPlan | None = None
    offsets: Offsets | None = None  # committable once it is durable (None: not a batch)
    touched: frozenset[str] = field(default_factory=frozenset)  # slot ids it writes


class StoreWrites:
    """At most one write in flight; its records published, and its offsets handed to
    `on_durable` once the write is `commit_delay_ms` old."""

    def __init__(
        self,
        store: StateStore,
        publisher: Publisher,
        metrics: Metrics,
        *,
        commit_delay_ms: int,
        clock: Clock,
        on_durable: Callable[[Offsets], None],
        tally: MinuteTally | None = None,
        on_published: Callable[[BatchPlan], None] | None = None,
        due_bounds: DueBounds | None = None,
    ) -> None:
        """`on_published(plan)`: after a plan's records were handed to the publisher;
        `due_bounds`: lowered to the due times of every write before it is sent."""
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.commit_delay_s = commit_delay_ms / 1000.0
        self._clock = clock
        self._mono = clock.monotonic
        self._on_durable = on_durable
        self._tally = tally  # correlation health: counted once a plan is written
        self.on_published = on_published  # aliases: hop marks follow the hops
        self._inflight: InFlight = publisher.inflight
        self._pending: _Sent | None = None
        self._durable: deque[tuple[float, Offsets]] = deque()  # (durable at, offsets)
        self._bounds = due_bounds  # issue 18: the ticker's due bounds

    # -- writing ------------------------------------------------------------------------------------

    def _send(self, batch: WriteBatch) -> _Sent:
        """Send `batch` with the outbox deletions of the records acknowledged so far."""
        if self._bounds is not None and batch.puts:
            self._bounds.lower(batch.puts)
        acked = self._inflight.take_acked()
        batch.outbox_dels.extend(acked)
        try:
            return _Sent(self.store.write(batch), acked)
        except StoreError:
            self._inflight.restore_acked(acked)
            raise

    def _wait(self, sent: _Sent) -> list[str]:
        """Read the reply of a sent write (the observer-ids of gated records it held); a
        failed write's deletions are kept for the next."""
        try:
            return sent.reply.result()
        except StoreError:
            self._inflight.restore_acked(sent.acked)
            raise

    def send(self, plan: BatchPlan, offsets: Offsets) -> None:
        """Send a batch's write without waiting; the previous one must be settled."""
        assert self._pending is None, "settle the write in flight first"
        sent = self._send(plan.write)
        sent.plan = plan
        sent.offsets = offsets
        sent.touched = frozenset(sid for sid, _slot, _stored in plan.states)
        self._pending = sent

    @property
    def in_flight(self) -> bool:
        """Whether a batch's write was sent and not settled yet."""
        return self._pending is not None

    def touches(self, sids: Iterable[str]) -> bool:
        """Whether the write in flight changes any of these slots."""
        pending = self._pending
        return pending is not None and not pending.touched.isdisjoint(sids)

    def settle(self) -> None:
        """Wait for the write in flight (if any); then publish its records and queue its
        offsets. Raises StoreError (the write is then dropped)."""
        sent = self._pending
        if sent is None:
            return
        self._pending = None
        held = self._wait(sent)
        assert sent.plan is not None
        self._written(sent.plan, held)
        if sent.offsets is not None:
            self._durable.append((self._mono() + self.commit_delay_s, sent.offsets))

    def write(self, plan: BatchPlan) -> None:
        """Write a tick's plan and wait for it; then publish its records."""
        self._written(plan, self._wait(self._send(plan.write)))

    def write_acks(self, watermarks: list[tuple[int, int]] | None = None) -> None:
        """Delete the acknowledged records from the outbox, if there are any, and store the
        shards' `watermarks` (guardrails), if given."""
        if self._inflight.has_acked() or watermarks:
            self._wait(self._send(WriteBatch(watermarks=list(watermarks or ()))))

    def _written(self, plan: BatchPlan, held: list[str]) -> None:
        records = plan.records
        if held:  # gated action records of a paused flow: the store keeps them, held
            ids = set(held)
            records = [(s, r) for s, r in records if r.observer_id not in ids]
            self.metrics.record_held(
                (g.flow, g.action, "paused") for g in plan.write.gated if g.observer_id in ids
            )
        self.publisher.publish(records)
        if self.on_published is not None:
            self.on_published(plan)
        self.metrics.record_signals(plan.signals)
        self.metrics.record_latencies(plan.latencies)
        for note in plan.notes:
            what = "an action was not carried out" if note.what == "action_error" else "dropped"
            log.warning(
                "%s %s: %s: %s",
                note.flow,
                note.key,
                what,
                note.detail,
                extra={"flow": note.flow, "key": note.key},
            )
        if plan.tally:
            self.metrics.record_correlation(plan.tally)
            if self._tally is not None:
                self._tally.add(plan.tally)
        if plan.latencies and self._tally is not None:  # the web console's p50 / p99
            self._tally.add(latency_counts(plan.latencies))

    def drop(self) -> None:
        """The store failed: forget the write in flight (its records are not published, its
        deletions go with the next write) and every offset not yet durable (the tracker reads
        them again)."""
        if self._pending is not None:
            self._inflight.restore_acked(self._pending.acked)
            self._pending = None
        self._durable.clear()

    # -- durability ---------------------------------------------------------------------------------

    def release(self, *, all_: bool = False, stopping: bool = False) -> None:
        """Hand over the offsets whose write is `commit_delay_ms` old (`all_`: wait until the
        newest is, for a final commit; at most a moment when `stopping`)."""
        durable = self._durable
        if all_ and durable:
            left = max(0.0, durable[-1][0] - self._mono())
            self._clock.sleep(min(left, _STOPPING_DURABLE_WAIT_S) if stopping else left)
        now = self._mono()
        while durable and (all_ or durable[0][0] <= now):
            self._on_durable(durable.popleft()[1])
