"""The runtime's ports: what the loop needs from the world, as small interfaces and plain data.

Adapters (`observer.adapters.*`) implement these: Kafka and Redis for `observer run`, in-memory
ones (`observer.adapters.memory`) for tests and benchmarks; `observer.cli` wires them. Times are
epoch ms unless a name says otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from observer.flows.registry import FlowRegistry
from observer.flows.stored import DeployPlan, StoredFlow
from observer.ingest import SourceRecord
from observer.runtime.guard_ports import (
    GatedAction,
    GuardCommit,
    GuardSnapshot,
    HeldActions,
    WaitingAdd,
)
from observer.runtime.outbox import OutboxRecord
from observer.runtime.watermark import TopicPartition

__all__ = [
    "Clock",
    "DueSlots",
    "EventSource",
    "FlowFiles",
    "FlowStore",
    "GatedAction",
    "GuardCommit",
    "GuardSnapshot",
    "HeldActions",
    "Lease",
    "Pending",
    "RawSink",
    "RebalanceListener",
    "RecordSink",
    "RuntimePorts",
    "SlotPut",
    "SlotReader",
    "StateStore",
    "TallySink",
    "WaitingAdd",
    "WebhookSender",
    "WriteBatch",
]

T_co = TypeVar("T_co", covariant=True)


class Clock(Protocol):
    """Time, the runtime's only source of it: the wall clock for what is recorded or compared
    with event times, a monotonic clock for intervals and timeouts, and waiting."""

    def now_ms(self) -> int:
        """Wall-clock time, epoch ms."""
        ...

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back; only differences mean anything."""
        ...

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        """Wait `seconds`, or less if `wake` is set meanwhile; returns whether `wake` is set."""
        ...


