"""Chaos: real `observer run` processes sharing one consumer group and key prefix,
killed, restarted, scaled 1 -> 3 -> 1, with Redis and the broker restarted under them, must
publish what `observer replay` publishes for the same records — at least once, by observer-id.

The workload: ORDERS orders of the flow in chaos.flow.yaml, seeded, with a known mix of
deviations (missing steps, a late optional step, out-of-order steps, error events with and
without the compensation that follows, duplicate events), on four source topics of PARTITIONS
partitions. The fourth is a carrier's, keyed by tracking number (an alias, contract section
6): every order that is packed registers its tracking number, and the carrier's PickedUp event
reaches it through a second hop of the keyed topic, from whichever process reads it to the one
that owns the order; some never come (`missing`, and a chase addressed by tracking number), and
ORPHANS pickups carry tracking numbers nobody registers (`orphaned`, by alias). Event time = record timestamp, from "now" on, one order every ORDER_GAP_MS; the
records are produced in global event-time order (every partition in time order), keyed by the
order id, in WAVES waves while the processes run, with a chaos action after each wave.

Time. The watermark is the minimum over the source partitions of the largest timestamp read;
a fully read partition counts as the wall clock minus OBSERVER_IDLE_GRACE_MS, set to 10 days
here, so only records move the watermark and nothing depends on how fast anything runs. At the
end one "tick" record per source partition (an event type the flow ignores) at TICK time, far
past every deadline, SLA point, expiry and retention of the workload, moves the watermark there.
`observer replay --until TICK` on the records read back from the source topics (time order)
gives the expected records.

Every deviation of the workload is decided the same whatever order the observer reads the
topics in (see the comment in chaos.flow.yaml), so the comparison is exact: every expected
observer-id is published, no other id is, and repeats of an id are allowed (at least once) and
counted. The figures are printed in the terminal summary.

The chaos, one action after each wave: start 1 process | scale to 3 | SIGKILL a random process
and start it again | again | restart Redis | SIGKILL + start again | restart the broker |
SIGKILL + start again | SIGKILL one, not restarted (3 -> 2) | scale to 1 (SIGTERM one) | the
last waves and the ticks. Then the test waits until the group has committed every source
record and every expected record is published, then until the tracker's group has committed
the keyed topic up to where it ended then and the outbox is empty (whatever else the observer
would publish for these records is on Kafka by then), stops the last process, and reads every
output topic to its end. A process that exits by itself fails the test (it is replaced
meanwhile, so the figures still come). Process logs are kept under the test's tmp_path (logs/).

Failover (issue 13): the processes run on the observer's defaults for group membership, each
with its own OBSERVER_INSTANCE_ID; a process started again after a SIGKILL gets the killed
one's id, as the kubelet restarts a container in its pod. After each SIGKILL the figures show
the seconds until the processes alive owned every shard and every source partition again
(from their logs): printed, not asserted, except that it must happen within 60 s.

The Redis Cluster variant (issue 18) runs the same workload, smaller (CLUSTER_ORDERS), and the
same check with the state on the three masters of `ops/stack start redis-cluster` (no replicas)
and the flow without its guardrails (a cluster refuses them: the storm's orders then publish
what any order missing `paid` does): 1 -> 2 processes, a master SIGKILLed and started again
on its port with its AOF and nodes.conf (`ops/stack restart-redis-cluster-node PORT --kill`;
its hash slots are down meanwhile: a store failure, recovered from Kafka), SIGKILL + restart,
the seed master (the node of the observer's URL) crashed likewise, SIGKILL + restart, the
broker restarted, SIGKILL without restart (2 -> 1).

CHAOS_SEED=<int> changes the workload and the choice of processes killed (default 5).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from redis.cluster import RedisCluster

from tests.e2e.conftest import OBSERVER, ObserverProcess, coverage_restored, observer_env
from tests.integration.conftest import CLUSTER_NODES, CreateTopics, Stack
from tests.integration.kafka_helpers import Record, consume_all, wait_caught_up
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent
FLOW_TEMPLATE = HERE / "chaos.flow.yaml"

ORDERS = 20_000
PARTITIONS = 4
WAVES = 10
ORDER_GAP_MS = 10  # event time between two order starts: 20k orders span 200 s of event time
SOURCES = ("orders", "pay", "ship", "carrier")
OUTPUTS = ("alerts", "outcomes", "cmds", "dlq")
IDLE_GRACE_MS = 10 * 24 * 3600 * 1000  # fully read partitions never move the watermark
TICK_AFTER_MS = 2 * 3600 * 1000  # ticks this long after the last start: past retain/buffer (1h)
SEED = int(os.environ.get("CHAOS_SEED", "5"))
SHARDS = 16  # the observer's default
# the Redis Cluster variant: a smaller run (the same mix) on the three masters of ops/stack
CLUSTER_ORDERS = 3_000
CLUSTER_WAVES = 8
RECOVERY_LIMIT_S = 60  # a killed process's work must be owned again within this (not a timing)

# The known mix: kind -> share of the orders (the rest are happy).
MIX = {
    "missing_paid": 0.02,  # Paid never comes: missing + cancel, sla_breach + escalate, expired
    "missing_packed": 0.015,  # Packed never comes: missing, sla_breach + escalate, expired
    "late_label": 0.02,  # the optional Labelled comes after its window: late (info alert)
    "out_of_order": 0.02,  # Shipped before Packed: out_of_order + audit, completed
    "error": 0.02,  # Failed then Refunded: error + refund, compensated
    "error_unrefunded": 0.01,  # Failed, no Refunded: error + refund, missing, sla..., expired
    "duplicates": 0.015,  # Paid, Shipped and PickedUp sent twice (same event id): completed
    "missing_pickup": 0.015,  # packed, never picked up: missing + chase, sla_breach..., expired
}
ORPHANS = 0.005  # pickups with tracking numbers nobody registers, per order: `orphaned`
# The storm (issue 14): every order started in this share of the run misses `paid` (the payment
# service is silenced): `incident`s hold their commands (chaos.flow.yaml, guardrails)
STORM = (0.45, 0.465)
STORM_THRESHOLD = 100  # chaos.flow.yaml: guardrails.incident.threshold
INCIDENT_KINDS = ("incident", "incident_resolved")

# Per kind, what one order publishes: (output, label) -> count; label = alert kind, outcome, or
# command type. A self-check of the workload against the replay (not of the observer).
_EXPIRED = {("outcomes", "expired"): 1, ("alerts", "sla_breach"): 1, ("cmds", "Escalate"): 1}
PER_KIND: dict[str, dict[tuple[str, str], int]] = {
    "happy": {("outcomes", "completed"): 1},
    "duplicates": {("outcomes", "completed"): 1},
    "missing_paid": {("alerts", "missing"): 1, ("cmds", "Cancel"): 1, **_EXPIRED},
    "missing_packed": {("alerts", "missing"): 1, **_EXPIRED},
    "late_label": {("alerts", "late"): 1, ("outcomes", "completed"): 1},
    "out_of_order": {
        ("alerts", "out_of_order"): 1,
        ("cmds", "Audit"): 1,
        ("outcomes", "completed"): 1,
    },
    "error": {("alerts", "error"): 1, ("cmds", "Refund"): 1, ("outcomes", "compensated"): 1},
    "error_unrefunded": {
        ("alerts", "error"): 1,
        ("cmds", "Refund"): 1,
        ("alerts", "missing"): 1,
        **_EXPIRED,
    },
    "missing_pickup": {("alerts", "missing"): 1, ("cmds", "Chase"): 1, **_EXPIRED},
    "orphan_pickup": {("alerts", "orphaned"): 1},  # not an order: a stray tracking number
}
PER_KIND["storm"] = PER_KIND["missing_paid"]  # what it would publish without guardrails


# -- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Ev:
    """One source event; ordered by event time, then generation order."""

    at: int
    seq: int
    source: str = field(compare=False)
    type: str = field(compare=False)
    key: str = field(compare=False)
    eid: str = field(compare=False)
    extra: tuple[tuple[str, Any], ...] = field(compare=False, default=())

    def value(self) -> bytes:
        return orjson.dumps({"type": self.type, "id": self.key, **dict(self.extra)})


@dataclass
class Workload:
    events: list[Ev]  # in global event-time order
    kinds: dict[str, list[str]]  # kind -> order ids
    first: int
    last: int  # latest event time


def order_kinds(orders: int, rng: random.Random) -> list[str]:
    """Exactly round(share * orders) orders of each kind of MIX, the rest happy, shuffled."""
    kinds: list[str] = []
    for kind, share in MIX.items():
        kinds += [kind] * round(share * orders)
    kinds += ["happy"] * (orders - len(kinds))
    rng.shuffle(kinds)
    for i in range(round(STORM[0] * orders), round(STORM[1] * orders)):
        kinds[i] = "storm"  # payments silenced: whatever the order would have done
    return kinds


def order_events(kind: str, start: int, rng: random.Random) -> list[tuple[int, str, str]]:
    """(event time, source, type) of one order. On-time steps come 0.3-3 s after their anchor
    (windows: 4 s; Labelled 2 s), late ones 0.3-3 s after their deadline: never at a deadline.
    The carrier picks up every packed order 0.3-3 s after Packed, but the missing_pickup ones."""

    def d() -> int:
        return rng.randint(300, 3000)

    placed = start
    out = [(placed, "orders", "Placed")]
    if kind in ("error", "error_unrefunded"):
        failed = placed + d()
        out.append((failed, "pay", "Failed"))
        if kind == "error":
            out.append((failed + d(), "pay", "Refunded"))
        return out
    if kind in ("missing_paid", "storm"):
        return out
    paid = placed + d()
    out.append((paid, "pay", "Paid"))
    if kind == "missing_packed":
        return out
    if kind == "out_of_order":
        shipped = paid + rng.randint(300, 1000)
        packed = shipped + rng.randint(200, 1500)  # still inside packed's own window
        out += [(shipped, "ship", "Shipped"), (packed, "ship", "Packed")]
        return [*out, (packed + d(), "carrier", "PickedUp")]
    packed = paid + d()
    shipped = packed + d()
    out += [(packed, "ship", "Packed"), (shipped, "ship", "Shipped")]
    if kind != "missing_pickup":
        out.append((packed + d(), "carrier", "PickedUp"))
    if kind == "late_label":
        out.append((packed + 2000 + d(), "ship", "Labelled"))
    elif rng.random() < 0.5:
        out.append((packed + rng.randint(100, 1900), "ship", "Labelled"))
    return out


def make_workload(orders: int, base: int, seed: int) -> Workload:
    rng = random.Random(seed)
    kinds_of = order_kinds(orders, rng)
    kinds: dict[str, list[str]] = defaultdict(list)
    events: list[Ev] = []
    seq = 0
    for i, kind in enumerate(kinds_of):
        key = f"o-{i:05d}"
        tn = f"t-{i:05d}"  # its tracking number, registered by Packed
        kinds[kind].append(key)
        seen: set[int] = set()
        for n, (at, source, etype) in enumerate(order_events(kind, base + i * ORDER_GAP_MS, rng)):
            t = distinct(at, seen)
            extra: tuple[tuple[str, Any], ...] = ()
            if etype == "Placed":
                extra = (("total", round(10 + rng.random() * 490, 2)),)
            elif etype == "Packed" or source == "carrier":
                extra = (("tn", tn),)
            by = tn if source == "carrier" else key  # the carrier knows the tracking number
            ev = Ev(t, seq, source, etype, by, f"{key}/{n}", extra)
            seq += 1
            events.append(ev)
            if kind == "duplicates" and etype in ("Paid", "Shipped", "PickedUp"):
                # the same event again (same id) a little later: changes nothing
                events.append(Ev(distinct(t + 150, seen), seq, source, etype, by, ev.eid, extra))
                seq += 1
    last = max(e.at for e in events)
    for j in range(round(ORPHANS * orders)):  # pickups of tracking numbers nobody registers
        tn = f"x-{j:05d}"
        kinds["orphan_pickup"].append(tn)
        at = rng.randint(base, last)
        events.append(Ev(at, seq, "carrier", "PickedUp", tn, f"{tn}/0", (("tn", tn),)))
        seq += 1
    events.sort()
    return Workload(events, dict(kinds), base, max(e.at for e in events))


def distinct(t: int, seen: set[int]) -> int:
    """One order's events at distinct times (the margins to deadlines are >= 100 ms)."""
    while t in seen:
        t += 1
    seen.add(t)
    return t


