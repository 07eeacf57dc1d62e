"""Webhook delivery off the consumer thread.

Worker threads POST webhook records, retrying failures (a transport error or a non-2xx
answer) with exponential backoff, capped. A record leaves the outbox when it was delivered
(2xx) or after `max_attempts` (then logged and counted). A slow or dead webhook only occupies
a worker: the consumer loop never waits for it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping

from observer.runtime.outbox import OutboxRecord

__all__ = ["Post", "WebhookDispatcher", "backoff_ms"]

log = logging.getLogger(__name__)

Post = Callable[[str, bytes, Mapping[str, str]], int]
"""POST (url, body, headers) -> HTTP status; raises on a transport error or timeout."""


def backoff_ms(attempt: int, base_ms: int, cap_ms: int) -> int:
    """Delay before retry number `attempt` (1 = the first retry): base * 2^(attempt-1), capped."""
    return int(min(cap_ms, base_ms * 2 ** max(0, attempt - 1)))


class WebhookDispatcher:
    """A small pool of threads delivering webhooks with retries."""

    def __init__(
        self,
        post: Post,
        *,
        workers: int = 2,
        max_attempts: int = 8,
        base_ms: int = 200,
        cap_ms: int = 30_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self._workers = workers
        self._max_attempts = max_attempts
        self._base_ms = base_ms
        self._cap_ms = cap_ms
        self._mono = monotonic
        self._cond = threading.Condition()
        # (due at, seq, shard, record, attempts so far)
        self._heap: list[tuple[float, int, int, OutboxRecord, int]] = []
        self._seq = itertools.count()
        self._busy = 0
        self._done: list[tuple[int, str, bool]] = []
        self._stop = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._run, name=f"observer-webhook-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, shard: int, record: OutboxRecord) -> None:
        with self._cond:
            heapq.heappush(self._heap, (self._mono(), next(self._seq), shard, record, 0))
            self._cond.notify()

    def take_done(self) -> list[tuple[int, str, bool]]:
        with self._cond:
            done, self._done = self._done, []
        return done

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) + self._busy

    def stop(self, timeout_s: float) -> None:
        """Stop the workers (records not delivered yet stay in the outbox for the next start)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = self._mono() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - self._mono()))

    def _next(self) -> tuple[int, OutboxRecord, int] | None:
        with self._cond:
            while not self._stop:
                if self._heap:
                    wait = self._heap[0][0] - self._mono()
                    if wait <= 0:
                        _, _, shard, record, attempts = heapq.heappop(self._heap)
                        self._busy += 1
                        return shard, record, attempts
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            shard, record, attempts = item
            attempts += 1
            problem = self._deliver(record)
            with self._cond:
                self._busy -= 1
                if problem is None:
                    self._done.append((shard, record.observer_id, True))
                elif attempts >= self._max_attempts:
                    log.error(
                        "webhook %s: giving up after %d attempts (%s); observer-id %s",
                        record.webhook,
                        attempts,
                        problem,
                        record.observer_id,
                        extra={"observer_id": record.observer_id},
                    )
                    self._done.append((shard, record.observer_id, False))
                else:
                    delay = backoff_ms(attempts, self._base_ms, self._cap_ms) / 1000.0
                    log.warning(
                        "webhook %s: %s; attempt %d, retrying in %.1fs",
                        record.webhook,
                        problem,
                        attempts,
                        delay,
                    )
                    heapq.heappush(
                        self._heap, (self._mono() + delay, next(self._seq), shard, record, attempts)
                    )
                    self._cond.notify()

    def _deliver(self, record: OutboxRecord) -> str | None:
        assert record.webhook is not None
        headers = {"content-type": "application/json"}
        for name, value in record.headers:
            headers[name] = "" if value is None else value.decode("utf-8", "replace")
        try:
            status = self._post(record.webhook, record.value or b"null", headers)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"
