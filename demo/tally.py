"""What the demo knows: the orders it placed, the faults it injected, what the observer
published about them, and what the engine says it should have published (`expected.py`).
Pure: records go in, entries and a summary come out; the views render them.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from demo.binding import FlowBinding
from demo.expected import Expected
from demo.faults import Fault
from demo.records import IncidentRecord, Incidents, ObserverRecord, Published, RecordReader
from demo.shop import OrderPlan
from demo.simulator import Happening
from demo.summary import FaultResult, Summary, judge, prediction_in_words, what_differs
from observer.topics import Topics

__all__ = ["Entry", "OrderTrack", "Tally"]

RECENT = 200
QUIET_MS = 3_000  # an order waiting for an operator is settled with no deadline of it this near


@dataclass(slots=True)
class OrderTrack:
    """One order: its plan, what last happened to it, and what the observer published about it."""

    plan: OrderPlan
    placed_ms: int
    last: str = ""  # the last thing that happened, in words
    observed: Published = field(default_factory=Published)
    ended_ms: int | None = None
    hit: bool = False  # it reached the service of `--outage` while that was down

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def group(self) -> Fault | None:
        """The row of the summary it counts in: the outage's when it was hit, else its fault."""
        return Fault.OUTAGE if self.hit else self.plan.fault


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the log: an alert, an outcome, a command, or something the shop did.

    `what` is the alert kind, the outcome, the command type or the shop's action; `detail`
    the alert's summary, the outcome's deviations, the command's topic; `explain` says in plain
    words what the observer just did and why.
    """

    at_ms: int
    category: Literal["alert", "outcome", "command", "fault", "shop", "incident"]
    key: str
    what: str
    step: str | None = None
    severity: str | None = None
    detail: str = ""
    explain: str = ""
    fault: Fault | None = None


class Tally:
    """Folds the simulation's happenings and the observer's records into per-order tracks, and
    judges each against what the engine published over the same shop records.

    Records for keys this run did not place (earlier runs, other producers) are ignored.
    """

    def __init__(self, binding: FlowBinding, reader: RecordReader, expected: Expected) -> None:
        self.binding = binding
        self.reader = reader
        self.expected = expected
        self.orders: dict[str, OrderTrack] = {}
        self.entries: deque[Entry] = deque(maxlen=RECENT)
        self.deviations: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.faults: Counter[Fault] = Counter()
        self.ignored = 0
        self.incidents = Incidents(reader.topics)  # the observer's incident records
        self.held = 0  # actions the observer holds (from its Redis, `observe_held`)
        self.held_by: dict[str, int] = {}  # ... by incident id (or reason: rate, paused)

    @property
    def topics(self) -> Topics:
        return self.reader.topics

    # -- the shop's side ------------------------------------------------------------------------

    def on_happening(self, h: Happening) -> Entry | None:
        """Track what the simulation did; returns an entry for injected faults and answers."""
        if h.kind == "placed" and h.plan is not None:
            self.orders[h.plan.key] = OrderTrack(h.plan, h.at_ms, last="placed")
            if h.plan.fault is not None:
                self.faults[h.plan.fault] += 1
                return self._add(
                    Entry(
                        h.at_ms,
                        "fault",
                        h.plan.key,
                        h.plan.fault.label,
                        detail=h.plan.detail,
                        fault=h.plan.fault,
                    )
                )
            return None
        track = self.orders.get(h.order_id)
        if track is None:
            return None
        event = h.event
        if h.kind == "published" and event is not None:
            track.last = event.type + (" (again, same id)" if h.copy > 1 else "")
        elif h.kind == "lost" and event is not None:
            track.last = f"{event.type} lost"
        elif h.kind == "held" and event is not None:
            track.last = f"{event.type} held back"
        elif h.kind == "stalled" and event is not None:
            return self._stalled(track, event.type, h.at_ms)
        elif h.kind == "answered" and h.command is not None:
            reactions = self.binding.catalogue.reactions
            who = next((r for r in reactions if r.command == h.command), None)
            if who is not None:
                done = f" -> {who.emits}" if who.emits else " (nothing the flow reads)"
                return self._add(
                    Entry(
                        h.at_ms,
                        "shop",
                        h.order_id,
                        h.command,
                        detail=f"{who.service} acts on {h.command}{done}",
                        fault=track.group,
                    )
                )
        return None

    # -- the observer's side --------------------------------------------------------------------

    def on_record(
        self, topic: str, key: str | None, value: Any, headers: Mapping[str, str], at_ms: int
    ) -> Entry | None:
        """A record the observer published: an alert, an outcome, or a command."""
        incident = self.incidents.read(topic, value)
        if incident is not None:
            return self._add(self._incident_entry(incident, value, at_ms))
        rec = self.reader.read(topic, key, value, headers)
        if rec is None:
            return None
        track = self.orders.get(rec.key)
        if track is None:
            self.ignored += 1
            return None
        track.observed.add(rec)
        if rec.category == "alert":
            self.deviations[rec.what] += 1
            return self._add(self._alert_entry(track, rec, at_ms))
        if rec.category == "outcome":
            track.ended_ms = at_ms
            self.outcomes[rec.what] += 1
            return self._add(self._outcome_entry(track, rec, at_ms))
        self.commands[rec.what] += 1
        reaction = next(
            (r for r in self.binding.catalogue.reactions if r.command == rec.what), None
        )
        who = reaction.service if reaction is not None else rec.topic.split(".")[0]
        return self._add(
            Entry(
                at_ms,
                "command",
                track.key,
                rec.what,
                detail=rec.topic,
                explain=f"the observer tells {who} to {_words(rec.what)} for {track.key} (on {rec.topic}); it does not wait for a reply",
                fault=track.group,
            )
        )

    def observe_held(
        self, held: Mapping[str, list[str]], by: Mapping[str, int] | None = None
    ) -> None:
        """What the observer holds now, per order (action names, from its Redis), and how
        many by incident (`by`)."""
        for t in self.orders.values():
            t.observed.held = sorted(held.get(t.key, []))
        self.held = sum(len(v) for v in held.values())
        self.held_by = dict(by or {})

    def _stalled(self, track: OrderTrack, event: str, at_ms: int) -> Entry:
        track.hit = True
        who = next((s for s in self.binding.catalogue.services if s.emits == event), None)
        name = who.name if who is not None else "a service"
        track.last = f"{name} down: no {event}"
        return self._add(
            Entry(
                at_ms,
                "shop",
                track.key,
                "outage",
                detail=f"{name} is down: {track.key} never gets its {event}",
                fault=track.group,
            )
        )

    def _incident_entry(self, rec: IncidentRecord, value: Any, at_ms: int) -> Entry:
        where = f" at '{rec.step}'" if rec.step else ""
        if rec.kind == "incident":
            explain = (
                f"INCIDENT: {rec.count} '{rec.deviation}'{where} at once -> one incident record "
                "instead of an alert per order; their actions are now HELD, not published "
                f"({rec.id})"
            )
        else:
            explain = (
                f"incident resolved: {rec.count} '{rec.deviation}'{where} in all; what it held "
                f"waits for an operator: observer actions list|release|drop --incident {rec.id}"
            )
        return Entry(
            at_ms,
            "incident",
            rec.id,
            rec.kind,
            step=rec.step,
            severity=str(value.get("severity")),
            detail=str(value.get("summary") or ""),
            explain=explain,
        )

    def _alert_entry(self, track: OrderTrack, rec: ObserverRecord, at_ms: int) -> Entry:
        return Entry(
            at_ms,
            "alert",
            track.key,
            rec.what,
            step=rec.step,
            severity=str(rec.value.get("severity")),
            detail=str(rec.value.get("summary") or ""),
            explain=_explain_alert(rec.what, rec.step, track.key, rec.value),
            fault=track.group,
        )

    def _outcome_entry(self, track: OrderTrack, rec: ObserverRecord, at_ms: int) -> Entry:
        deviations = rec.value.get("deviations") or []
        duration = rec.value.get("duration_ms")
        took = f" in {duration / 1000:.1f}s" if isinstance(duration, int | float) else ""
        devs = ", ".join(str(d) for d in deviations) if deviations else "no deviations"
        return Entry(
            at_ms,
            "outcome",
            track.key,
            rec.what,
            detail=f"{devs}{took}",
            explain=f"{track.key} ended {rec.what}{took} ({devs}); the observer keeps its history for queries",
            fault=track.group,
        )

    # -- queries --------------------------------------------------------------------------------

    def in_flight(self) -> list[OrderTrack]:
        """Orders with no outcome yet, oldest first."""
        return [t for t in self.orders.values() if t.observed.outcome is None]

    def steps_seen(self, track: OrderTrack) -> list[str]:
        """The steps of the order the engine has observed (event-time order)."""
        return self.expected.steps_seen(self.binding.flow.name, track.key)

    def settled(self, track: OrderTrack) -> bool:
        """Ended, and everything the engine published about it so far was published."""
        expected = self.expected.of(track.key)
        if track.hit and expected.held and expected.outcome is None:
            # held actions: it waits for an operator; settled once nothing of it is due soon
            return track.observed.same_as(expected) and self.expected.quiet(
                self.binding.flow.name, track.key, QUIET_MS
            )
        return (
            track.observed.outcome is not None
            and expected.outcome is not None
            and track.observed.contains(expected)
            and sorted(track.observed.held) == sorted(expected.held)
        )

    def as_expected(self, track: OrderTrack) -> bool:
        return judge(track.group, track.observed, self.expected.of(track.key)).as_expected

    def describe(self, track: OrderTrack) -> str:
        """One order in a line: fault, what differs, what the observer and the engine published."""
        expected = self.expected.of(track.key)
        why = what_differs(track.group, track.observed, expected)
        fault = track.plan.describe() + ("; hit by the outage" if track.hit else "")
        return (
            f"{track.key} [{fault}]: {why or 'as expected'} "
            f"(published: {track.observed.describe()}; the engine: {expected.describe()})"
        )

    def all_settled(self) -> bool:
        """Every order settled, and the observer's incidents are the engine's, all resolved."""
        return (
            all(self.settled(t) for t in self.orders.values())
            and not self.expected.incidents.open
            and self.incidents.same_as(self.expected.incidents)
        )

    def summary(self, include: Callable[[OrderTrack], bool] | None = None) -> Summary:
        """Verdicts per fault over every order, or only those `include` accepts (an interrupted
        run leaves the youngest orders unjudged)."""
        results = []
        kinds: list[Fault | None] = [*Fault, None]
        judged = [t for t in self.orders.values() if include is None or include(t)]
        for fault in kinds:
            tracks = [t for t in judged if t.group is fault]
            if not tracks:
                continue
            expected = [self.expected.of(t.key) for t in tracks]
            verdicts = [judge(fault, t.observed, e) for t, e in zip(tracks, expected, strict=True)]
            outcomes = Counter(t.observed.outcome or "(none yet)" for t in tracks)
            results.append(
                FaultResult(
                    fault=fault,
                    injected=len(tracks),
                    detected=sum(v.detected for v in verdicts),
                    outcome_ok=sum(v.outcome_ok for v in verdicts),
                    false_alarms=sum(v.false_alarms for v in verdicts),
                    pending=sum(1 for t in tracks if not self.settled(t)),
                    as_expected=sum(v.as_expected for v in verdicts),
                    outcomes=dict(sorted(outcomes.items())),
                    meaning=prediction_in_words(expected),
                    needs_alert=fault is not None and fault.needs_alert,
                    misses=tuple(
                        self.describe(t)
                        for t, v in zip(tracks, verdicts, strict=True)
                        if not v.as_expected
                    ),
                )
            )
        return Summary(
            orders=len(judged),
            unjudged=len(self.orders) - len(judged),
            results=tuple(results),
            deviations=dict(sorted(self.deviations.items())),
            outcomes=dict(sorted(self.outcomes.items())),
            commands=dict(sorted(self.commands.items())),
            expected_until=self.expected.until_ms,
            incidents=tuple(self.incidents.records),
            incidents_expected=tuple(self.expected.incidents.records),
            held=self.held,
            held_expected=self.expected.held(),
            held_by=dict(sorted(self.held_by.items())),
        )

    # -- internals ------------------------------------------------------------------------------

    def _add(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        return entry


def _words(command: str) -> str:
    """`ReleaseStock` -> `release stock`."""
    out = "".join(f" {c.lower()}" if c.isupper() else c for c in command).strip()
    return out or command


def _explain_alert(kind: str, step: str | None, key: str, value: Mapping[str, Any]) -> str:
    late_by = value.get("late_by_ms")
    late = f" {late_by / 1000:.1f}s" if isinstance(late_by, int | float) else ""
    if kind == "missing":
        return f"{key}: no '{step}' event by its deadline -> missing; the flow's if_missing actions run now"
    if kind == "late":
        return f"{key}: '{step}' arrived{late} after its deadline -> late; the flow's if_late actions run"
    if kind == "warning":
        return f"{key}: '{step}' not seen at its warn point -> early warning, the deadline has not passed yet"
    if kind == "error":
        return f"{key}: a known error event was published -> error; compensating commands go out and the order switches path"
    if kind == "out_of_order":
        return f"{key}: '{step}' happened (event time) before a step it depends on"
    if kind in ("sla_warning", "sla_breach"):
        return f"{key}: the whole checkout is running long ({kind})"
    if kind == "orphaned":
        return f"{key}: an event waited for an OrderPlaced that never came"
    return f"{key}: {kind}"
