"""Webhook workers: retries with capped exponential backoff, give up after the last attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from observer.runtime.backoff import backoff_ms
from observer.runtime.outbox import OutboxRecord
from observer.runtime.webhooks import WebhookDispatcher


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_ms(n, 100, 1_000) for n in (1, 2, 3, 4, 5, 9)] == [
        100,
        200,
        400,
        800,
        1_000,
        1_000,
    ]


def rec(oid: str) -> OutboxRecord:
    return OutboxRecord(
        oid,
        "webhook",
        None,
        b"k",
        b'{"kind":"missing"}',
        (("observer-id", oid.encode()),),
        "http://hook",
    )


def wait_done(d: WebhookDispatcher, n: int, timeout: float = 5.0) -> list[tuple[int, str, bool]]:
    done: list[tuple[int, str, bool]] = []
    deadline = time.monotonic() + timeout
    while len(done) < n and time.monotonic() < deadline:
        done += d.take_done()
        time.sleep(0.005)
    return done


def test_a_failing_webhook_is_retried_until_it_answers_2xx() -> None:
    calls: list[tuple[str, bytes, dict[str, str]]] = []
    answers = iter([500, 503, 204])

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        calls.append((url, body, dict(headers)))
        return next(answers)

    d = WebhookDispatcher(
        post, monotonic=time.monotonic, workers=1, max_attempts=5, base_ms=5, cap_ms=20
    )
    d.start()
    d.submit(7, rec("a"))
    assert wait_done(d, 1) == [(7, "a", True)]
    d.stop(1)
    assert len(calls) == 3
    url, body, headers = calls[0]
    assert url == "http://hook" and body == b'{"kind":"missing"}'
    assert headers["observer-id"] == "a" and headers["content-type"] == "application/json"


def test_it_gives_up_after_the_last_attempt_and_transport_errors_count_as_failures() -> None:
    n = 0

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        nonlocal n
        n += 1
        raise ConnectionError("refused")

    d = WebhookDispatcher(
        post, monotonic=time.monotonic, workers=1, max_attempts=3, base_ms=1, cap_ms=2
    )
    d.start()
    d.submit(0, rec("b"))
    assert wait_done(d, 1) == [(0, "b", False)]
    d.stop(1)
    assert n == 3


def test_a_slow_webhook_does_not_hold_up_the_others() -> None:
    release = threading.Event()

    def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        if headers["observer-id"] == "slow":
            release.wait(5)
        return 200

    d = WebhookDispatcher(
        post, monotonic=time.monotonic, workers=2, max_attempts=1, base_ms=1, cap_ms=1
    )
    d.start()
    d.submit(0, rec("slow"))
    d.submit(0, rec("fast"))
    assert wait_done(d, 1) == [(0, "fast", True)]
    assert d.pending() == 1
    release.set()
    assert wait_done(d, 1) == [(0, "slow", True)]
    d.stop(1)
