"""`InMemoryWebhookSender`: the `WebhookSender` port without HTTP: webhook records are kept as
submitted; each is answered delivered at once, or as a test decides (`answer`)."""

from __future__ import annotations

from observer.runtime.outbox import OutboxRecord

__all__ = ["InMemoryWebhookSender"]


class InMemoryWebhookSender:
    """`auto`: every record submitted counts as delivered at the next `take_done`; otherwise
    records wait in `waiting` for `answer`."""

    def __init__(self, *, auto: bool = True) -> None:
        self.auto = auto
        self.started = False
        self.stopped = False
        self.submitted: list[tuple[int, OutboxRecord]] = []  # every submission, in order
        self.waiting: list[tuple[int, OutboxRecord]] = []
        self._done: list[tuple[int, str, bool]] = []

    def start(self) -> None:
        self.started = True

    def submit(self, shard: int, record: OutboxRecord) -> None:
        self.submitted.append((shard, record))
        if self.auto:
            self._done.append((shard, record.observer_id, True))
        else:
            self.waiting.append((shard, record))

    def answer(self, delivered: bool = True) -> None:
        """Finish every waiting record: delivered, or given up after the last attempt."""
        for shard, record in self.waiting:
            self._done.append((shard, record.observer_id, delivered))
        self.waiting.clear()

    def take_done(self) -> list[tuple[int, str, bool]]:
        done, self._done = self._done, []
        return done

    def stop(self, timeout_s: float) -> None:
        self.stopped = True
