"""`observer replay`: the engine on a virtual clock, no Kafka, no Redis.

A discrete-event simulation: the clock is each record's timestamp (never moving backwards);
every timer that falls before the next record fires at exactly its own time, in time order,
before that record is applied; on a tie the record comes first. The watermark is the clock.
Output is what would be published, one JSON object a line, deterministic byte for byte.
Messages between slots (aliases: `Hop`) are delivered at once, in the order they were sent,
after the effects of the engine call that sent them.
"""

from __future__ import annotations

import base64
import heapq
import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from observer import jsonexact
from observer.engine.core import Engine
from observer.engine.effects import Effect, Hop, Publish, Signal
from observer.engine.state import KeySlot
from observer.errors import InputError
from observer.flows.aliases import split_alias_flow
from observer.flows.compiler import compile_flows
from observer.flows.loader import load_flows
from observer.flows.registry import FlowRegistry
from observer.guardrails.book import GuardBook
from observer.ingest import Ingest, SourceRecord, ValueDecoder
from observer.timefmt import parse_time
from observer.topics import Topics

__all__ = [
    "Deploy",
    "ReplayRecord",
    "Replayer",
    "load_all",
    "parse_events",
    "publish_line",
    "run_replay",
]


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One line of the events file; `offset` is its 0-based line number."""

    offset: int
    record: SourceRecord


@dataclass(frozen=True, slots=True)
class Deploy:
    """Flow files to deploy at virtual time `at` (ms)."""

    at: int
    registry: FlowRegistry


def parse_events(path: str | Path) -> list[ReplayRecord]:
    """Read a JSON-lines events file. Raises InputError naming the file and 1-based line."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(file, 0, f"cannot read events file: {exc}") from None
    out = []
    for i, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        try:
            obj = jsonexact.loads(raw)  # integers beyond 64 bits kept exact, as keys need
        except ValueError as exc:
            raise InputError(file, i + 1, f"not a JSON object: {exc}") from None
        if not isinstance(obj, dict):
            raise InputError(file, i + 1, "not a JSON object")
        topic, ts = obj.get("topic"), obj.get("timestamp")
        if not isinstance(topic, str) or not topic:
            raise InputError(file, i + 1, "record has no 'topic' (a non-empty string)")
        if isinstance(ts, bool) or not isinstance(ts, int | float | str):
            raise InputError(file, i + 1, "record has no 'timestamp' (epoch ms or ISO-8601)")
        try:
            timestamp = parse_time(ts)
        except ValueError as exc:
            raise InputError(file, i + 1, f"bad 'timestamp': {exc}") from None
        headers = obj.get("headers") or {}
        if not isinstance(headers, dict):
            raise InputError(file, i + 1, "'headers' must be an object")
        headers = {
            str(k): v if isinstance(v, str) else jsonexact.dumps(v).decode()
            for k, v in headers.items()
        }
        key = obj.get("key")
        if key is not None and not isinstance(key, str):
            key = jsonexact.dumps(key).decode()
        rec = SourceRecord(topic, 0, i, key, obj.get("value"), headers, timestamp)
        out.append(ReplayRecord(i, rec))
    return out


def publish_line(p: Publish, timestamp: int, wire: Mapping[str, bytes] | None = None) -> bytes:
    """The replay output line of a published record. An Avro action's value is base64 of its
    encoding: the Avro body, preceded by the wire format's header when the action names a
    registry subject that `wire` resolves (replay with `--schema-registry`)."""
    value = p.value
    if p.avro_schema is not None and p.category == "action":
        if p.encoded is not None:
            body = p.encoded
        else:
            import fastavro

            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, p.avro_schema, value)
            body = buf.getvalue()
        if p.subject is not None and wire and p.subject in wire:
            body = wire[p.subject] + body
        value = base64.b64encode(body).decode()
    elif isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    headers = {
        k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in p.headers
    }
    line: dict[str, Any] = {"topic": p.topic}
    if p.webhook is not None:
        line["webhook"] = p.webhook
    key = p.key.decode("utf-8", "replace") if isinstance(p.key, bytes) else p.key
    line.update(key=key, value=value, headers=headers, timestamp=timestamp)
    if p.held is not None:  # held by the guardrails (contract §7): not published
        line["held"] = True
    return jsonexact.dumps(line)  # a dead letter's value may hold integers beyond 64 bits