@dataclass(slots=True)
class SlotPut:
    """Write one slot: its state (with a TTL as a safety net), its next due time (None: not
    due) and history entries to append (the history gets the same TTL)."""

    shard: int
    sid: str
    state: bytes
    ttl_ms: int
    due: int | None
    history: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class WriteBatch:
    """Everything one batch (or one tick) changes, written atomically in one round trip. The
    reply is the observer-ids of the `gated` records held (their flow is paused)."""

    puts: list[SlotPut] = field(default_factory=list)
    deletes: list[tuple[int, str]] = field(default_factory=list)  # state, history, due member
    stale_due: list[tuple[int, str]] = field(default_factory=list)  # due members without state
    outbox_adds: list[tuple[int, str, bytes]] = field(default_factory=list)  # shard, id, record
    outbox_dels: list[tuple[int, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # field -> increment
    # guardrails (contract §7): deviations waiting for their flow's decider, action records a
    # pause holds, and (shard, watermark ms) of shards whose timers up to it all fired
    waiting: list[WaitingAdd] = field(default_factory=list)
    gated: list[GatedAction] = field(default_factory=list)
    watermarks: list[tuple[int, int]] = field(default_factory=list)
    # (flow, slot id, due ms or None to remove): instances of a guarded flow with timers that
    # have not fired yet though due (waiting for an alias answer): the flow's decider waits
    floors: list[tuple[str, str, int | None]] = field(default_factory=list)
    # Redis Cluster (issue 18): `stats` by the shard whose write counts them ((shard, field) ->
    # increment), so that each shard's write is atomic on its own
    shard_stats: dict[tuple[int, str], int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.puts
            or self.deletes
            or self.stale_due
            or self.outbox_adds
            or self.outbox_dels
            or self.stats
            or self.waiting
            or self.gated
            or self.watermarks
            or self.floors
        )


@dataclass(slots=True)
class DueSlots:
    """Slots due at or before their shard's watermark, with their state (None: the state is
    gone), and how far the most overdue shard is behind (watermark minus its earliest due
    time; None: nothing is due)."""

    slots: list[tuple[int, str, bytes | None]]
    overdue_ms: int | None


class Pending(Protocol[T_co]):
    """A request sent to the store whose reply has not been read yet."""

    def result(self) -> T_co:
        """Wait for the reply. Raises StoreError."""
        ...


class StateStore(Protocol):
    """Slot state, deadlines, outbox and history (Redis). Every method raises StoreError.

    `write` returns before the store confirms it; every other request sees the writes whose
    replies were read, but a `load` may not see a write still pending (the runtime waits for
    a write before it loads a slot that write touches)."""

    def open(self, shards: int, deployed: Mapping[str, object]) -> None:
        """Connect, check the shard count recorded in the store, record what is deployed."""
        ...

    def load(self, slots: Sequence[tuple[int, str]]) -> Pending[list[bytes | None]]: ...

    def write(self, batch: WriteBatch) -> Pending[list[str]]:
        """Apply `batch`; the reply: observer-ids of its `gated` records held (paused)."""
        ...

    def due(self, watermarks: Sequence[tuple[int, int]], limit: int) -> DueSlots:
        """Slots due at or before their shard's watermark, for (shard, watermark) pairs."""
        ...

    def outbox(self, shards: Iterable[int]) -> Iterator[tuple[int, str, bytes]]:
        """Every (shard, observer-id, record) left in the outbox of these shards."""
        ...

    def stats(self) -> dict[str, int]:
        """The store's counters (`open:<flow>` -> open instances)."""
        ...

    def reconnect(self) -> None:
        """Connect again; replies still pending fail with StoreError."""
        ...

    def close(self) -> None: ...

    # guardrails (contract §7)

    def guard_read(self, flow: str, shards: int, limit: int) -> GuardSnapshot:
        """The snapshot a flow's decider works from (`shards`: how many watermarks to expect)."""
        ...

    def guard_commit(self, flow: str, commit: GuardCommit) -> bool:
        """Write a decider's work; False (nothing written) if another committed since."""
        ...

    def pause(self, flow: str | None, reason: str) -> None:
        """Hold every action of `flow` (None: of every flow) until resumed."""
        ...


class SlotReader(Protocol):
    """Read-only access for the ops API and `observer status` (never the consumer loop)."""

    def read(self, flow: str, key: str) -> tuple[bytes | None, list[bytes]]:
        """(state, history entries oldest first) of a slot."""
        ...

    def deployed(self) -> dict[str, object] | None: ...


class Lease(Protocol):
    """One holder at a time, for a limited time (`routing: direct` runs one process). Every
    method raises StoreError when the store cannot be reached."""

    def acquire(self) -> str | None:
        """Take the lease (or keep it); None if ours, else who holds it."""
        ...

    def renew(self) -> bool:
        """Extend the lease; False if someone else holds it now."""
        ...

    def release(self) -> None: ...


class RebalanceListener(Protocol):
    def assigned(self, tps: list[TopicPartition]) -> None: ...

    def revoked(self, tps: list[TopicPartition]) -> None: ...

    def lost(self, tps: list[TopicPartition]) -> None: ...

    def commit_done(self, error: str | None, offsets: dict[TopicPartition, int]) -> None:
        """A background commit was confirmed (error None) or failed."""
        ...


class EventSource(Protocol):
    """The source topics (a Kafka consumer in a group)."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]: ...

    def serve(self, timeout_s: float) -> None:
        """Serve the consumer without handing over records, waiting at most `timeout_s`:
        rebalance callbacks and commit reports reach the listener (a rebalance must not wait
        while the state store is down). Records fetched meanwhile are dropped: the caller seeks
        back to its committed offsets before it reads again."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int], wait: bool) -> None:
        """Commit next offsets; `wait=False` commits in the background (the outcome is reported
        to the listener's `commit_done`)."""
        ...

    def offsets(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, int | None, int | None]]:
        """(low, high, position) per partition from the client's cache (no network)."""
        ...

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Committed offsets (network); partitions with none are left out."""
        ...

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read assigned partitions again from these offsets (-2: the beginning)."""
        ...

    def healthy(self) -> bool:
        """False since the client reported every broker down, until it reads again."""
        ...

    def probe(self, timeout_s: float) -> bool:
        """Ask the cluster for metadata (blocks up to `timeout_s`); True if it answered."""
        ...

    def partitions(self, topics: Sequence[str]) -> dict[str, int] | None:
        """Partition count of each existing topic among `topics` (network); None if the
        cluster did not answer."""
        ...

    def fetch(
        self, wanted: Sequence[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], SourceRecord]:
        """Records read again by their (topic, partition, offset), with one short-lived reader
        (network, slow: for dead letters only); those that are gone are left out."""
        ...

    def close(self) -> None: ...


class RawSink(Protocol):
    """A producer for records the observer writes as they are (keyed topic, dead letters).
    `on_done(error)` is called from `poll`/`flush`; None: no report wanted."""

    def produce(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, Any]],
        timestamp: int | None,
        on_done: Callable[[str | None], None] | None,
    ) -> None: ...

    def produce_values(
        self,
        topic: str,
        records: Sequence[tuple[int, bytes, Callable[[str | None], None] | None]],
    ) -> None:
        """(partition, value, on_done) records, no key, headers or timestamp; order kept."""
        ...

    def poll(self, timeout_s: float) -> None: ...

    def flush(self, timeout_s: float) -> int: ...

    def close(self) -> None: ...


