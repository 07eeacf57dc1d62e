"""Redis going away under a running observer: it stops making progress (nothing committed,
/readyz says why), then catches up once Redis is back. A private redis-server on a free port,
so the shared one is never disturbed."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from tests.integration.harness import Harness, make, now_ms, outcome_of

__all__ = ["make"]  # the fixture (keyed routing, from conftest)

pytestmark = pytest.mark.timeout(120)


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
        ]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    # ops/stack installs redis-server; its absence is a broken set-up, not a reason to skip
    assert shutil.which("redis-server") is not None, (
        "redis-server is not installed (run ops/stack start)"
    )
    r = PrivateRedis(tmp_path)
    r.start()
    yield r
    r.kill()


def committed_total(h: Harness, topics: list[str]) -> int:
    c = Consumer({"bootstrap.servers": h.bootstrap, "group.id": f"{h.prefix}-observer"})
    try:
        parts = [TopicPartition(h.t(t), p) for t in topics for p in (0, 1)]
        return sum(max(p.offset, 0) for p in c.committed(parts, timeout=10))
    finally:
        c.close()


def keyed_committed(h: Harness, shards: int = 16) -> int:
    """Events the tracker committed: keyed-topic offsets of its group, marks left out."""
    c = Consumer({"bootstrap.servers": h.bootstrap, "group.id": f"{h.prefix}-observer.keyed"})
    topic = f"{h.prefix}-observer.observer-keyed"
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(shards)], timeout=10)
        wanted = {p.partition: p.offset for p in parts if p.offset > 0}
        if not wanted:
            return 0
        reader = Consumer(
            {
                "bootstrap.servers": h.bootstrap,
                "group.id": f"{h.prefix}-peek",
                "enable.auto.commit": False,
            }
        )
        reader.assign([TopicPartition(topic, p, 0) for p in wanted])
        events = 0
        left = dict(wanted)
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:
            m = reader.poll(0.5)
            if m is None or m.error() is not None:
                continue
            part, off = m.partition() or 0, m.offset() or 0
            if part not in left:
                continue
            if off < left[part]:
                events += (m.value() or b"")[:1] == b"["
            if off + 1 >= left[part]:
                del left[part]
        reader.close()
        return events
    finally:
        c.close()


def test_redis_outage_stops_progress_and_recovers(
    make: Callable[..., Harness], private_redis: PrivateRedis
) -> None:
    h = make(pay_window="60s")
    h.redis_url = private_redis.url
    h.start()
    t = now_ms()
    h.send("Placed", "x1", t)
    h.wait_for(lambda: h.api("/instances/shop/x1").status_code == 200, message="x1 stored")
    private_redis.kill()
    h.send("Paid", "x1", t + 100)
    h.send("Shipped", "x1", t + 200)
    report = h.wait_for(
        lambda: (r := h.api("/readyz")).status_code == 503 and r.json(), message="not ready"
    )
    assert report["redis"] is False and report["redis_error"]
    h.read_to_end()
    assert h.outcomes() == []
    assert keyed_committed(h) <= 1  # read, not stored: not committed (Placed may be)
    back = now_ms()
    private_redis.start()
    assert outcome_of(h, "x1")["outcome"] == "completed"
    h.read_to_end()
    (outcome,) = h.outcomes()  # published once, and only once Redis was back
    assert outcome.timestamp_ms >= back
    h.wait_for(lambda: h.api("/readyz").status_code == 200, message="ready again")
    h.wait_for(lambda: committed_total(h, ["pay", "ship"]) == 2, message="committed")
    assert "observer_store_errors_total" in h.api("/metrics").text
    h.stop()  # before the private Redis goes away


def test_writes_redis_lost_in_a_crash_are_redone_from_kafka(
    make: Callable[..., Harness], private_redis: PrivateRedis
) -> None:
    """Redis confirmed a write, then lost it (a crash under AOF `everysec` loses up to a
    second). Offsets are committed only `commit_delay_ms` after a write, so once the observer
    reconnects it reads those records again and the instance is whole."""
    h = make(pay_window="60s")
    h.redis_url = private_redis.url
    h.start(commit_delay_ms=60_000)
    t = now_ms()
    h.send("Placed", "y1", t)
    h.send("Paid", "y1", t + 100)
    h.wait_for(
        lambda: (
            h.api("/instances/shop/y1").status_code == 200
            and len(h.api("/instances/shop/y1").json()["steps"]) >= 2
        ),
        message="y1 stored with two steps",
    )
    lost = redis.Redis(port=private_redis.port)
    bucket, field = h.slot_at("shop", "y1")
    assert lost.hexists(bucket, field), "the instance is not where the observer keeps state"
    lost.hdel(bucket, field)  # the write is gone, as after a crash
    lost.client_kill_filter(_type="normal", skipme=True)  # and the connection with it
    h.send("Shipped", "y1", t + 200)
    assert outcome_of(h, "y1")["outcome"] == "completed"
    assert keyed_committed(h) == 0  # nothing committed while the delay runs
    h.stop()
