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
    "DurableWatch",
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


def _gone(exc: BaseException, *codes: str) -> bool:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return getattr(err, "name", lambda: "")() in codes


def delete_topics(bootstrap: str, names: Iterable[str]) -> set[str]:
    """Delete topics; returns those now gone (deleted, or not there)."""
    names = sorted(set(names))
    if not names:
        return set()
    a = admin(bootstrap)  # keep the client alive until the futures resolve
    futures = a.delete_topics(names, operation_timeout=30)
    gone: set[str] = set()
    for name, fut in futures.items():
        try:
            fut.result(timeout=60)
            gone.add(name)
        except Exception as exc:  # the broker is slow or away: the caller may retry
            if _gone(exc, "UNKNOWN_TOPIC_OR_PART"):
                gone.add(name)
    return gone


def delete_groups(bootstrap: str, groups: Iterable[str]) -> set[str]:
    """Delete consumer groups; returns those now gone (deleted, or never created)."""
    groups = sorted(set(groups))
    if not groups:
        return set()
    gone: set[str] = set()
    a = admin(bootstrap)  # keep the client alive until the futures resolve
    for name, fut in a.delete_consumer_groups(groups, request_timeout=30).items():
        try:
            fut.result(timeout=60)
            gone.add(name)
        except Exception as exc:  # a group still settling after its members left: retry
            if _gone(exc, "GROUP_ID_NOT_FOUND"):
                gone.add(name)
    return gone


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TP, tuple[int, int]]:
    """(low, high) watermark offsets of every partition of `topics`."""
    c = Consumer(
        kafka_conf(bootstrap, **{"group.id": "bench-offsets", "enable.auto.commit": False})
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


def _committed_offsets(a: AdminClient, group: str, tps: Sequence[TopicPartition]) -> dict[TP, int]:
    """The group's committed offset per partition (-1001 or absent: none yet)."""
    req = ConsumerGroupTopicPartitions(group, list(tps))
    fut = a.list_consumer_group_offsets([req], request_timeout=10)[group]
    res = fut.result(timeout=15)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions}


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
    errors: int = 0  # failed samples (the broker away, ...)

    def __post_init__(self) -> None:
        self._admin = admin(self.bootstrap)
        self.total = sum(hi - lo for lo, hi in self.ends.values())
        self._tps = [TopicPartition(t, p) for (t, p) in sorted(self.ends)]

    def committed(self) -> int:
        n = 0
        for tp, off in _committed_offsets(self._admin, self.group, self._tps).items():
            lo, hi = self.ends[tp]
            if off >= 0:
                n += max(0, min(off, hi) - lo)
        return n

    def sample(self) -> int:
        try:
            n = self.committed()
        except (KafkaException, TimeoutError) as exc:
            # after a broker restart an AdminClient may keep failing: start a new one
            self.errors += 1
            if self.errors % 50 == 1:
                log(f"  offsets of {self.group}: {exc} (error {self.errors}); asking again")
            self._admin = admin(self.bootstrap)
            n = self.samples[-1][1] if self.samples else 0
        self.samples.append((time.monotonic(), n))
        return n

    @property
    def complete(self) -> bool:
        """The last sample saw every record committed."""
        return bool(self.samples) and self.samples[-1][1] >= self.total

    def progress(self) -> str:
        n = self.samples[-1][1] if self.samples else 0
        return f"{n:,}/{self.total:,} committed"

    def first(self) -> tuple[float, int] | None:
        """The first sample that saw a commit: (monotonic s, records committed)."""
        return next(((t, n) for t, n in self.samples if n > 0), None)

    def rate(self) -> dict[str, Any]:
        """Events/s from the first sample that saw a commit to the first that saw all of them
        (or to the last progress seen, when the run ended early)."""
        first = self.first()
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