class RecordSink(Protocol):
    """The producer. `send` hands a record over; `on_done(observer_id, error, final)` is called
    from `poll`/`flush` once the broker acknowledged it (error None) or gave up; `final`: the
    broker refuses this record for good (too large, invalid), retrying cannot help."""

    def send(
        self, record: OutboxRecord, on_done: Callable[[str, str | None, bool], None]
    ) -> None: ...

    def poll(self, timeout_s: float) -> None: ...

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still outstanding."""
        ...

    def close(self) -> None: ...


class WebhookSender(Protocol):
    """POSTs webhook records off the consumer thread, retrying with backoff."""

    def start(self) -> None: ...

    def submit(self, shard: int, record: OutboxRecord) -> None: ...

    def take_done(self) -> list[tuple[int, str, bool]]:
        """(shard, observer-id, delivered) of records finished since the last call
        (delivered False: gave up after the last attempt)."""
        ...

    def stop(self, timeout_s: float) -> None: ...


class FlowStore(Protocol):
    """The flow versions deployed to the group, kept with its state (issue 15). Every method
    raises StoreError when the store cannot be reached."""

    def deploy(self, flows: Sequence[StoredFlow]) -> DeployPlan:
        """Atomically store the versions not stored yet, unless one is refused (its version is
        stored with another definition): then nothing is stored. A deployment that adds a
        version moves the generation on."""
        ...

    def generation(self) -> int:
        """A number that changes whenever the stored versions do (0: none ever stored)."""
        ...

    def stored(self) -> dict[str, StoredFlow]:
        """Every stored version, by `<flow>:<version>`."""
        ...

    def instances(self, flow: str) -> dict[int, int]:
        """Open and retained instances of the flow per version, counted in the state (a scan
        of every slot of the flow: for retirement, not for the hot path)."""
        ...

    def retire(self, flow: str, version: int, digest: str) -> bool:
        """Forget a stored version (if it still has that digest); True if it was removed."""
        ...

    def now_ms(self) -> int:
        """The store's clock (deployment times are compared with it, never with a process')."""
        ...

    def report(self, process: str, generation: int) -> None:
        """Say that `process` runs `generation` (now, by the store's clock): what `observer
        deploy --wait` waits for."""
        ...

    def processes(self) -> dict[str, tuple[int, int]]:
        """process -> (generation, when it last said so, epoch ms of the store's clock)."""
        ...

    def forget(self, process: str) -> None:
        """A process that stops, or that stopped long ago."""
        ...

    def close(self) -> None: ...


class TallySink(Protocol):
    """Where the per-minute correlation-health counts go (Redis: one hash per minute that
    every process adds to; `observer/correlation.py` says what is counted)."""

    def add(self, counts: Mapping[int, Mapping[tuple[str, str, str, str], int]]) -> None:
        """Add counts (epoch minute -> count -> n). Raises StoreError."""
        ...

    def close(self) -> None: ...


class FlowFiles(Protocol):
    """The flow files `observer run` was given, watched for changes (issue 15)."""

    def changed(self) -> bool:
        """Whether a file changed, was added or removed since the last `load` (cheap)."""
        ...

    def load(self) -> tuple[FlowRegistry, list[StoredFlow]]:
        """Load and compile them. Raises FlowError (every problem, by file and line)."""
        ...


@dataclass(frozen=True, slots=True)
class RuntimePorts:
    """Everything `Runtime` talks to, as `observer.cli` (or a test) wires it.

    `router_source` reads the source topics; `router_sink` writes the keyed topic and dead
    letters; `source` is the tracker's reader of the keyed topic; `sink` publishes outbox
    records. `lease` and `backlog` are set for `routing: direct` only (the lease that keeps it
    to one process, and how many routed records the tracker has not read yet)."""

    source: EventSource
    sink: RecordSink
    router_source: EventSource
    router_sink: RawSink
    store: StateStore
    webhooks: WebhookSender
    clock: Clock
    lease: Lease | None = None
    backlog: Callable[[], int] | None = None
    # issue 15: the group's deployed flow versions (None: only the flows given, not kept)
    # and the flow files to watch (None: no hot reload)
    flows: FlowStore | None = None
    flow_files: FlowFiles | None = None
    tally: TallySink | None = None  # correlation health (issue 16); None: counted, not kept
    # issue 16: reads values of the registry formats (avro, protobuf, json_schema; None: Avro
    # with local schemas only), and registry subject -> the Confluent wire format's header,
    # for actions that name a subject (`adapters/schema_registry/`)
    decoder: Callable[[bytes, Any], Any] | None = None
    wire: Mapping[str, bytes] | None = None