def expected_by_mix(kinds: dict[str, list[str]]) -> Counter[tuple[str, str]]:
    total: Counter[tuple[str, str]] = Counter()
    for kind, keys in kinds.items():
        for what, n in PER_KIND[kind].items():
            total[what] += n * len(keys)
    return total


# -- Kafka ----------------------------------------------------------------------------------------


class WaveProducer:
    """One idempotent producer for the whole run (it rides out the broker restart)."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.topics = topics
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "queue.buffering.max.messages": 500_000,
                "message.timeout.ms": 300_000,
                "log_level": 2,  # the broker restart is expected: no connection errors on stderr
            }
        )
        self.errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _produce(self, topic: str, **kwargs: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, on_delivery=self._on_delivery, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        self.sent += 1

    def send(self, events: Iterable[Ev]) -> None:
        for e in events:
            self._produce(
                self.topics[e.source],
                key=e.key.encode(),
                value=e.value(),
                headers=[("eid", e.eid.encode())],
                timestamp=e.at,
            )
        self.flush()

    def ticks(self, at: int, partitions: int) -> int:
        """One record per source partition at `at`, of a type the flow ignores."""
        n = 0
        for source, topic in self.topics.items():
            for p in range(partitions):
                eid = f"tick/{source}/{p}"
                body = orjson.dumps({"type": "Tick", "id": "tick"})
                headers = [("eid", eid.encode())]
                self._produce(
                    topic, key=b"tick", value=body, headers=headers, timestamp=at, partition=p
                )
                n += 1
        self.flush()
        return n

    def flush(self) -> None:
        remaining = self.producer.flush(300)
        if remaining or self.errors:
            raise AssertionError(f"{remaining} records not delivered; errors: {self.errors[:3]}")


class OutputWatch:
    """Reads the output topics from the beginning in a thread: observer-ids seen so far."""

    def __init__(self, bootstrap: str, topics: Sequence[str], partitions: int) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"chaos-watch-{os.getpid()}-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "log_level": 2,
            }
        )
        self.consumer.assign(
            [KafkaTopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
        )
        self.ids: set[str] = set()
        self.records = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msgs = self.consumer.consume(1000, 0.2)
            if not msgs:
                continue
            with self._lock:
                for m in msgs:
                    if m.error() is not None:
                        continue
                    oid = dict(m.headers() or []).get("observer-id")
                    self.records += 1
                    if isinstance(oid, bytes):
                        oid = oid.decode()
                    self.ids.add(oid or "<none>")

    def snapshot(self) -> tuple[set[str], int]:
        """(ids, records) read so far."""
        with self._lock:
            return set(self.ids), self.records

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def group_progress(bootstrap: str, group: str, topics: Sequence[str], partitions: int) -> int:
    """Records of the source topics not yet committed by the group (-1: could not tell)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 2})
    try:
        parts = [KafkaTopicPartition(t, p) for t in topics for p in range(partitions)]
        done = c.committed(parts, timeout=10)
        behind = 0
        for tp in done:
            if tp.error is not None:
                return -1
            _low, high = c.get_watermark_offsets(KafkaTopicPartition(tp.topic, tp.partition), 10)
            behind += high - max(tp.offset, 0)  # no commit yet: a negative offset
        return behind
    except KafkaException:
        return -1
    finally:
        c.close()