@dataclass
class Replayer:
    """Runs records through the engine on a virtual clock; `emit` receives every effect (a
    record the guardrails hold comes as a `Publish` with `held` set). `hold_actions`: every
    action held, as `OBSERVER_ACTIONS=hold` does."""

    registry: FlowRegistry
    emit: Callable[[Effect, int], None]
    topics: Topics = field(default_factory=Topics)
    clock: int = -(2**62)
    # hostile input (issue 12): what a budget dropped (captured values kept as null)
    warn: Callable[[str], None] = field(default=lambda _note: None)
    # issue 15 (back-testing): told after each event applied, with the slot and how many steps
    # its instance had observed before (step latencies); replay itself sets none
    observe: Callable[[KeySlot, int], None] | None = None
    decoder: ValueDecoder | None = None  # registry formats (issue 16); None: local Avro only
    hold_actions: bool = False  # guardrails: OBSERVER_ACTIONS=hold

    def __post_init__(self) -> None:
        self.engine = Engine(self.registry, self.topics)
        self.ingest = Ingest(self.registry, self.topics, self.decoder)
        self.guards = GuardBook(
            lambda flow: self.registry.newest(flow).guardrails,
            self.topics.alerts,
            hold_all=self.hold_actions,
        )
        self.slots: dict[tuple[str, str], KeySlot] = {}
        self._order: dict[tuple[str, str], int] = {}  # slot -> creation ordinal (tie-break)
        self._scheduled: dict[tuple[str, str], tuple[int, int]] = {}  # slot -> (due, order)
        self._heap: list[tuple[int, int, tuple[str, str]]] = []
        self._ordinal = 0

    # -- scheduling -------------------------------------------------------------------------------

    def _reschedule(self, sk: tuple[str, str]) -> None:
        slot = self.slots.get(sk)
        due = self.engine.next_due(slot) if slot is not None else None
        if slot is not None and slot.empty:
            del self.slots[sk]
            due = None
        if due is None:
            self._scheduled.pop(sk, None)
            return
        entry = (due, self._order[sk])
        if self._scheduled.get(sk) != entry:
            self._scheduled[sk] = entry
            heapq.heappush(self._heap, (*entry, sk))

    def _peek(self) -> tuple[int, tuple[str, str]] | None:
        while self._heap:
            due, order, sk = self._heap[0]
            if self._scheduled.get(sk) == (due, order):
                return due, sk
            heapq.heappop(self._heap)
        return None

    def _fire_next(self) -> None:
        due, _, sk = heapq.heappop(self._heap)
        self._scheduled.pop(sk, None)
        if due > self.clock:
            self._advance(due)
        slot = self.slots[sk]
        # a timer already overdue (its instance started late) is decided now, not in the past
        hops = self._emit(slot, self.engine.fire(slot, due, now=self.clock))
        self._reschedule(sk)
        self._deliver(hops)

    # -- guardrails -------------------------------------------------------------------------------

    def _advance(self, t: int) -> None:
        """Move the clock on to `t`: what waits for the guardrails up to the clock is decided
        first (everything up to it has happened), and incidents close at their own times."""
        while True:
            self._settle()
            due = self.guards.next_due()
            if due is None or due >= t:
                break
            self.clock = due
        self.clock = t

    def _settle(self) -> None:
        for p in self.guards.settle(self.clock):
            self.emit(p, self.clock)

    def settle_guards(self) -> None:
        """At the end of a replay without `--until`: decide everything that waits and let every
        open incident close."""
        self._settle()
        while (due := self.guards.next_due()) is not None:
            self._advance(max(due, self.clock))
            self._settle()

    def fire_before(self, t: int, inclusive: bool = False) -> None:
        """Fire every timer due before `t` (or at `t` too, when inclusive), in time order."""
        while (nxt := self._peek()) is not None and (nxt[0] < t or (inclusive and nxt[0] == t)):
            self._fire_next()

    def advance_to(self, t: int) -> None:
        """Move the virtual clock on to `t` with no record: every timer due at or before it
        fires, and the guardrails decide what waits up to it (as `--until` does at the end)."""
        self.fire_before(t, inclusive=True)
        if t > self.clock:
            self._advance(t)
        self._settle()

    def _primary_pending(self) -> bool:
        return any(
            self.engine.next_due(s, lifecycle=False) is not None for s in self.slots.values()
        )

    def drain(self) -> None:
        """Fire timers until no deadline, warn point, SLA point or buffer expiry is pending."""
        while self._primary_pending() and self._peek() is not None:
            self._fire_next()

    # -- records ----------------------------------------------------------------------------------

    def deploy(self, registry: FlowRegistry) -> None:
        self.registry = registry
        self.engine.registry = registry
        self.ingest = Ingest(registry, self.topics, self.decoder)

    def apply(self, rec: SourceRecord) -> None:
        t = max(self.clock, rec.timestamp)
        self.fire_before(t)
        if t > self.clock:
            self._advance(t)
        decoded = self.ingest.decode(rec)
        for note in decoded.dropped or ():
            self.warn(f"{rec.topic}/{rec.partition}/{rec.offset}: {note}")
        if decoded.dead_letter is not None:
            self.emit(decoded.dead_letter, self.clock)
        for flow, event in decoded.events:
            sk = (flow, event.key)
            slot = self._slot(sk)
            had_instance = slot.instance is not None
            before = len(slot.instance.observed) if slot.instance is not None else 0
            hops = self._emit(slot, self.engine.apply(slot, event, self.clock))
            if self.observe is not None:
                self.observe(slot, before)
            if not had_instance and slot.instance is not None:
                # ties between instances fire in the order the instances started
                self._order[sk] = self._ordinal
                self._ordinal += 1
            self._reschedule(sk)
            self._deliver(hops)

    def _slot(self, sk: tuple[str, str]) -> KeySlot:
        slot = self.slots.get(sk)
        if slot is None:
            slot = self.slots[sk] = KeySlot(*sk)
            self._order[sk] = self._ordinal
            self._ordinal += 1
        return slot

    def _emit(self, slot: KeySlot, effects: list[Effect]) -> list[Hop]:
        """Emit an engine call's effects in order (those of deviations the guardrails wait
        for wait in their book); return its messages to other slots."""
        hops = []
        for eff in self.guards.take(split_alias_flow(slot.flow)[0], slot.key, effects):
            if type(eff) is Hop:
                hops.append(eff)
            else:
                self.emit(eff, self.clock)
        return hops

    def _deliver(self, hops: list[Hop]) -> None:
        """Deliver messages to their slots at once, first sent first (and those they send)."""
        queue = deque(hops)
        while queue:
            hop = queue.popleft()
            sk = hop.target()
            slot = self._slot(sk)
            had_instance = slot.instance is not None
            queue += self._emit(slot, self.engine.deliver(slot, hop, self.clock))
            if not had_instance and slot.instance is not None:
                self._order[sk] = self._ordinal
                self._ordinal += 1
            self._reschedule(sk)

    def run(
        self, records: Iterable[ReplayRecord], deploys: list[Deploy], until: int | None
    ) -> None:
        pending = sorted(deploys, key=lambda d: d.at)
        for rr in records:
            while pending and pending[0].at <= max(self.clock, rr.record.timestamp):
                d = pending.pop(0)
                self.fire_before(d.at)
                if d.at > self.clock:
                    self._advance(d.at)
                self.deploy(d.registry)
            self.apply(rr.record)
        if until is not None:
            for d in pending:
                if d.at <= until:
                    self.fire_before(d.at)
                    self.deploy(d.registry)
            self.advance_to(until)
        else:
            self.drain()
            self.settle_guards()


