"""The guardrails' decisions (contract §7), pure: one implementation for `observer replay`, the
in-memory store and `observer run` (whose single decider per flow keeps this state in Redis).

A deviation of a guarded flow does not publish at once: it waits (`Waiting`, with its alert
and action records) until the watermark has passed its time (`DeviationRef.at`: a timer's due
time, or the event time of the event that decided it). Then the waiting deviations are decided
in (time, deviation id) order, so the same deviations always give the same decisions, however
many processes found them and in whatever order:

- **Incident.** Per (kind, step), the times of the last deviations are kept; when the
  `threshold`-th falls within `within` of the earliest of them, an incident opens (its record
  first) and from that deviation on (it included) their alerts are suppressed and their actions
  held, until `within` passes (by the same times) with no new such deviation: the incident
  closes with an `incident_resolved` record at last deviation + `within`. A deviation exactly
  at that time still belongs to the incident.
- **Pause.** Actions of a paused flow are held (`paused`).
- **Rate.** An action record is held (`rate`) when `max_actions` action records were published
  in the window (its time - `per`, its time].

`GuardState.decide` is given every waiting deviation with a time at or before `upto` (the
watermark: nothing earlier can come any more) and returns, in order, a `Verdict` per record and
an `IncidentNote` per incident opened or closed. Deciding up to W and then up to W' gives what
deciding up to W' at once gives; a deviation found after the watermark passed its time (an
event stamped after its event time, an early event applied at its instance's start) is decided
with the next call, in the same order among those.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import orjson

from observer.engine.effects import DeviationRef, Publish
from observer.engine.ids import observer_id
from observer.flows.compiled import CompiledGuardrails
from observer.timefmt import format_duration, format_time

__all__ = [
    "GuardState",
    "IncidentNote",
    "OpenIncident",
    "Verdict",
    "Waiting",
    "incident_id",
]

R = TypeVar("R")
Outcome = Literal["publish", "hold", "suppress"]


@dataclass(slots=True)
class Waiting(Generic[R]):
    """A deviation of `flow` for `key` waiting for the guardrails, with its records in order:
    (record, action name; None for the alert record)."""

    flow: str
    key: str
    ref: DeviationRef
    records: list[tuple[R, str | None]] = field(default_factory=list)

    @property
    def order(self) -> tuple[int, str]:
        return self.ref.at, self.ref.id


@dataclass(slots=True)
class Verdict(Generic[R]):
    """One record decided: published, held (`reason`: incident | paused | rate; `incident`:
    its id when an incident holds it) or suppressed (an alert during an incident)."""

    waiting: Waiting[R]
    record: R
    action: str | None
    outcome: Outcome
    reason: str | None = None
    incident: str | None = None


@dataclass(slots=True)
class IncidentNote:
    """An incident opened (`kind` incident) or closed (incident_resolved) at `at` (ms), with
    its alert record (Kafka key: the flow name)."""

    incident: str
    kind: Literal["incident", "incident_resolved"]
    at: int
    record: Publish


@dataclass(slots=True)
class OpenIncident:
    id: str
    opened: int
    last: int
    count: int
    version: int


def incident_id(kind: str, step: str | None, opened: int) -> str:
    """`missing.paid.20260101T100500Z`: kind, step (`-` for none) and opening time (compact
    ISO-8601 UTC, with milliseconds when not zero). One (kind, step) opens one incident at a
    time, and the next only after `within` passed: the id is unique within the flow."""
    compact = format_time(opened).replace("-", "").replace(":", "")
    return f"{kind}.{step or '-'}.{compact}"


class GuardState:
    """One flow's guardrail state: decided up to `upto` (ms), the recent deviation times per
    (kind, step), the open incidents, the times of the action records published lately."""

    __slots__ = ("open", "opened_total", "recent", "sent", "upto")

    def __init__(self) -> None:
        self.upto: int | None = None
        self.recent: dict[tuple[str, str | None], list[int]] = {}
        self.open: dict[tuple[str, str | None], OpenIncident] = {}
        self.sent: list[int] = []
        self.opened_total = 0

    # -- deciding -----------------------------------------------------------------------------

    def decide(
        self,
        flow: str,
        rails: CompiledGuardrails,
        waiting: Sequence[Waiting[R]],
        upto: int,
        *,
        alerts_topic: str,
        paused: bool = False,
        complete: bool = True,
    ) -> list[Verdict[R] | IncidentNote]:
        """Decide `waiting` (every deviation with a time at or before `upto`; sorted here) and
        close the incidents whose `within` passed by `upto`. `complete` False: more deviations
        at the last one's time may follow (the caller read a limited number), so incidents are
        only closed strictly before it."""
        out: list[Verdict[R] | IncidentNote] = []
        last = None
        for w in sorted(waiting, key=lambda w: w.order):
            at = w.ref.at
            self._close(flow, rails, at, False, out, alerts_topic)
            incident = self._count(flow, rails, w.ref, out, alerts_topic)
            for record, action in w.records:
                out.append(self._verdict(rails, w, record, action, incident, paused))
            last = at
        if complete:
            self._close(flow, rails, upto, True, out, alerts_topic)
            self.upto = upto if self.upto is None else max(self.upto, upto)
        elif last is not None:
            self.upto = last if self.upto is None else max(self.upto, last)
        if rails.per_ms is not None and self.upto is not None:
            del self.sent[: bisect_right(self.sent, self.upto - rails.per_ms)]
        return out

    def _verdict(
        self,
        rails: CompiledGuardrails,
        w: Waiting[R],
        record: R,
        action: str | None,
        incident: str | None,
        paused: bool,
    ) -> Verdict[R]:
        if action is None:  # the alert record
            if incident is not None:
                return Verdict(w, record, None, "suppress", None, incident)
            return Verdict(w, record, None, "publish")
        if incident is not None:
            return Verdict(w, record, action, "hold", "incident", incident)
        if paused:
            return Verdict(w, record, action, "hold", "paused")
        at = w.ref.at
        if rails.max_actions is not None and rails.per_ms is not None:
            sent = self.sent
            recent = bisect_right(sent, at) - bisect_right(sent, at - rails.per_ms)
            if recent >= rails.max_actions:
                return Verdict(w, record, action, "hold", "rate")
            insort(sent, at)
        return Verdict(w, record, action, "publish")

    def _count(
        self,
        flow: str,
        rails: CompiledGuardrails,
        ref: DeviationRef,
        out: list[Verdict[R] | IncidentNote],
        alerts_topic: str,
    ) -> str | None:
        """Count a deviation; the id of the incident it belongs to (opened now, perhaps)."""
        n = rails.threshold
        if n is None:
            return None
        key = (ref.kind, ref.step)
        at = ref.at
        inc = self.open.get(key)
        if inc is not None:
            inc.count += 1
            inc.last = max(inc.last, at)
            return inc.id
        times = self.recent.setdefault(key, [])
        i = bisect_right(times, at)
        times.insert(i, at)
        for j in range(max(0, i - n + 1), min(i, len(times) - n) + 1):
            if times[j + n - 1] - times[j] <= rails.within_ms:
                del self.recent[key]
                inc = OpenIncident(incident_id(ref.kind, ref.step, at), at, at, n, ref.version)
                self.open[key] = inc
                self.opened_total += 1
                record = incident_record(flow, rails, ref.kind, ref.step, inc, "incident", at)
                out.append(
                    IncidentNote(inc.id, "incident", at, _publish(record, inc.id, alerts_topic))
                )
                return inc.id
        # only the newest n - 1 within `within` of the newest can still open one
        cut = max(len(times) - (n - 1), bisect_left(times, times[-1] - rails.within_ms))
        del times[:cut]
        return None

    def _close(
        self,
        flow: str,
        rails: CompiledGuardrails,
        t: int,
        inclusive: bool,
        out: list[Verdict[R] | IncidentNote],
        alerts_topic: str,
    ) -> None:
        """Close the incidents whose last deviation + within is before `t` (or at it)."""
        within = rails.within_ms
        ending = sorted(
            (inc.last + within, inc.id, key)
            for key, inc in self.open.items()
            if inc.last + within < t or (inclusive and inc.last + within == t)
        )
        for end, _id, key in ending:
            inc = self.open.pop(key)
            kind, step = key
            record = incident_record(flow, rails, kind, step, inc, "incident_resolved", end)
            note = _publish(record, inc.id, alerts_topic)
            out.append(IncidentNote(inc.id, "incident_resolved", end, note))

    def next_close(self, rails: CompiledGuardrails) -> int | None:
        """When the next open incident closes if no deviation joins it (ms; None: none open)."""
        return min((inc.last + rails.within_ms for inc in self.open.values()), default=None)

    # -- storing ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "upto": self.upto,
                "recent": [[k, s, t] for (k, s), t in self.recent.items() if t],
                "open": [
                    [k, s, i.id, i.opened, i.last, i.count, i.version]
                    for (k, s), i in self.open.items()
                ],
                "sent": self.sent,
                "opened_total": self.opened_total,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes | None) -> GuardState:
        state = cls()
        if not data:
            return state
        d: dict[str, Any] = orjson.loads(data)
        state.upto = d.get("upto")
        state.recent = {(k, s): list(t) for k, s, t in d.get("recent", [])}
        state.open = {
            (k, s): OpenIncident(i, o, last, n, v) for k, s, i, o, last, n, v in d.get("open", [])
        }
        state.sent = list(d.get("sent", []))
        state.opened_total = int(d.get("opened_total", 0))
        return state


def incident_record(
    flow: str,
    rails: CompiledGuardrails,
    kind: str,
    step: str | None,
    inc: OpenIncident,
    what: Literal["incident", "incident_resolved"],
    at: int,
) -> dict[str, Any]:
    """The alert record of an incident opened or closed (fields of contract §7)."""
    where = f" at step '{step}'" if step else ""
    listing = f"observer actions list {flow} --incident {inc.id}"
    if what == "incident":
        summary = (
            f"{flow}: incident {inc.id} opened: {inc.count} '{kind}' deviations{where} within "
            f"{format_duration(rails.within_ms)}; their alerts are suppressed and their actions "
            f"held until it closes ({listing})"
        )
    else:
        summary = (
            f"{flow}: incident {inc.id} closed after {format_duration(at - inc.opened)}: "
            f"{inc.count} '{kind}' deviations{where}; held actions wait for an operator ({listing})"
        )
    return {
        "flow": flow,
        "version": inc.version,
        "key": None,
        "kind": what,
        "step": step,
        "deviation": kind,
        "severity": "critical",
        "count": inc.count,
        "detected_at": format_time(at),
        "summary": summary,
    }


def _publish(record: dict[str, Any], incident: str, alerts_topic: str) -> Publish:
    """The incident record as published: on the alerts topic, keyed by the flow name."""
    flow, what = record["flow"], record["kind"]
    oid = observer_id(flow, record["version"], "", f"incident:{incident}", record["step"], what)
    return Publish("alert", alerts_topic, flow, record, (("observer-id", oid),), oid)