def settled(
    bootstrap: str,
    group: str,
    topics: dict[str, str],
    alive: Sequence[ObserverProcess],
    deadline: float,
    log: Callable[[str], None],
) -> None:
    """Waits (until `deadline`, monotonic) until the tracker's group has committed the keyed
    topic up to where it ends now, and the processes' outboxes are empty: whatever else the
    observer would publish for the records read is then on Kafka. Logs what it could not
    see happen (the comparison then shows what is missing)."""
    try:
        sources = [topics[s] for s in SOURCES]
        timeout = max(1.0, deadline - time.monotonic())
        wait_caught_up(bootstrap, group, sources, keyed_topic=topics["keyed"], timeout=timeout)
    except (TimeoutError, KafkaException) as exc:
        log(f"the tracker did not catch up: {exc}")
        return
    for p in alive:
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{p.port}/metrics", timeout=5).text
                if re.search(r"^observer_outbox_depth 0\.0$", text, re.M):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log(f"the outbox of {p.name} did not drain")
                return
            time.sleep(0.2)


# -- replay ---------------------------------------------------------------------------------------


def replay_lines(records: list[Record]) -> list[bytes]:
    """The source records as `observer replay` events, in event-time order (ties: topic,
    partition, offset — one key's records of one topic keep their partition order)."""
    out = []
    for r in sorted(records, key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset)):
        headers = {k: (v or b"").decode() for k, v in r.headers}
        line = {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key.decode() if r.key is not None else None,
            "value": orjson.loads(r.value or b"null"),
            "headers": headers,
            "timestamp": r.timestamp_ms,
        }
        out.append(orjson.dumps(line))
    return out


