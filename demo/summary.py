"""The verdict: for each order, what `observer run` published on Kafka against what the engine
publishes over the same shop records (`expected.py`), and the per-fault summary. Pure.

An order is **as expected** when the observer published the same alerts, commands and outcome
as the engine, and the engine's answer fits the fault: a fault that needs an alert (slow
payment, lost event, failed payment) raised at least one, while a clean order, a duplicate or
an out-of-order order raised none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from demo.faults import Fault
from demo.records import IncidentRecord, Published, lacking
from observer.timefmt import format_time

__all__ = ["FaultResult", "Summary", "Verdict", "judge", "prediction_in_words", "what_differs"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the observer did on one order."""

    detected: bool  # needs an alert: the engine raises one and every alert it raises was
    # published; needs none: no alert was published
    outcome_ok: bool  # the outcome the engine reaches
    false_alarms: int  # alerts the engine does not raise (needs none: any alert)
    as_expected: bool


def judge(fault: Fault | None, observed: Published, expected: Published) -> Verdict:
    """The verdict on an order carrying `fault` (None: a clean order)."""
    needs_alert = fault is not None and fault.needs_alert
    same_held = sorted(observed.held) == sorted(expected.held)
    if needs_alert:
        # an alert, or actions the guardrails hold (an incident took over its alerts)
        noticed = bool(expected.alerts or expected.held)
        detected = noticed and not lacking(expected.alerts, observed.alerts) and same_held
        false_alarms = len(lacking(observed.alerts, expected.alerts))
    elif fault is Fault.OUTAGE:
        # whatever the engine does about it: alerts until an incident opens, held actions after
        detected = not lacking(expected.alerts, observed.alerts) and same_held
        false_alarms = len(lacking(observed.alerts, expected.alerts))
    else:
        detected = not observed.alerts
        false_alarms = len(observed.alerts)
    # an order whose actions are held may wait for an operator: no outcome on either side
    waits = fault is Fault.OUTAGE and bool(expected.held)
    outcome_ok = (observed.outcome is not None or waits) and observed.outcome == expected.outcome
    as_expected = detected and outcome_ok and false_alarms == 0 and observed.same_as(expected)
    return Verdict(detected, outcome_ok, false_alarms, as_expected)


def what_differs(fault: Fault | None, observed: Published, expected: Published) -> str:
    """Why an order is not as expected, in words ("" when it is)."""

    def alerts(items: list[tuple[str, str | None]]) -> str:
        return ", ".join(f"{k} at {s}" if s else k for k, s in items)

    needs_alert = fault is not None and fault.needs_alert
    out = []
    if needs_alert and not expected.alerts and not expected.held:
        out.append("the flow raises no alert for this fault")
    if not needs_alert and fault is not Fault.OUTAGE and expected.alerts:
        out.append(f"the flow raises {alerts(expected.alerts)} for it")
    if unpublished := lacking(expected.alerts, observed.alerts):
        out.append(f"not published: {alerts(unpublished)}")
    if extra := lacking(observed.alerts, expected.alerts):
        out.append(f"not expected: {alerts(extra)}")
    commands = lacking(expected.commands, observed.commands)
    commands += lacking(observed.commands, expected.commands)
    if commands:
        out.append(f"commands differ ({', '.join(commands)})")
    held = lacking(expected.held, observed.held) + lacking(observed.held, expected.held)
    if held:
        out.append(f"held actions differ ({', '.join(held)})")
    waits = fault is Fault.OUTAGE and bool(expected.held) and expected.outcome is None
    if observed.outcome != expected.outcome or (observed.outcome is None and not waits):
        out.append(
            f"outcome {observed.outcome or '(none yet)'}, expected {expected.outcome or '(none)'}"
        )
    return "; ".join(out)


def prediction_in_words(predictions: list[Published]) -> str:
    """What the engine does about the orders of one fault: the commonest answer, and how many
    orders got it when they did not all get the same."""
    if not predictions:
        return ""
    words = Counter(p.describe() for p in predictions)
    common, n = words.most_common(1)[0]
    return common if n == len(predictions) else f"{common} ({n} of {len(predictions)} orders)"


@dataclass(frozen=True, slots=True)
class FaultResult:
    """How the observer did on the orders that carried one fault (None: clean orders)."""

    fault: Fault | None
    injected: int
    detected: int  # Verdict.detected
    outcome_ok: int  # ended with the engine's outcome
    false_alarms: int  # alerts the engine does not explain
    pending: int  # not settled yet (no outcome, or something the engine published still to come)
    as_expected: int
    outcomes: Mapping[str, int]
    meaning: str  # what the engine does about these orders, in words
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
    expected_until: int | None = None  # the engine's clock was moved to this at the end (ms)
    # guardrails (--outage): the incident records of the observer and of the engine, and how
    # many actions each holds (the observer's: read from its Redis at the end)
    incidents: tuple[IncidentRecord, ...] = ()
    incidents_expected: tuple[IncidentRecord, ...] = ()
    held: int = 0
    held_expected: int = 0
    held_by: Mapping[str, int] | None = None  # the observer's held actions by incident id

    @property
    def faults_injected(self) -> int:
        """Orders that carried an injected fault (an order the outage hit counts there)."""
        return sum(
            r.injected for r in self.results if r.fault is not None and r.fault is not Fault.OUTAGE
        )

    @property
    def outage_hit(self) -> int:
        """Orders that reached the service of `--outage` while it was down."""
        return sum(r.injected for r in self.results if r.fault is Fault.OUTAGE)

    @property
    def all_detected(self) -> bool:
        """Every injected fault that needs an alert got the engine's alerts, and nothing that
        needs none raised one."""
        return all(r.detected == r.injected for r in self.results)

    @property
    def incidents_ok(self) -> bool:
        """The observer opened and resolved the incidents the engine does, with its counts."""
        return sorted(self.incidents, key=str) == sorted(self.incidents_expected, key=str)

    @property
    def ok(self) -> bool:
        """Every order behaved as expected (held actions included), and the incidents too."""
        return self.orders > 0 and all(r.ok for r in self.results) and self.incidents_ok

    def as_json(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "unjudged": self.unjudged,
            "faults_injected": self.faults_injected,
            "outage_hit": self.outage_hit,
            "all_detected": self.all_detected,
            "ok": self.ok,
            "expected_until": (
                format_time(self.expected_until) if self.expected_until is not None else None
            ),
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
            "incidents": [_incident_json(i) for i in self.incidents],
            "incidents_expected": [_incident_json(i) for i in self.incidents_expected],
            "incidents_ok": self.incidents_ok,
            "held": self.held,
            "held_expected": self.held_expected,
            "held_by": dict(self.held_by or {}),
            "deviations": dict(self.deviations),
            "outcomes": dict(self.outcomes),
            "commands": dict(self.commands),
        }


def _incident_json(rec: IncidentRecord) -> dict[str, Any]:
    return {
        "kind": rec.kind,
        "deviation": rec.deviation,
        "step": rec.step,
        "count": rec.count,
        "id": rec.id,
    }