def load_all(flows: str, deploys: list[tuple[int, str]]) -> tuple[FlowRegistry, list[Deploy]]:
    """Validate every flow file up front (nothing runs if any is invalid)."""
    base = compile_flows(load_flows([flows]))
    out = []
    current = base
    for at, path in sorted(deploys, key=lambda d: d[0]):
        current = compile_flows(load_flows([path]), current)
        out.append(Deploy(at, current))
    return base, out


def run_replay(
    flows: str,
    events: str,
    until: int | None,
    deploys: list[tuple[int, str]],
    topics: Topics | None = None,
    warn: Callable[[str], None] | None = None,
    *,
    loaded: tuple[FlowRegistry, list[Deploy]] | None = None,
    decoder: ValueDecoder | None = None,
    wire: Mapping[str, bytes] | None = None,
    hold_actions: bool = False,
) -> Iterator[bytes]:
    """Run a replay; yields output lines (without newline). Raises FlowError / InputError.
    `warn` hears what a budget dropped (early events, captured values); `loaded`: the flows
    already loaded (`load_all`); `decoder` and `wire`: a schema registry's (`observer replay
    --schema-registry`); `hold_actions`: every action held (`OBSERVER_ACTIONS=hold`)."""
    registry, deploy_list = loaded or load_all(flows, deploys)
    records = parse_events(events)
    lines: list[bytes] = []
    tell = warn or (lambda _note: None)

    def emit(eff: Effect, now: int) -> None:
        if isinstance(eff, Publish):
            lines.append(publish_line(eff, now, wire))
        elif isinstance(eff, Signal) and eff.what == "dropped":
            tell(f"{eff.flow} {eff.key}: {eff.detail}")

    replayer = Replayer(
        registry, emit, topics or Topics(), warn=tell, decoder=decoder, hold_actions=hold_actions
    )
    replayer.run(records, deploy_list, until)
    yield from lines