@dataclass(frozen=True)
class Published:
    topic: str
    key: str | None
    label: str  # alert kind, outcome, command type


def label_of(output: str, value: Any) -> str:
    if not isinstance(value, dict):
        return "?"
    if output == "alerts":
        return str(value.get("kind"))
    if output == "outcomes":
        return str(value.get("outcome"))
    return str(value.get("type"))


# -- the processes --------------------------------------------------------------------------------


@dataclass
class Chaos:
    """The processes of the run and what happened to them."""

    flow: Path
    env: dict[str, str]
    group: str
    procs: list[ObserverProcess]
    rng: random.Random
    log: Callable[[str], None]
    alive: list[ObserverProcess] = field(default_factory=list)
    started: int = 0
    kills: int = 0
    restarts: int = 0  # processes started again after a SIGKILL or a crash
    stops: list[int] = field(default_factory=list)  # exit codes of SIGTERM stops
    crashed: list[str] = field(default_factory=list)
    redis_restarts: int = 0
    broker_restarts: int = 0
    # seconds from a SIGKILL until the processes alive owned every shard and source partition
    # again (None: not within RECOVERY_LIMIT_S)
    restart_recovery: list[float | None] = field(default_factory=list)
    takeover_recovery: list[float | None] = field(default_factory=list)
    instance: dict[str, str] = field(default_factory=dict)  # process name -> OBSERVER_INSTANCE_ID

    def start(self, instance_id: str | None = None) -> ObserverProcess:
        self.started += 1
        name = f"observer-{self.started}"
        instance_id = instance_id or f"obs-{self.started}"
        env = {**self.env, "OBSERVER_INSTANCE_ID": instance_id}
        p = ObserverProcess(name, self.flow, env, "--group-id", self.group)
        self.procs.append(p)
        self.instance[name] = instance_id
        p.wait_ready()
        self.alive.append(p)
        self.log(
            f"started {p.name} as {instance_id} (pid {p.pid}, port {p.port}); "
            f"running: {self.names()}"
        )
        return p

    def names(self) -> str:
        return ", ".join(p.name for p in self.alive)

    def check_crashes(self) -> None:
        """A process that exited by itself is recorded (the test fails on it) and replaced, so
        the run still ends with its figures."""
        for p in list(self.alive):
            if not p.running():
                self.alive.remove(p)
                self.crashed.append(f"{p.name} exited {p.proc.returncode}:\n{p.tail(30)}")
                self.log(f"CRASHED: {p.name} exited {p.proc.returncode}; starting another")
                self.restarts += 1
                self.start()

    def scale(self, n: int) -> None:
        """To n processes; a scale-up returns once every process owns shards (the rebalance
        it set off is over: the next action then meets a settled group, see docs/running.md,
        Limits, on a process blocked by a store outage in the middle of a rebalance)."""
        grew = len(self.alive) < n
        while len(self.alive) < n:
            self.start()
        while len(self.alive) > n:
            self.stop(self.rng.choice(self.alive))
        settled = not grew or wait_until(
            lambda: all(p.owned(time.monotonic())[0] for p in self.alive),
            RECOVERY_LIMIT_S,
            "every process to own shards",
            interval=0.1,
            required=False,
        )
        if not settled:
            self.log(f"not every process owns shards {RECOVERY_LIMIT_S}s after the scale-up")

    def stop(self, p: ObserverProcess) -> None:
        self.alive.remove(p)
        rc = p.stop()
        self.stops.append(rc)
        self.log(f"stopped {p.name} with SIGTERM: exit {rc}; running: {self.names() or '-'}")

    def kill_and_restart(self) -> None:
        """SIGKILL a process and start it again at once with its instance id."""
        p = self._victim()
        self.alive.remove(p)
        rc = p.kill()
        killed = time.monotonic()
        self.kills += 1
        self.log(f"SIGKILL {p.name} (pid {p.pid}): exit {rc}")
        self.restarts += 1
        self.start(self.instance[p.name])
        self.restart_recovery.append(self._recovered(killed))

    def kill(self) -> None:
        """SIGKILL a process, not restarted: the others take its work over."""
        p = self._victim()
        self.alive.remove(p)
        rc = p.kill()
        killed = time.monotonic()
        self.kills += 1
        self.log(f"SIGKILL {p.name} (pid {p.pid}): exit {rc}; not restarted")
        self.takeover_recovery.append(self._recovered(killed))

    def _victim(self) -> ObserverProcess:
        """A random process among those that own work (a process started a moment ago may own
        nothing yet: killing it would show no failover)."""
        now = time.monotonic()
        owning = [p for p in self.alive if any(p.owned(now))]
        return self.rng.choice(owning or self.alive)

    def _recovered(self, killed: float) -> float | None:
        took = coverage_restored(
            self.alive, killed, SHARDS, len(SOURCES) * PARTITIONS, RECOVERY_LIMIT_S
        )
        said = "never" if took is None else f"{took:.1f}s"
        self.log(f"every shard and source partition owned again {said} after the SIGKILL")
        return took

    def restart_service(self, stack: Stack, service: str) -> None:
        t = time.monotonic()
        stack.ops_stack(f"restart-{service}", timeout=300)
        if service == "redis":
            self.redis_restarts += 1
        else:
            self.broker_restarts += 1
        self.log(f"restarted {service} in {time.monotonic() - t:.1f}s")

    def crash_cluster_node(self, stack: Stack, port: int) -> None:
        """SIGKILL one master of the Redis Cluster (no replica: its hash slots are down) and
        start it again on its port with its AOF and nodes.conf."""
        t = time.monotonic()
        stack.ops_stack("restart-redis-cluster-node", str(port), "--kill", timeout=300)
        self.redis_restarts += 1
        self.log(
            f"SIGKILLed and restarted the cluster master on {port} in {time.monotonic() - t:.1f}s"
        )

    def save_logs(self, folder: Path) -> int:
        """Every process's stderr to `folder`/<name>.log; returns how many logged a traceback."""
        folder.mkdir(parents=True, exist_ok=True)
        tracebacks = 0
        for p in self.procs:
            (folder / f"{p.name}.log").write_text(p.log)
            tracebacks += "Traceback" in p.log
        return tracebacks


