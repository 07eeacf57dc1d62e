"""Helpers shared by the benchmark scripts: Kafka admin and offsets, Redis keys, process
figures, percentiles. Not part of the `observer` package; scripts print figures, not tests.

Every time is in epoch ms unless a name says `_s` (seconds, float).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

__all__ = [
    "REPO",
    "CommitWatch",
    "ProcSampler",
    "create_topics",
    "delete_groups",
    "delete_topics",
    "end_offsets",
    "fmt_rate",
    "kafka_conf",
    "now_ms",
    "percentile",
    "redis_delete_prefix",
    "topics_matching",
]

REPO = Path(__file__).resolve().parents[1]
TP = tuple[str, int]

# librdkafka logs every failed connection attempt to stderr; the scripts report errors
# themselves, so client logs go to a logger that only shows critical ones
KAFKA_LOG = logging.getLogger("benchmarks.kafka")
KAFKA_LOG.setLevel(logging.CRITICAL)
KAFKA_LOG.propagate = False


def kafka_conf(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Client settings: bootstrap servers, quiet logs, plus `extra`."""
    return {"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, **extra}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted sequence; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return float(s[k])


def fmt_rate(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:,.0f}"


# -- Kafka --------------------------------------------------------------------------------------


def admin(bootstrap: str) -> AdminClient:
    return AdminClient(kafka_conf(bootstrap))


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create topics (replication 1); an existing topic is left as it is."""
    names = sorted(set(names))
    if not names:
        return
    a = admin(bootstrap)
    futures = a.create_topics(
        [NewTopic(n, partitions, 1, config=dict(config or {})) for n in names],
        request_timeout=timeout_s,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
    # metadata settles a moment after creation; wait until every partition has a leader
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = a.list_topics(timeout=5)
        if all(
            n in md.topics
            and md.topics[n].error is None
            and len(md.topics[n].partitions) >= partitions
            for n in names
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics not ready after {timeout_s}s: {names}")


def topics_matching(bootstrap: str, needle: str) -> list[str]:
    md = admin(bootstrap).list_topics(timeout=10)
    return sorted(t for t in md.topics if needle in t)


def delete_topics(bootstrap: str, names: Iterable[str]) -> int:
    names = sorted(set(names))
    if not names:
        return 0
    a = admin(bootstrap)  # keep the client alive until the futures resolve
    futures = a.delete_topics(names, operation_timeout=30)
    n = 0
    for fut in futures.values():
        try:
            fut.result(timeout=60)
            n += 1
        except Exception:  # already gone, or the broker is slow: report the count only
            pass
    return n


def delete_groups(bootstrap: str, groups: Iterable[str]) -> int:
    groups = sorted(set(groups))
    if not groups:
        return 0
    n = 0
    a = admin(bootstrap)  # keep the client alive until the futures resolve
    for fut in a.delete_consumer_groups(groups, request_timeout=30).values():
        try:
            fut.result(timeout=60)
            n += 1
        except Exception:  # a group still settling after its members left: leave it
            pass
    return n


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TP, tuple[int, int]]:
    """(low, high) watermark offsets of every partition of `topics`."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-offsets", "enable.auto.commit": False}
    )
    try:
        md = c.list_topics(timeout=10)
        out: dict[TP, tuple[int, int]] = {}
        for t in topics:
            tmd = md.topics.get(t)
            if tmd is None or tmd.error is not None:
                raise RuntimeError(f"topic {t} does not exist")
            for p in tmd.partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
        return out
    finally:
        c.close()


@dataclass
class CommitWatch:
    """Follows a consumer group's committed offsets over a fixed set of partitions.

    `total` is the number of records between each partition's low offset and its end offset
    (taken when the watch is built). `sample()` returns how many of them are committed.
    """

    bootstrap: str
    group: str
    ends: Mapping[TP, tuple[int, int]]
    total: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic s, committed)

    def __post_init__(self) -> None:
        self._admin = admin(self.bootstrap)
        self.total = sum(hi - lo for lo, hi in self.ends.values())
        self._tps = [TopicPartition(t, p) for (t, p) in sorted(self.ends)]

    def committed(self) -> int:
        req = ConsumerGroupTopicPartitions(self.group, self._tps)
        fut = self._admin.list_consumer_group_offsets([req], request_timeout=10)[self.group]
        res = fut.result(timeout=15)
        n = 0
        for tp in res.topic_partitions:
            lo, hi = self.ends[(tp.topic, tp.partition)]
            if tp.offset >= 0:
                n += max(0, min(tp.offset, hi) - lo)
        return n

    def sample(self) -> int:
        try:
            n = self.committed()
        except KafkaException:
            n = self.samples[-1][1] if self.samples else 0
        self.samples.append((time.monotonic(), n))
        return n

    def rate(self) -> dict[str, Any]:
        """Events/s from the first sample that saw a commit to the first that saw all of them
        (or to the last progress seen, when the run ended early)."""
        first = next(((t, n) for t, n in self.samples if n > 0), None)
        if first is None:
            return {"events": 0, "seconds": None, "events_per_s": None, "complete": False}
        done = next(((t, n) for t, n in self.samples if n >= self.total), None)
        complete = done is not None
        if done is None:
            top = max(n for _, n in self.samples)
            done = next((t, n) for t, n in self.samples if n == top)
        secs = done[0] - first[0]
        events = done[1] - first[1]
        return {
            "events": events,
            "seconds": secs,
            "events_per_s": events / secs if secs > 0 else None,
            "complete": complete,
            "first_commit_events": first[1],
        }


# -- Redis --------------------------------------------------------------------------------------


def redis_delete_prefix(url: str, prefix: str) -> int:
    """UNLINK every key `prefix:*`; returns how many."""
    import redis

    r = redis.Redis.from_url(url)
    n = 0
    batch: list[bytes] = []
    for k in r.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(k)
        if len(batch) >= 5000:
            n += int(r.unlink(*batch))
            batch = []
    if batch:
        n += int(r.unlink(*batch))
    r.close()
    return n


# -- processes ----------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class ProcSampler:
    """RSS (current and peak) and CPU seconds of processes, read from /proc (Linux)."""

    pids: list[int]
    peak_rss: dict[int, int] = field(default_factory=dict)
    last_rss: dict[int, int] = field(default_factory=dict)
    cpu_s: dict[int, float] = field(default_factory=dict)
    cpu_at_first: float | None = None  # total CPU s when the first commit was seen
    cpu_at_done: float | None = None  # ... and when every record was committed

    def sample(self) -> None:
        for pid in self.pids:
            st = _proc_status(pid)
            if "VmRSS" in st:
                self.last_rss[pid] = st["VmRSS"]
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), st.get("VmHWM", 0), st["VmRSS"])
            cpu = _proc_cpu_s(pid)
            if cpu is not None:
                self.cpu_s[pid] = cpu

    def summary(self) -> dict[str, Any]:
        return {
            "rss_mb": [round(self.last_rss.get(p, 0) / 2**20, 1) for p in self.pids],
            "peak_rss_mb": [round(self.peak_rss.get(p, 0) / 2**20, 1) for p in self.pids],
            "cpu_s": [round(self.cpu_s.get(p, 0.0), 2) for p in self.pids],
        }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
