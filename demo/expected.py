"""What the observer should publish about each order, from the engine itself.

The demo does not read the flow language to predict outcomes. It hands every record the shop
publishes, in the order it publishes them, to `observer.replay`'s `Replayer` — the engine on a
virtual clock, as `observer replay` runs it — and keeps what that publishes, order by order.
So the verdict compares `observer run` on Kafka and Redis with the very same engine over the
very same records; a flow or engine change moves both sides alike.

The records also go, one JSON object a line, to a timeline file (`timeline.jsonl` in the run
directory), so that

    observer replay FLOW --events timeline.jsonl --until T

prints exactly what the demo expected (T: `expected_until` in summary.json).
"""

from __future__ import annotations

from typing import TextIO

import orjson

from demo.records import Incidents, Published, RecordReader
from demo.wire import WireRecord
from observer.engine.effects import Effect, Publish
from observer.flows.registry import FlowRegistry
from observer.ingest import SourceRecord
from observer.replay import Replayer
from observer.topics import Topics

__all__ = ["Expected"]


def _text(raw: str | bytes | None) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")


class Expected:
    """The engine over the shop's records, and what it publishes per order key."""

    def __init__(
        self,
        registry: FlowRegistry,
        reader: RecordReader,
        topics: Topics,
        timeline: TextIO | None = None,
    ) -> None:
        self.reader = reader
        self.registry = registry
        self.timeline = timeline
        self.until_ms: int | None = None  # the virtual clock was last moved to this by `until`
        self._orders: dict[str, Published] = {}
        self.incidents = Incidents(topics)  # the guardrails' incident records (flow-level)
        self._offset = 0  # the record's line in the timeline, as `observer replay` numbers it
        self._replayer = Replayer(registry, self._emit, topics)

    def record(self, rec: WireRecord) -> None:
        """A record the shop published: the engine applies it (firing the timers due before)."""
        headers = dict(rec.headers)
        if self.timeline is not None:
            line = {
                "topic": rec.topic,
                "key": rec.key,
                "value": rec.value,
                "headers": headers,
                "timestamp": rec.timestamp,
            }
            self.timeline.write(orjson.dumps(line).decode() + "\n")
        src = SourceRecord(rec.topic, 0, self._offset, rec.key, rec.value, headers, rec.timestamp)
        self._offset += 1
        self._replayer.apply(src)

    def until(self, at_ms: int) -> None:
        """Fire every timer due at or before `at_ms` and let the guardrails decide up to it,
        as `observer replay --until` does at the end. Otherwise the clock moves only with the
        records' timestamps; the live demo calls this before the end only when the shop will
        publish nothing older (it is idle but for answers to commands still to come)."""
        if self.until_ms is not None and at_ms <= self.until_ms:
            return
        self._replayer.advance_to(at_ms)
        self.until_ms = at_ms

    def of(self, key: str) -> Published:
        """What the engine published about order `key` so far (empty: nothing)."""
        return self._orders.get(key) or Published()

    def quiet(self, flow: str, key: str, within_ms: int) -> bool:
        """Whether the engine has nothing of order `key` due within `within_ms` of its clock
        (an order whose actions are held waits for an operator, no deadline near)."""
        slot = self._replayer.slots.get((flow, key))
        due = self._replayer.engine.next_due(slot, lifecycle=False) if slot is not None else None
        return due is None or due > self._replayer.clock + within_ms

    def steps_seen(self, flow: str, key: str) -> list[str]:
        """The steps of order `key` the engine has observed, in event-time order (an event
        waiting for its instance to start is not observed yet)."""
        slot = self._replayer.slots.get((flow, key))
        instance = slot.instance if slot is not None else None
        if instance is None:
            return []
        compiled = self.registry.get(flow, instance.version)
        if compiled is None:
            return []
        order = sorted(instance.observed.items(), key=lambda item: (item[1], item[0]))
        return [compiled.steps[i].name for i, _ in order]

    def held(self) -> int:
        """How many actions the engine holds so far."""
        return sum(len(p.held) for p in self._orders.values())

    def _emit(self, effect: Effect, at_ms: int) -> None:
        if not isinstance(effect, Publish):
            return
        if effect.held is not None:  # the guardrails hold it: not published
            if effect.action is not None and isinstance(effect.key, str | bytes):
                self._orders.setdefault(_text(effect.key), Published()).held.append(effect.action)
            return
        if effect.topic is None or self.incidents.read(effect.topic, effect.value) is not None:
            return
        key = _text(effect.key) if effect.key is not None else None
        headers = {k: _text(v) for k, v in effect.headers}
        rec = self.reader.read(effect.topic, key, effect.value, headers)
        if rec is not None:
            self._orders.setdefault(rec.key, Published()).add(rec)
