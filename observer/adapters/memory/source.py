"""`InMemoryEventSource`: the `EventSource` port over an `InMemoryBroker`, one consumer of a
consumer group.

Like the Kafka consumer it stands in for: rebalance callbacks and the outcome of background
commits reach the listener inside `poll`; an assigned partition is read from its committed
offset (or the beginning); `close` revokes what is still assigned. By default it is assigned
every partition of the subscribed topics at the first poll; a test moves partitions with
`assign`, `revoke` and `lose`, which take effect at the next poll. Failures: `fail_commits(n)`,
`healthy`/`reachable` (what `healthy()` and `probe()` answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from observer.adapters.memory.broker import InMemoryBroker
from observer.errors import ObserverError
from observer.ingest import SourceRecord
from observer.runtime.ports import RebalanceListener
from observer.runtime.watermark import TopicPartition

__all__ = ["InMemoryEventSource"]


class InMemoryEventSource:
    """A consumer in group `group` of `broker`'s topics."""

    def __init__(self, broker: InMemoryBroker, group: str, *, auto_assign: bool = True) -> None:
        self.broker = broker
        self.group = group
        self.auto_assign = auto_assign
        self.healthy_now = True
        self.reachable = True
        self.closed = False
        self.commits: list[dict[TopicPartition, int]] = []  # every commit, in order
        self._topics: list[str] = []
        self._listener: RebalanceListener | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._events: list[tuple[str, list[TopicPartition]]] = []  # rebalances to deliver
        self._reports: list[tuple[str | None, dict[TopicPartition, int]]] = []
        self._failing_commits = 0
        self._subscribed_at_poll = False

    # -- tests --------------------------------------------------------------------------------------

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """These partitions are assigned at the next poll."""
        self._events.append(("assigned", sorted(tps)))

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """These partitions are revoked (an orderly rebalance) at the next poll."""
        self._events.append(("revoked", sorted(tps)))

    def lose(self, tps: Iterable[TopicPartition]) -> None:
        """These partitions are lost (no chance to commit) at the next poll."""
        self._events.append(("lost", sorted(tps)))

    def fail_commits(self, n: int = 1) -> None:
        """The next `n` commits fail."""
        self._failing_commits += n

    @property
    def assigned(self) -> list[TopicPartition]:
        return sorted(self._positions)

    # -- the EventSource port -----------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._topics = list(topics)
        self._listener = listener
        self._subscribed_at_poll = self.auto_assign

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Never waits: what is there is returned at once, a fair share of `max_records` from
        each partition with records left."""
        self._deliver_events()
        out: list[SourceRecord] = []
        # a fair share of the batch per partition with records left, in partition order
        pending = [
            tp for tp in sorted(self._positions) if self._positions[tp] < self.broker.end(tp)
        ]
        for i, tp in enumerate(pending):
            share = -(-(max_records - len(out)) // (len(pending) - i))
            pos = self._positions[tp]
            taken = self.broker.log(*tp)[pos : pos + share]
            out += taken
            self._positions[tp] = pos + len(taken)
        return out

    def serve(self, timeout_s: float) -> None:
        """Rebalances and commit reports, no records (never waits)."""
        self._deliver_events()

    def _deliver_events(self) -> None:
        listener = self._listener
        if listener is None:
            return
        if self._subscribed_at_poll:
            # a subscription (or a new one): partitions of new topics are assigned, those of
            # topics no longer subscribed revoked, the others kept where they are
            self._subscribed_at_poll = False
            tps = [(t, p) for t in self._topics for p in range(self.broker.partitions(t) or 0)]
            gone = [tp for tp in self._positions if tp[0] not in self._topics]
            new = [tp for tp in tps if tp not in self._positions]
            if new:
                self._events.insert(0, ("assigned", new))
            if gone:
                self._events.insert(0, ("revoked", sorted(gone)))
        while self._events:
            kind, tps = self._events.pop(0)
            if kind == "assigned":
                for tp in tps:
                    committed = self.broker.committed(self.group, tp)
                    self._positions[tp] = committed if committed is not None else 0
                listener.assigned(tps)
            else:
                tps = [tp for tp in tps if tp in self._positions]
                if not tps:
                    continue
                if kind == "revoked":
                    listener.revoked(tps)
                else:
                    listener.lost(tps)
                for tp in tps:
                    del self._positions[tp]
        while self._reports:
            error, offsets = self._reports.pop(0)
            listener.commit_done(error, offsets)

    def commit(self, offsets: Mapping[TopicPartition, int], wait: bool) -> None:
        if not offsets:
            return
        offsets = dict(offsets)
        error = None
        if self._failing_commits:
            self._failing_commits -= 1
            error = "in-memory commit failed"
        elif not self.reachable:
            error = "in-memory broker unreachable"
        if error is not None:
            if wait:
                raise ObserverError(f"commit failed: {error}")
            self._reports.append((error, offsets))
            return
        self.broker.commit(self.group, offsets)
        self.commits.append(offsets)
        if not wait:
            self._reports.append((None, offsets))

    def offsets(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, int | None, int | None]]:
        return {tp: (0, self.broker.end(tp), self._positions.get(tp)) for tp in tps}

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in tps:
            off = self.broker.committed(self.group, tp)
            if off is not None:
                out[tp] = off
        return out

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            if tp in self._positions:
                self._positions[tp] = 0 if off < 0 else off

    def healthy(self) -> bool:
        return self.healthy_now

    def probe(self, timeout_s: float) -> bool:
        return self.reachable

    def partitions(self, topics: Sequence[str]) -> dict[str, int] | None:
        if not self.reachable:
            return None
        counts = {t: self.broker.partitions(t) for t in topics}
        return {t: n for t, n in counts.items() if n}

    def fetch(
        self, wanted: Sequence[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], SourceRecord]:
        found = {}
        for topic, partition, offset in wanted:
            if self.broker.partitions(topic) is None:
                continue
            log = self.broker.log(topic, partition)
            if 0 <= offset < len(log):
                found[(topic, partition, offset)] = log[offset]
        return found

    def close(self) -> None:
        """Leave the group: what is still assigned is revoked first."""
        if self._listener is not None and self._positions:
            self._listener.revoked(sorted(self._positions))
        self._positions.clear()
        self.closed = True