# -- the test -------------------------------------------------------------------------------------


def chaos_env(stack: Stack, unique: str, topics: dict[str, str], redis_url: str) -> dict[str, str]:
    return observer_env(
        stack,
        unique,
        OBSERVER_REDIS_URL=redis_url,
        OBSERVER_GROUP_ID=None,  # given on the command line (Chaos.start)
        OBSERVER_KEYED_TOPIC=topics["keyed"],  # the observer creates it; deleted after the test
        OBSERVER_ALERTS_TOPIC=topics["alerts"],
        OBSERVER_OUTCOMES_TOPIC=topics["outcomes"],
        OBSERVER_DLQ_TOPIC=topics["dlq"],
        OBSERVER_IDLE_GRACE_MS=str(IDLE_GRACE_MS),
        OBSERVER_TICK_INTERVAL_MS="50",
        OBSERVER_COMMIT_INTERVAL_MS="100",
    )


@dataclass
class Expected:
    """What replay says: records published (by id), action records held (by id), and the
    incident records (their values)."""

    read: int
    published: dict[str, Published]
    held: dict[str, Published]
    incidents: list[dict[str, Any]]


def expected_records(
    bootstrap: str, flow: Path, topics: dict[str, str], env: dict[str, str], until: int, tmp: Path
) -> Expected:
    """`observer replay --until` of what the source topics hold."""
    sources = [r for s in SOURCES for r in consume_all(bootstrap, topics[s], timeout=120)]
    events = tmp / "events.jsonl"
    events.write_bytes(b"\n".join(replay_lines(sources)) + b"\n")
    done = subprocess.run(
        [OBSERVER, "replay", str(flow), "--events", str(events), "--until", str(until)],
        env={**env, "OBSERVER_LOG_LEVEL": "WARNING"},
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = Expected(len(sources), {}, {}, [])
    for raw in done.stdout.splitlines():
        line = orjson.loads(raw)
        oid = line["headers"]["observer-id"]
        output = next((o for o in OUTPUTS if topics[o] == line["topic"]), str(line["topic"]))
        where = out.held if line.get("held") else out.published
        assert oid not in out.published and oid not in out.held, f"replay wrote {oid} twice"
        where[oid] = Published(line["topic"], line["key"], label_of(output, line["value"]))
        if output == "alerts" and line["value"].get("kind") in INCIDENT_KINDS:
            out.incidents.append(line["value"])
    return out


def mix_of_replay(exp: Expected, topics: dict[str, str]) -> Counter[tuple[str, str]]:
    """What replay publishes or holds, by (output, label), as if no incident had silenced
    alerts: each closed incident gives back the alerts it suppressed (every deviation of it
    from the one that opened it on)."""
    out: Counter[tuple[str, str]] = Counter()
    for p in [*exp.published.values(), *exp.held.values()]:
        if p.label not in INCIDENT_KINDS:
            out[(next(o for o in OUTPUTS if topics[o] == p.topic), p.label)] += 1
    for inc in exp.incidents:
        if inc["kind"] == "incident_resolved":
            out[("alerts", inc["deviation"])] += inc["count"] - STORM_THRESHOLD + 1
    return out


def held_in_redis(env: dict[str, str], flow: str) -> set[str]:
    """The observer-ids `observer actions list FLOW --json` shows held."""
    done = subprocess.run(
        [OBSERVER, "actions", "list", flow, "--json"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return {orjson.loads(line)["observer_id"] for line in done.stdout.splitlines()}


def published_records(
    bootstrap: str, topics: dict[str, str]
) -> tuple[int, int, dict[str, list[Published]]]:
    """Every output topic read to its end: (records, records without an id, id -> copies)."""
    found: dict[str, list[Published]] = defaultdict(list)
    total = no_id = 0
    for o in OUTPUTS:
        for r in consume_all(bootstrap, topics[o], timeout=120):
            total += 1
            oid = r.header("observer-id")
            if oid is None:
                no_id += 1
                continue
            value = orjson.loads(r.value) if r.value else None
            key = r.key.decode() if r.key is not None else None
            found[oid.decode()].append(Published(r.topic, key, label_of(o, value)))
    return total, no_id, found


def labels(ids: Iterable[str], where: dict[str, Published]) -> str:
    counts = Counter(where[i].label for i in ids)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def write_comparison(
    path: Path,
    expected: dict[str, Published],
    found: dict[str, list[Published]],
    kinds: dict[str, list[str]],
) -> None:
    """Per order whose records differ from replay's: its kind, the labels expected, found."""
    kind_of = {key: kind for kind, keys in kinds.items() for key in keys}
    by_key: dict[str | None, list[str]] = defaultdict(list)
    for oid in set(expected) ^ set(found):
        p = expected[oid] if oid in expected else found[oid][0]
        side = "missing" if oid in expected else "unexpected"
        by_key[p.key].append(f"{side} {p.label} {oid}")
    replay: dict[str | None, list[str]] = defaultdict(list)
    for p in expected.values():
        replay[p.key].append(p.label)
    with path.open("w") as f:
        for key in sorted(by_key, key=str):
            exp = sorted(replay[key])
            f.write(f"{key} ({kind_of.get(str(key), '?')}), replay: {exp}\n")
            for line in sorted(by_key[key]):
                f.write(f"    {line}\n")


def seconds(values: Sequence[float | None]) -> str:
    return ", ".join("never" if v is None else f"{v:.1f}" for v in values) or "-"


def examples(ids: Sequence[str], where: dict[str, Published]) -> str:
    return "\n".join(f"  {i}: {where[i]}" for i in ids[:5])


@pytest.fixture
def keyed_topic(admin: AdminClient, unique: str) -> Iterator[str]:
    """The name of the observers' internal keyed topic, deleted after the test."""
    name = f"{unique}.keyed"
    yield name
    for future in admin.delete_topics([name], operation_timeout=30).values():
        with contextlib.suppress(KafkaException):  # never created
            future.result(30)


Actions = list[tuple[str, Callable[[], None]]]


@dataclass(frozen=True)
class Scenario:
    """What a chaos run varies: the workload's size, where the state lives, the chaos."""

    orders: int
    waves: int
    redis_url: str
    # the flow's guardrails (the storm's incidents and held commands): a Redis Cluster refuses them
    guardrails: bool
    # the chaos: action i after wave i (the waves after the last action are read by who is left)
    actions: Callable[[Chaos], Actions]


@dataclass
class ChaosRun:
    """The fixtures a chaos run uses; `run(scenario)` runs one and asserts its outcome."""

    stack: Stack
    unique: str
    create_topics: CreateTopics
    keyed_topic: str
    observer_procs: list[ObserverProcess]
    figures: list[str]
    tmp_path: Path

    def run(self, scenario: Scenario) -> None:
        run_chaos(scenario, self)


@pytest.fixture
def chaos_run(
    stack: Stack,
    unique: str,
    create_topics: CreateTopics,
    keyed_topic: str,
    observer_procs: list[ObserverProcess],
    figures: list[str],
    tmp_path: Path,
) -> ChaosRun:
    if not stack.kafka_managed:
        pytest.fail(
            "the chaos test restarts Kafka, so it needs the ops/stack broker; "
            'against services of your own, leave it out with -m "not slow"'
        )
    return ChaosRun(stack, unique, create_topics, keyed_topic, observer_procs, figures, tmp_path)


def test_chaos_three_processes_kills_scaling_redis_and_broker_restarts_lose_nothing(
    chaos_run: ChaosRun, stack: Stack
) -> None:
    if not stack.redis_managed:
        pytest.fail(
            "the chaos test restarts Redis, so it needs the ops/stack Redis; "
            'against services of your own, leave it out with -m "not slow"'
        )

    def actions(chaos: Chaos) -> Actions:
        return [
            ("scale 1 -> 3", lambda: chaos.scale(3)),
            ("SIGKILL + restart", chaos.kill_and_restart),
            ("SIGKILL + restart", chaos.kill_and_restart),
            ("restart Redis", lambda: chaos.restart_service(stack, "redis")),
            ("SIGKILL + restart", chaos.kill_and_restart),
            ("restart the broker", lambda: chaos.restart_service(stack, "kafka")),
            ("SIGKILL + restart", chaos.kill_and_restart),
            ("SIGKILL, no restart (3 -> 2)", chaos.kill),
            ("scale 2 -> 1", lambda: chaos.scale(1)),
        ]

    chaos_run.run(Scenario(ORDERS, WAVES, stack.redis_url, guardrails=True, actions=actions))


def test_chaos_on_a_redis_cluster_master_crashes_kills_and_a_broker_restart_lose_nothing(
    cluster_url: str, cluster: RedisCluster, chaos_run: ChaosRun, stack: Stack
) -> None:
    """The same workload and check with the state on the Redis Cluster of ops/stack (three
    masters, no replicas), smaller; its masters are SIGKILLed and started again (their slots
    are down meanwhile: a store failure for the observer, recovered from Kafka), the seed node
    of the observer's URL (its slot map comes from there) and another. (`cluster` comes first:
    set up before the processes, it removes the keys after they are stopped.)"""
    if os.environ.get("OBSERVER_REDIS_CLUSTER_URL"):
        pytest.fail("the chaos test crashes cluster nodes, so it needs ops/stack's redis-cluster")
    seed = int(cluster_url.rsplit(":", 1)[1])
    other = seed + 1 + random.Random(SEED).randrange(CLUSTER_NODES - 1)

    def actions(chaos: Chaos) -> Actions:
        return [
            ("scale 1 -> 2", lambda: chaos.scale(2)),
            (f"SIGKILL the master on {other}", lambda: chaos.crash_cluster_node(stack, other)),
            ("SIGKILL + restart", chaos.kill_and_restart),
            (f"SIGKILL the seed master {seed}", lambda: chaos.crash_cluster_node(stack, seed)),
            ("SIGKILL + restart", chaos.kill_and_restart),
            ("restart the broker", lambda: chaos.restart_service(stack, "kafka")),
            ("SIGKILL, no restart (2 -> 1)", chaos.kill),
        ]

    chaos_run.run(
        Scenario(CLUSTER_ORDERS, CLUSTER_WAVES, cluster_url, guardrails=False, actions=actions)
    )


def run_chaos(scenario: Scenario, ctx: ChaosRun) -> None:
    """The workload in waves with the scenario's chaos, then the exact comparison with
    replay (the module's docstring)."""
    stack, unique, figures, tmp_path = ctx.stack, ctx.unique, ctx.figures, ctx.tmp_path
    orders, waves_n = scenario.orders, scenario.waves
    t_begin = time.monotonic()

    def log(msg: str) -> None:
        print(f"[chaos {time.monotonic() - t_begin:6.1f}s] {msg}", flush=True)

    topics = {name: f"{unique}.{name}" for name in (*SOURCES, *OUTPUTS)}
    topics["keyed"] = ctx.keyed_topic
    # the ticks lie hours ahead of the wall clock; brokers refuse more than 1 h by default
    ahead = {"message.timestamp.after.max.ms": str(7 * 24 * 3600 * 1000)}
    ctx.create_topics([topics[s] for s in SOURCES], PARTITIONS, ahead)
    ctx.create_topics([topics[o] for o in OUTPUTS], PARTITIONS)
    flow = tmp_path / "chaos.flow.yaml"
    text = FLOW_TEMPLATE.read_text().replace("CHAOS.", f"{unique}.")
    if not scenario.guardrails:
        text, n = re.subn(r"^guardrails:\n(?:  .*\n)+", "", text, flags=re.M)
        assert n == 1, "chaos.flow.yaml: no guardrails block to leave out"
    flow.write_text(text)
    group = f"{unique}-observer"
    env = chaos_env(stack, unique, topics, scenario.redis_url)

    base = time.time_ns() // 1_000_000
    base -= base % 1000
    work = make_workload(orders, base, SEED)
    tick_at = work.first + orders * ORDER_GAP_MS + TICK_AFTER_MS
    assert tick_at > work.last + 30_000 + 3_600_000  # past every expire (30 s) + retain (1 h)
    n = len(work.events)
    waves = [work.events[i * n // waves_n : (i + 1) * n // waves_n] for i in range(waves_n)]
    mix = ", ".join(f"{k} {len(v)}" for k, v in sorted(work.kinds.items()))
    where = "a Redis Cluster" if scenario.redis_url.startswith("redis+cluster") else "Redis"
    log(f"seed {SEED}: {orders} orders ({mix}), {n} events in {waves_n} waves; state on {where}")

    chaos = Chaos(flow, env, group, ctx.observer_procs, random.Random(SEED), log)
    producer = WaveProducer(stack.bootstrap_servers, {s: topics[s] for s in SOURCES})
    watch = OutputWatch(stack.bootstrap_servers, [topics[o] for o in OUTPUTS], PARTITIONS)
    actions = scenario.actions(chaos)  # after wave i, action i
    assert len(actions) < waves_n, "the last wave is read without chaos"
    source_topics = [topics[s] for s in SOURCES]
    try:
        chaos.scale(1)
        t_produce = time.monotonic()
        for i, wave in enumerate(waves):
            producer.send(wave)
            upto = (wave[-1].at - base) / 1000
            log(f"wave {i + 1}/{waves_n}: {len(wave)} events (event time up to +{upto:.0f}s)")
            chaos.check_crashes()
            if i < len(actions):
                name, act = actions[i]
                behind = group_progress(stack.bootstrap_servers, group, source_topics, PARTITIONS)
                log(f"chaos: {name} (source records not committed yet: {behind})")
                act()
        ticks = producer.ticks(tick_at, PARTITIONS)
        took = time.monotonic() - t_produce
        log(f"{ticks} ticks at +{(tick_at - base) / 1000:.0f}s; waves and chaos took {took:.1f}s")

        # what `observer replay` publishes for exactly the records the topics hold
        t_replay = time.monotonic()
        replayed = expected_records(stack.bootstrap_servers, flow, topics, env, tick_at, tmp_path)
        read, expected = replayed.read, replayed.published
        took = time.monotonic() - t_replay
        log(
            f"replay of {read} records: {len(expected)} records expected, "
            f"{len(replayed.held)} held, {len(replayed.incidents)} incident records ({took:.1f}s)"
        )
        assert read == n + ticks, f"read back {read} source records, produced {n} + {ticks}"
        # the workload does what it says (a check of the test, not of the observer)
        by_mix = expected_by_mix(work.kinds)
        by_replay = mix_of_replay(replayed, topics)
        storm = [i for i in replayed.incidents if i["kind"] == "incident"]
        assert {(i["deviation"], i["step"]) for i in storm} == (
            {("missing", "paid"), ("sla_breach", None)} if scenario.guardrails else set()
        ), f"the storm should open one incident at paid and one of the SLA: {storm}"
        assert by_replay == by_mix, (
            f"the workload's expectations and the replay differ (a bug of the test): "
            f"replay - mix {dict(by_replay - by_mix)}, mix - replay {dict(by_mix - by_replay)}"
        )

        # wait: every source record committed by the group, and every expected id published;
        # then everything processed is durable and published (at most 300 s in all)
        t_wait = time.monotonic()
        want = set(expected)
        behind = -1
        while time.monotonic() < t_wait + 300:
            chaos.check_crashes()
            behind = group_progress(stack.bootstrap_servers, group, source_topics, PARTITIONS)
            ids, _ = watch.snapshot()
            if behind == 0 and want <= ids:
                settled(stack.bootstrap_servers, group, topics, chaos.alive, t_wait + 300, log)
                break
            time.sleep(0.5)
        took = time.monotonic() - t_wait
        log(f"waited {took:.1f}s after the replay (source records not committed: {behind})")
    finally:
        watch.close()
    for p in list(chaos.alive):
        chaos.stop(p)
    tracebacks = chaos.save_logs(tmp_path / "logs")
    held = held_in_redis(env, "chaos") if scenario.guardrails else set()

    total, no_id, found = published_records(stack.bootstrap_servers, topics)
    first = {oid: copies[0] for oid, copies in found.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misplaced = sorted(
        oid
        for oid in set(found) & set(expected)
        if any((p.topic, p.key) != (expected[oid].topic, expected[oid].key) for p in found[oid])
    )
    duplicates = sum(len(copies) - 1 for copies in found.values())
    duplicated = sum(1 for copies in found.values() if len(copies) > 1)
    alerts = topics["alerts"]
    missing_expected = {
        o for o, p in expected.items() if p.topic == alerts and p.label == "missing"
    }
    missing_found = {
        o for o, ps in found.items() if any(p.topic == alerts and p.label == "missing" for p in ps)
    }
    false_missing = sorted(missing_found - missing_expected)
    by_label = Counter(p.label for p in expected.values())
    exp_by = ", ".join(f"{k} {v}" for k, v in sorted(by_label.items()))

    figures += [
        f"seed {SEED}; orders {orders}: {mix}; state on {where}",
        f"events {n} (+{ticks} ticks) on {len(SOURCES)} topics x {PARTITIONS} partitions, "
        f"{waves_n} waves",
        f"processes started {chaos.started}; SIGKILLs {chaos.kills}; restarts {chaos.restarts}; "
        f"SIGTERM stops {len(chaos.stops)} (exit codes {chaos.stops}); crashed {len(chaos.crashed)}; "
        f"logs with a traceback {tracebacks}; Redis restarts {chaos.redis_restarts}; "
        f"broker restarts {chaos.broker_restarts}",
        f"records expected {len(expected)} ({exp_by})",
        f"records found {total}, distinct ids {len(found)}, duplicates by id {duplicates} "
        f"(on {duplicated} ids), without observer-id {no_id}",
        f"missing {len(missing)}, unexpected {len(unexpected)}, wrong topic/key {len(misplaced)}; "
        f"`missing` alerts expected {len(missing_expected)}, found {len(missing_found)}, "
        f"false {len(false_missing)}",
        f"failover, s from a SIGKILL until every shard and source partition is owned again: "
        f"restarted at once (same instance id) {seconds(chaos.restart_recovery)}; "
        f"not restarted, taken over {seconds(chaos.takeover_recovery)}",
        f"storm: {len(work.kinds.get('storm', []))} orders without payment; incident records "
        f"{labels([o for o, p in expected.items() if p.label in INCIDENT_KINDS], expected)}; "
        f"held {len(held)} (replay {len(replayed.held)}: {labels(replayed.held, replayed.held)}), "
        f"held but published {len(set(replayed.held) & set(found))}",
        f"took {time.monotonic() - t_begin:.0f}s; process logs and the records in {tmp_path}",
    ]
    if missing or unexpected:
        figures += [
            f"missing by kind: {labels(missing, expected)}",
            f"unexpected by kind: {labels(unexpected, first)}",
        ]
    write_comparison(tmp_path / "comparison.txt", expected, found, work.kinds)
    for line in figures:
        log(line)

    assert not missing, (
        f"{len(missing)} expected records never published, e.g.\n{examples(missing, expected)}"
    )
    assert not unexpected, (
        f"{len(unexpected)} published records replay does not publish, e.g.\n"
        f"{examples(unexpected, first)}"
    )
    assert not false_missing, f"false `missing` alerts:\n{examples(false_missing, first)}"
    assert len(missing_found) == len(missing_expected)
    assert not misplaced, (
        f"records on another topic or key than in replay:\n{examples(misplaced, first)}"
    )
    assert no_id == 0, f"{no_id} published records without an observer-id header"
    assert held == set(replayed.held), (
        f"held in Redis but not in replay: {len(held - set(replayed.held))}, "
        f"held in replay but not in Redis: {len(set(replayed.held) - held)}"
    )
    assert not set(replayed.held) & set(found), "held actions were published without a release"
    assert not chaos.crashed, "processes exited by themselves:\n" + "\n".join(chaos.crashed)
    recoveries = chaos.restart_recovery + chaos.takeover_recovery
    assert None not in recoveries, (
        f"a killed process's work was not owned again within {RECOVERY_LIMIT_S}s: {recoveries}"
    )
