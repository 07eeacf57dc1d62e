"""What the demo knows: the orders it placed, the faults it injected, and what the observer
published about them. Pure: records go in, entries and a summary come out; the views render them.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from demo.binding import FlowBinding, command_type
from demo.faults import Fault
from demo.shop import OrderPlan
from demo.simulator import Happening
from observer.engine.core import Topics

__all__ = ["Entry", "FaultResult", "OrderTrack", "Summary", "Tally"]

RECENT = 200


@dataclass(slots=True)
class OrderTrack:
    """One order: its plan, how far the shop got, and what the observer said about it."""

    plan: OrderPlan
    placed_ms: int
    steps: list[str] = field(default_factory=list)  # steps whose events reached Kafka, in order
    last: str = ""  # the last thing that happened, in words
    alerts: list[tuple[str, str | None]] = field(default_factory=list)  # (kind, step)
    commands: list[str] = field(default_factory=list)
    outcome: str | None = None
    ended_ms: int | None = None

    @property
    def key(self) -> str:
        return self.plan.key


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the log: an alert, an outcome, a command, or something the shop did.

    `what` is the alert kind, the outcome, the command type or the shop's action; `detail`
    the alert's summary, the outcome's deviations, the command's topic; `explain` says in plain
    words what the observer just did and why.
    """

    at_ms: int
    category: Literal["alert", "outcome", "command", "fault", "shop"]
    key: str
    what: str
    step: str | None = None
    severity: str | None = None
    detail: str = ""
    explain: str = ""
    fault: Fault | None = None


@dataclass(frozen=True, slots=True)
class FaultResult:
    """How the observer did on the orders that carried one fault (None: clean orders)."""

    fault: Fault | None
    injected: int
    detected: int  # required alerts seen (clean orders: no alert at all)
    outcome_ok: int  # ended with an expected outcome
    false_alarms: int  # alerts this fault does not explain
    pending: int  # not settled yet (no outcome, or a required alert still to come)
    as_expected: int  # detected, expected outcome and no false alarm
    outcomes: Mapping[str, int]
    meaning: str
    needs_alert: bool  # whether the fault calls for an alert at all
    misses: tuple[str, ...] = ()  # the orders not as expected, described

    @property
    def ok(self) -> bool:
        return self.as_expected == self.injected


@dataclass(frozen=True, slots=True)
class Summary:
    """The end of a run: what was injected and whether the observer caught it."""

    orders: int
    unjudged: int  # orders still in flight when an interrupted run ended
    results: tuple[FaultResult, ...]
    deviations: Mapping[str, int]
    outcomes: Mapping[str, int]
    commands: Mapping[str, int]

    @property
    def faults_injected(self) -> int:
        return sum(r.injected for r in self.results if r.fault is not None)

    @property
    def all_detected(self) -> bool:
        """Every injected fault that needs an alert got it (and nothing else raised one)."""
        return all(r.detected == r.injected for r in self.results)

    @property
    def ok(self) -> bool:
        """Every order behaved as expected: detected, expected outcome, no false alarm."""
        return self.orders > 0 and all(r.ok for r in self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "unjudged": self.unjudged,
            "faults_injected": self.faults_injected,
            "all_detected": self.all_detected,
            "ok": self.ok,
            "by_fault": {
                (r.fault.value if r.fault else "none"): {
                    "injected": r.injected,
                    "detected": r.detected,
                    "outcome_ok": r.outcome_ok,
                    "false_alarms": r.false_alarms,
                    "pending": r.pending,
                    "as_expected": r.as_expected,
                    "not_as_expected": list(r.misses),
                    "outcomes": dict(r.outcomes),
                    "expected": r.meaning,
                }
                for r in self.results
            },
            "deviations": dict(self.deviations),
            "outcomes": dict(self.outcomes),
            "commands": dict(self.commands),
        }