@dataclass
class DurableWatch:
    """When the observer's state is durable, for its two consumer groups.

    The router commits the source offsets (group `source.group`) as soon as the keyed topic
    acknowledged the routed records, before their state is written; the tracker commits the
    keyed topic's offsets (group `keyed_group`) only `commit_delay_ms` after the Redis write.
    Marks keep arriving in the keyed topic, so its end offsets never stop moving. Hence:

    - *routed*: the first sample that sees the source group committed everything; right
      then the keyed topic's end offsets are read (every routed event is below them);
    - *durable*: the first sample that sees the keyed group committed at least those end
      offsets on every keyed partition (and the source group everything).

    `sample()` returns the source records committed (the progress); `complete` is durable.
    """

    source: CommitWatch
    keyed_topic: str
    keyed_group: str
    routed_at: float | None = None  # monotonic s
    durable_at: float | None = None
    keyed_ends: dict[int, int] | None = None  # partition -> end offset when routed
    keyed_backlog_at_routed: int | None = None  # keyed records not committed yet, then
    keyed_partitions: int = 0
    keyed_samples: list[tuple[float, int]] = field(default_factory=list)  # (s, records behind)

    def __post_init__(self) -> None:
        self._admin = admin(self.source.bootstrap)
        self._tps: list[TopicPartition] = []

    @property
    def total(self) -> int:
        return self.source.total

    @property
    def samples(self) -> list[tuple[float, int]]:
        return self.source.samples

    def _keyed_tps(self) -> list[TopicPartition]:
        if not self._tps:
            md = self._admin.list_topics(topic=self.keyed_topic, timeout=5)
            tmd = md.topics.get(self.keyed_topic)
            if tmd is not None and tmd.error is None and tmd.partitions:
                self._tps = [TopicPartition(self.keyed_topic, p) for p in sorted(tmd.partitions)]
                self.keyed_partitions = len(self._tps)
        return self._tps

    def _behind(self, ends: Mapping[int, int]) -> int | None:
        """Keyed records below `ends` that the keyed group has not committed yet."""
        tps = self._keyed_tps()
        if not tps:
            return None
        got = _committed_offsets(self._admin, self.keyed_group, tps)
        n = 0
        for (_t, p), off in got.items():
            n += max(0, ends.get(p, 0) - max(off, 0))
        return n

    def sample(self) -> int:
        n = self.source.sample()
        now = self.source.samples[-1][0]
        try:
            if self.routed_at is None and n >= self.source.total and self._keyed_tps():
                self.routed_at = now
                ends = end_offsets(self.source.bootstrap, [self.keyed_topic])
                self.keyed_ends = {p: hi for (_t, p), (_lo, hi) in ends.items()}
            if self.keyed_ends is not None and self.durable_at is None:
                behind = self._behind(self.keyed_ends)
                if behind is not None:
                    if self.keyed_backlog_at_routed is None:
                        self.keyed_backlog_at_routed = behind
                    self.keyed_samples.append((now, behind))
                    if behind == 0:
                        self.durable_at = time.monotonic()
        except (KafkaException, RuntimeError, TimeoutError) as exc:
            self.source.errors += 1
            if self.source.errors % 50 == 1:
                log(f"  offsets of {self.keyed_group}: {exc}; asking again")
            self._admin = admin(self.source.bootstrap)  # see CommitWatch.sample
        return n

    @property
    def complete(self) -> bool:
        return self.durable_at is not None

    def progress(self) -> str:
        s = f"source {self.source.progress()}"
        if self.keyed_samples:
            s += f", keyed group {self.keyed_samples[-1][1]:,} records behind"
        return s

    def first(self) -> tuple[float, int] | None:
        return self.source.first()

    def rate(self) -> dict[str, Any]:
        """Events/s from the first sample that saw a source commit to the first that saw the
        state durable (not complete: the source group's progress, marked `durable: False`)."""
        first = self.source.first()
        out: dict[str, Any] = {
            "keyed_topic": self.keyed_topic,
            "keyed_group": self.keyed_group,
            "keyed_partitions": self.keyed_partitions,
            "keyed_backlog_at_routed": self.keyed_backlog_at_routed,
        }
        if first is None or self.durable_at is None or self.routed_at is None:
            return {**self.source.rate(), "durable": False, **out}
        secs = self.durable_at - first[0]
        events = self.source.total - first[1]
        routed_s = self.routed_at - first[0]
        return {
            "events": events,
            "seconds": secs,
            "events_per_s": events / secs if secs > 0 else None,
            "complete": True,
            "durable": True,
            "first_commit_events": first[1],
            "routed_s": routed_s,
            "routed_events_per_s": events / routed_s if routed_s > 0 else None,
            "durable_tail_s": self.durable_at - self.routed_at,
            **out,
        }


# -- Redis --------------------------------------------------------------------------------------


def redis_delete_prefix(url: str, prefix: str) -> int:
    """UNLINK every key `prefix:*`; returns how many."""
    from observer.redis_settings import parse_redis_url

    r = parse_redis_url(url).redis_py_client(30.0)  # (a cluster: scans and unlinks per node)
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
