"""`OffsetCommits`: the rebalance and commit bookkeeping both stages share.

The router (source topics, group `GROUP_ID`) and the tracker (keyed topic, `GROUP_ID.keyed`)
each own a consumer whose partitions come and go. For either, this keeps the assigned
partitions' read progress and offset ledger (`offsets.py`), and commits: in the background
while running, and once more, waiting, for partitions revoked in an orderly way (none for
partitions lost). What may be committed is the stage's business: it calls `written` once a
batch is safe (routed and acknowledged; stored and durable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from observer.metrics import Metrics
from observer.runtime.offsets import OffsetLedger
from observer.runtime.ports import EventSource
from observer.runtime.watermark import ReadProgress, TopicPartition

__all__ = ["OffsetCommits"]

log = logging.getLogger(__name__)


class OffsetCommits:
    """The assignment and commits of one stage's consumer (`stage`: "router" or "tracker",
    as in the metrics' labels). `timed`: commit durations go to the commit histogram."""

    def __init__(
        self,
        stage: str,
        source: EventSource,
        progress: ReadProgress,
        metrics: Metrics,
        monotonic: Callable[[], float],
        *,
        timed: bool = False,
    ) -> None:
        self.stage = stage
        self.source = source
        self.progress = progress
        self.ledger = OffsetLedger()
        self._metrics = metrics
        self._mono = monotonic
        self._timed = timed
        self._requests: list[tuple[float, dict[TopicPartition, int]]] = []

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The assigned partitions."""
        return self.ledger.assigned

    # -- rebalances ---------------------------------------------------------------------------------

    def assigned(self, tps: list[TopicPartition]) -> None:
        """Partitions added: reading goes on from their committed offsets."""
        self._count("assigned", tps)
        self.progress.assign(tps, self.source.committed(tps))
        self.ledger.assign(tps)

    def revoked(self, tps: list[TopicPartition]) -> None:
        """Partitions taken away in an orderly way (the stage has made safe what it could):
        one last commit of theirs, waited for, then they are forgotten."""
        self._count("revoked", tps)
        final = self.ledger.revoke(tps)
        try:
            self.source.commit(final, wait=True)
        except Exception as exc:
            log.warning("%s: final commit of revoked partitions failed: %s", self.stage, exc)
        self.progress.revoke(tps)

    def lost(self, tps: list[TopicPartition]) -> None:
        """Partitions gone without a chance to commit (another consumer has them now)."""
        self._count("lost", tps)
        self.ledger.lost(tps)
        self.progress.revoke(tps)

    def forget(self) -> None:
        """Forget what was written since the last commit (the store may have lost it): none of
        it is committed, and the partitions are read again from their committed offsets after
        `rewind`."""
        tps = sorted(self.ledger.assigned)
        self.ledger.lost(tps)
        self.ledger.assign(tps)

    def rewind(self) -> list[TopicPartition]:
        """Read every assigned partition again from its committed offset, forgetting what was
        written since; returns the partitions."""
        tps = sorted(self.ledger.assigned)
        if not tps:
            return tps
        committed = self.source.committed(tps)
        self.source.seek({tp: committed.get(tp, -2) for tp in tps})
        self.forget()
        return tps

    def _count(self, kind: str, tps: list[TopicPartition]) -> None:
        self._metrics.rebalances.labels(self.stage, kind).inc(len(tps))

    # -- commits ------------------------------------------------------------------------------------

    def written(self, offsets: dict[TopicPartition, int]) -> None:
        """A batch is safe: these next offsets may be committed."""
        self.ledger.written(offsets)

    def commit(self, wait: bool) -> None:
        """Commit what may be; `wait=False` in the background (confirmed in `commit_done`)."""
        offsets = self.ledger.to_commit()
        if not offsets:
            return
        self.ledger.committing(offsets)
        t0 = self._mono()
        try:
            self.source.commit(offsets, wait=wait)
        except Exception as exc:
            self.ledger.commit_failed(offsets)
            log.warning("%s: commit failed: %s", self.stage, exc)
            return
        if not self._timed:
            return
        if wait:
            self._metrics.commit_seconds.observe(self._mono() - t0)
        else:
            self._requests.append((t0, offsets))

    def commit_done(self, error: str | None, offsets: dict[TopicPartition, int]) -> None:
        """A background commit was confirmed or failed (called inside the source's poll)."""
        for i, (t0, requested) in enumerate(self._requests):
            if requested == offsets:
                del self._requests[i]
                if error is None:
                    self._metrics.commit_seconds.observe(self._mono() - t0)
                break
        if error is not None:
            self.ledger.commit_failed(offsets)
            log.warning("%s: commit failed: %s", self.stage, error)