class Tally:
    """Folds the simulation's happenings and the observer's records into per-order tracks.

    Records for keys this run did not place (earlier runs, other producers) are ignored.
    """

    def __init__(self, binding: FlowBinding, topics: Topics | None = None) -> None:
        self.binding = binding
        self.topics = topics or Topics()
        self.orders: dict[str, OrderTrack] = {}
        self.entries: deque[Entry] = deque(maxlen=RECENT)
        self.deviations: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.faults: Counter[Fault] = Counter()
        self.ignored = 0
        self._command_topics = set(binding.command_topics)

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
            step = self.binding.step_for(event.source, event.type)
            if step is not None and step not in track.steps:
                track.steps.append(step)
            track.last = event.type + (" (again, same id)" if h.copy > 1 else "")
        elif h.kind == "lost" and event is not None:
            track.last = f"{event.type} lost"
        elif h.kind == "held" and event is not None:
            track.last = f"{event.type} held back"
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
                        fault=track.plan.fault,
                    )
                )
        return None

    # -- the observer's side --------------------------------------------------------------------

    def on_record(
        self, topic: str, key: str | None, value: Any, headers: Mapping[str, str], at_ms: int
    ) -> Entry | None:
        """A record the observer published: an alert, an outcome, or a command."""
        if not isinstance(value, dict):
            return None
        if topic == self.topics.alerts:
            return self.on_alert(value, at_ms)
        if topic == self.topics.outcomes:
            return self.on_outcome(value, at_ms)
        if topic in self._command_topics:
            return self.on_command(topic, key, value, headers, at_ms)
        return None

    def on_alert(self, value: Mapping[str, Any], at_ms: int) -> Entry | None:
        track = self._track(value.get("key"))
        if track is None:
            return None
        kind = str(value.get("kind"))
        step = value.get("step")
        step = str(step) if step is not None else None
        track.alerts.append((kind, step))
        self.deviations[kind] += 1
        entry = Entry(
            at_ms,
            "alert",
            track.key,
            kind,
            step=step,
            severity=str(value.get("severity")),
            detail=str(value.get("summary") or ""),
            explain=_explain_alert(kind, step, track.key, value),
            fault=track.plan.fault,
        )
        return self._add(entry)

    def on_outcome(self, value: Mapping[str, Any], at_ms: int) -> Entry | None:
        track = self._track(value.get("key"))
        if track is None:
            return None
        outcome = str(value.get("outcome"))
        track.outcome = outcome
        track.ended_ms = at_ms
        self.outcomes[outcome] += 1
        deviations = value.get("deviations") or []
        duration = value.get("duration_ms")
        took = f" in {duration / 1000:.1f}s" if isinstance(duration, int | float) else ""
        devs = ", ".join(str(d) for d in deviations) if deviations else "no deviations"
        return self._add(
            Entry(
                at_ms,
                "outcome",
                track.key,
                outcome,
                detail=f"{devs}{took}",
                explain=f"{track.key} ended {outcome}{took} ({devs}); the observer keeps its history for queries",
                fault=track.plan.fault,
            )
        )

    def on_command(
        self,
        topic: str,
        key: str | None,
        value: Mapping[str, Any],
        headers: Mapping[str, str],
        at_ms: int,
    ) -> Entry | None:
        track = self._track(
            key if key is not None else value.get("order_id") or value.get("order_ref")
        )
        if track is None:
            return None
        what = command_type(dict(value), headers) or topic
        track.commands.append(what)
        self.commands[what] += 1
        reaction = next((r for r in self.binding.catalogue.reactions if r.command == what), None)
        who = reaction.service if reaction is not None else topic.split(".")[0]
        return self._add(
            Entry(
                at_ms,
                "command",
                track.key,
                what,
                detail=topic,
                explain=f"the observer tells {who} to {_words(what)} for {track.key} (on {topic}); it does not wait for a reply",
                fault=track.plan.fault,
            )
        )

    # -- queries --------------------------------------------------------------------------------

    def in_flight(self) -> list[OrderTrack]:
        """Orders with no outcome yet, oldest first."""
        return [t for t in self.orders.values() if t.outcome is None]

    def settled(self, track: OrderTrack) -> bool:
        """Ended, and every alert its fault calls for has been seen."""
        exp = self.binding.expect(track.plan.fault)
        return track.outcome is not None and exp.detected(track.alerts)

    def as_expected(self, track: OrderTrack) -> bool:
        exp = self.binding.expect(track.plan.fault)
        return (
            exp.detected(track.alerts)
            and exp.outcome_ok(track.outcome)
            and not exp.unexpected(track.alerts)
        )

    def describe(self, track: OrderTrack) -> str:
        """One order in a line: fault, alerts, commands, outcome."""
        alerts = ", ".join(f"{k}@{s}" if s else k for k, s in track.alerts) or "no alerts"
        commands = ", ".join(track.commands) or "no commands"
        return f"{track.key} [{track.plan.describe()}]: {alerts}; {commands}; outcome {track.outcome or '(none yet)'}"

    def all_settled(self) -> bool:
        return all(self.settled(t) for t in self.orders.values())

    def summary(self, judge: Callable[[OrderTrack], bool] | None = None) -> Summary:
        """Verdicts per fault over every order, or only those `judge` accepts (an interrupted
        run leaves the youngest orders unjudged)."""
        results = []
        kinds: list[Fault | None] = [*Fault, None]
        judged = [t for t in self.orders.values() if judge is None or judge(t)]
        for fault in kinds:
            tracks = [t for t in judged if t.plan.fault is fault]
            if not tracks and fault is not None:
                continue
            exp = self.binding.expect(fault)
            outcomes = Counter(t.outcome or "(none yet)" for t in tracks)
            good = [t for t in tracks if self.as_expected(t)]
            misses = tuple(self.describe(t) for t in tracks if not self.as_expected(t))
            results.append(
                FaultResult(
                    fault=fault,
                    injected=len(tracks),
                    detected=sum(1 for t in tracks if exp.detected(t.alerts)),
                    outcome_ok=sum(1 for t in tracks if exp.outcome_ok(t.outcome)),
                    false_alarms=sum(len(exp.unexpected(t.alerts)) for t in tracks),
                    pending=sum(1 for t in tracks if not self.settled(t)),
                    as_expected=len(good),
                    outcomes=dict(sorted(outcomes.items())),
                    meaning=exp.meaning,
                    needs_alert=bool(exp.required),
                    misses=misses,
                )
            )
        return Summary(
            orders=len(judged),
            unjudged=len(self.orders) - len(judged),
            results=tuple(results),
            deviations=dict(sorted(self.deviations.items())),
            outcomes=dict(sorted(self.outcomes.items())),
            commands=dict(sorted(self.commands.items())),
        )

    # -- internals ------------------------------------------------------------------------------

    def _track(self, key: Any) -> OrderTrack | None:
        track = self.orders.get(str(key)) if key is not None else None
        if track is None:
            self.ignored += 1
        return track

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
