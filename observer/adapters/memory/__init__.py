"""In-memory adapters: every port of the runtime without Kafka, Redis or HTTP, for fast unit
tests of the runtime's logic (with a `ManualClock`) and for `benchmarks/pipeline.py`.

They keep the semantics of the real adapters that the runtime relies on (rebalance callbacks
and commit reports inside `poll`, delivery reports from `poll`/`flush`, atomic store writes,
replies that fail after a reset) and add ways to make them fail. These modules import each
other (they are one adapter) and nothing of the other adapters.
"""

from observer.adapters.memory.broker import InMemoryBroker
from observer.adapters.memory.clock import ManualClock
from observer.adapters.memory.flows import InMemoryFlowFiles, InMemoryFlowStore
from observer.adapters.memory.lease import InMemoryLease, LeaseTable
from observer.adapters.memory.sink import InMemoryRawSink, InMemoryRecordSink
from observer.adapters.memory.source import InMemoryEventSource
from observer.adapters.memory.store import InMemoryStateStore
from observer.adapters.memory.tally import InMemoryTally
from observer.adapters.memory.webhooks import InMemoryWebhookSender
from observer.adapters.memory.world import InMemoryWorld

__all__ = [
    "InMemoryBroker",
    "InMemoryEventSource",
    "InMemoryFlowFiles",
    "InMemoryFlowStore",
    "InMemoryLease",
    "InMemoryRawSink",
    "InMemoryRecordSink",
    "InMemoryStateStore",
    "InMemoryTally",
    "InMemoryWebhookSender",
    "InMemoryWorld",
    "LeaseTable",
    "ManualClock",
]
