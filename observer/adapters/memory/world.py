"""`InMemoryWorld`: Kafka, Redis, webhooks and time in memory, wired into the runtime's ports
the way `observer.cli` wires the real adapters (for tests and `benchmarks/pipeline.py`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from observer.adapters.memory.broker import InMemoryBroker
from observer.adapters.memory.clock import ManualClock
from observer.adapters.memory.flows import InMemoryFlowFiles, InMemoryFlowStore
from observer.adapters.memory.lease import InMemoryLease, LeaseTable
from observer.adapters.memory.sink import InMemoryRawSink, InMemoryRecordSink
from observer.adapters.memory.source import InMemoryEventSource
from observer.adapters.memory.store import InMemoryStateStore
from observer.adapters.memory.tally import InMemoryTally
from observer.adapters.memory.webhooks import InMemoryWebhookSender
from observer.config import ObserverConfig
from observer.ingest import SourceRecord
from observer.runtime.local import LocalKeyedTopic
from observer.runtime.ports import EventSource, RawSink, RuntimePorts

__all__ = ["InMemoryWorld"]


class InMemoryWorld:
    """One observer process's surroundings: a broker (source topics, the keyed topic unless
    `routing: direct` keeps it in the process, the observer's own topics), a state store, a
    webhook sender, a lease table and a clock. Several worlds may share a broker, a store and
    a lease table (`broker=`, `store=`, `lease_table=`) to run several processes."""

    def __init__(
        self,
        config: ObserverConfig,
        *,
        clock: ManualClock | None = None,
        broker: InMemoryBroker | None = None,
        store: InMemoryStateStore | None = None,
        lease_table: LeaseTable | None = None,
        owner: str = "process-1",
        flows: InMemoryFlowStore | None = None,
        flow_files: InMemoryFlowFiles | None = None,
    ) -> None:
        """`flows`: the group's deployed versions (issue 15; shared by the worlds of one
        group; none: the runtime runs only the flows it is given); `flow_files`: the flow
        files this process watches."""
        self.config = config
        self.clock = clock or ManualClock()
        self.broker = broker or InMemoryBroker()
        self.store = store or InMemoryStateStore(history_cap=config.history_cap)
        self.sink = InMemoryRecordSink(self.broker)
        self.router_sink = InMemoryRawSink(self.broker)
        self.router_source = InMemoryEventSource(self.broker, config.group_id)
        self.webhooks = InMemoryWebhookSender()
        self.tally = InMemoryTally()  # correlation health: per-minute counts
        self.lease_table = lease_table or LeaseTable(self.clock.monotonic)
        self.local: LocalKeyedTopic | None = None
        self.keyed_source: InMemoryEventSource | None = None
        keyed = config.keyed_topic_name()
        if config.routing == "direct":
            self.local = LocalKeyedTopic(
                keyed, config.shards, sink=self.router_sink, source=self.router_source
            )
        else:
            self.broker.create(keyed, config.shards)
            self.keyed_source = InMemoryEventSource(self.broker, f"{config.group_id}.keyed")
        self.lease = InMemoryLease(self.lease_table, owner, config.lease_ttl_ms)
        self.flows = flows
        self.flow_files = flow_files

    def ports(self) -> RuntimePorts:
        source: EventSource
        raw_sink: RawSink
        backlog: Callable[[], int] | None = None
        lease = None
        if self.local is not None:
            source, raw_sink, backlog = self.local.source, self.local.sink, self.local.unread
            lease = self.lease
        else:
            assert self.keyed_source is not None
            source, raw_sink = self.keyed_source, self.router_sink
        return RuntimePorts(
            source=source,
            sink=self.sink,
            router_source=self.router_source,
            router_sink=raw_sink,
            store=self.store,
            webhooks=self.webhooks,
            clock=self.clock,
            lease=lease,
            backlog=backlog,
            flows=self.flows,
            flow_files=self.flow_files,
            tally=self.tally,
        )

    def produce(
        self,
        topic: str,
        value: Any,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, Any]] = (),
        timestamp: int | None = None,
    ) -> SourceRecord:
        """A record on a source topic (timestamp: the clock's wall time unless given)."""
        ts = self.clock.now_ms() if timestamp is None else timestamp
        return self.broker.append(topic, partition, key, value, headers, ts)

    def published(self, topic: str) -> list[SourceRecord]:
        """Every record on one of the observer's topics (alerts, outcomes, commands, dead letters)."""
        return self.broker.records(topic)
