"""Back-testing flows on real history (issue 15): what would these flows have done over a period?

The records of the period go through the replay engine (`Replayer`: the same code as `observer
run`, on a virtual clock) and nothing is published: what would have been is tallied instead —
instances, outcomes, deviations by kind and step, each step's latency from its anchor — and
the alerts it would have raised can be compared, key by key, with those the live observer
published (`compare`). Pure: the records come from the caller (`observer backtest` reads Kafka).

Instances open when the period starts are the known edge: their start event lies before it.
Reading starts a warm-up before the period (`warmup_ms`: long enough for an instance to have
been judged entirely), so those instances are rebuilt from their own events instead of leaving
their later events orphaned; they run, but are not counted: the report covers instances that
started in the period (by the virtual clock: the record timestamps), and the alerts of keys
whose instance started before it are left out of the comparison with the live alerts.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from observer.engine.core import Engine
from observer.engine.effects import Effect, Publish, Signal
from observer.engine.state import KeySlot
from observer.flows.compiled import CompiledFlow
from observer.flows.registry import FlowRegistry
from observer.ingest import SourceRecord, ValueDecoder
from observer.replay import Replayer
from observer.timefmt import format_duration, format_time, parse_time
from observer.topics import Topics

__all__ = [
    "AlertKey",
    "Backtest",
    "Comparison",
    "FlowTally",
    "Period",
    "compare",
    "decision_time",
    "describe_ms",
    "percentile",
    "warmup_ms",
]

AlertKey = tuple[str, str, str, str | None]  # flow, key, kind, step
# the deviations decided by a time passing: their moment is the deadline, the others' the event
_TIMED = frozenset({"missing", "warning", "sla_warning", "sla_breach"})


@dataclass(frozen=True, slots=True)
class Period:
    """[since, until) in epoch ms; reading starts at `start` (since minus the warm-up)."""

    since: int
    until: int
    start: int

    def to_json(self) -> dict[str, Any]:
        return {
            "since": format_time(self.since),
            "until": format_time(self.until),
            "warmup_from": format_time(self.start),
        }


def warmup_ms(flows: Iterable[CompiledFlow]) -> int:
    """How long before a period an instance may have started and still be judged in it: the
    windows of its flow added up (or its SLA, if longer), plus its buffer, at most its expire."""
    longest = 0
    for flow in flows:
        windows = sum(s.within_ms or 0 for s in flow.steps)
        sla = flow.sla.within_ms if flow.sla is not None else 0
        longest = max(longest, min(max(windows, sla) + flow.buffer_ms, flow.expire_ms))
    return longest


def decision_time(alert: Mapping[str, Any]) -> int | None:
    """When an alert's deviation happened: its deadline for those a time passing decides
    (missing, warnings, SLA), the event's time for the others (late, error, ...)."""
    when = alert.get("deadline") if alert.get("kind") in _TIMED else alert.get("observed_at")
    when = when or alert.get("detected_at")
    try:
        return parse_time(when) if isinstance(when, str | int) else None
    except ValueError:
        return None


def percentile(sorted_values: array[int] | list[int], p: float) -> int | None:
    """Nearest-rank percentile of sorted values (None when there are none)."""
    n = len(sorted_values)
    if not n:
        return None
    rank = max(1, -(-round(p * n * 1000) // 100_000))  # ceil(p/100 * n) without float noise
    return int(sorted_values[min(rank, n) - 1])


@dataclass
class FlowTally:
    """What one flow would have done in the period (instances started in it)."""

    flow: str
    versions: Counter[int] = field(default_factory=Counter)
    instances: int = 0
    warmup: int = 0  # instances started before the period (run, not counted)
    outcomes: Counter[str] = field(default_factory=Counter)
    deviations: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    latencies: dict[str, array[int]] = field(default_factory=dict)

    def step_stats(self, flow: CompiledFlow) -> list[dict[str, Any]]:
        """Per step (declaration order): how many latencies, their percentiles, the window."""
        out = []
        for step in flow.steps:
            if step.is_start:
                continue
            values = array("q", sorted(self.latencies.get(step.name, ())))
            out.append(
                {
                    "step": step.name,
                    "count": len(values),
                    **{f"p{p}_ms": percentile(values, p) for p in (50, 90, 99)},
                    "max_ms": values[-1] if values else None,
                    "within_ms": step.within_ms,
                    "warn_ms": step.warn_ms,
                }
            )
        return out

    def to_json(self, flow: CompiledFlow) -> dict[str, Any]:
        ended = sum(self.outcomes.values())
        return {
            "flow": self.flow,
            "versions": sorted(self.versions),
            "instances": self.instances,
            "not_counted": self.warmup,
            "outcomes": {**dict(sorted(self.outcomes.items())), "open": self.instances - ended},
            "deviations": [
                {"kind": kind, "step": step, "count": n}
                for (kind, step), n in sorted(self.deviations.items(), key=lambda kv: -kv[1])
            ],
            "steps": self.step_stats(flow),
        }


class Backtest:
    """Feeds records to the replay engine and tallies what it would have published."""

    def __init__(
        self,
        registry: FlowRegistry,
        period: Period,
        topics: Topics | None = None,
        decoder: ValueDecoder | None = None,  # issue 16: the schema registry's formats
    ):
        self.registry = registry
        self.period = period
        self.replayer = Replayer(
            registry, self._emit, topics or Topics(), observe=self._observe, decoder=decoder
        )
        self.tallies = {name: FlowTally(name) for name in registry.names()}
        self.alerts: Counter[AlertKey] = Counter()
        self.records = 0
        self.published: Counter[str] = Counter()  # by category, in the period
        self._counted: dict[tuple[str, str], bool] = {}  # (flow, key) -> its instance counts

    def feed(self, records: Iterable[SourceRecord]) -> None:
        apply = self.replayer.apply
        for rec in records:
            self.records += 1
            apply(rec)

    def finish(self) -> None:
        """Fire what is due before the end of the period."""
        self.replayer.fire_before(self.period.until)
        self.replayer.clock = max(self.replayer.clock, self.period.until)

    def warm_keys(self) -> set[tuple[str, str]]:
        """(flow, key) of instances that started before the period."""
        return {k for k, counted in self._counted.items() if not counted}

    def _counts(self, flow: str, key: str, now: int) -> bool:
        counted = self._counted.get((flow, key))
        return counted if counted is not None else now >= self.period.since

    def _emit(self, eff: Effect, now: int) -> None:
        if type(eff) is Signal:
            self._signal(eff, now)
            return
        assert isinstance(eff, Publish)
        category = eff.category
        if category in ("alert", "outcome"):  # records that name their flow and key
            value = eff.value if isinstance(eff.value, dict) else {}
            flow, key = str(value.get("flow")), str(value.get("key"))
            if not self._counts(flow, key, now):
                return
            when = decision_time(value)
            since, until = self.period.since, self.period.until
            if category == "alert" and when is not None and since <= when < until:
                self.alerts[(flow, key, str(value.get("kind")), value.get("step"))] += 1
        elif now < self.period.since:
            return
        self.published[category] += 1

    def _signal(self, s: Signal, now: int) -> None:
        tally = self.tallies.get(s.flow)
        if tally is None:
            return
        if s.what == "started":
            counted = now >= self.period.since
            self._counted[(s.flow, s.key)] = counted
            if counted:
                tally.instances += 1
                tally.versions[s.version] += 1
            else:
                tally.warmup += 1
        elif not self._counts(s.flow, s.key, now):
            return
        elif s.what == "ended":
            tally.outcomes[s.detail] += 1
        elif s.what == "deviation":
            tally.deviations[(s.detail, s.step)] += 1

    def _observe(self, slot: KeySlot, before: int) -> None:
        """Latencies of the steps the last event observed (as `observer run` measures them)."""
        inst = slot.instance
        if inst is None or len(inst.observed) <= before:
            return
        if not self._counted.get((slot.flow, slot.key), False):
            return
        flow = self.replayer.engine.flow_of(slot)
        latencies = self.tallies[slot.flow].latencies
        for idx in islice(inst.observed, before, None):
            step = flow.steps[idx]
            if step.is_start:
                continue
            t = inst.observed[idx]
            anchor = Engine.anchor_time(flow, inst, step)
            if anchor is not None and t >= anchor:
                latencies.setdefault(step.name, array("q")).append(t - anchor)

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period.to_json(),
            "records": self.records,
            "published": dict(sorted(self.published.items())),
            "flows": [
                self.tallies[name].to_json(self.registry.newest(name))
                for name in self.registry.names()
            ],
        }


@dataclass
class Comparison:
    """The alerts of the period by (flow, key, kind, step): in both, or only on one side."""

    topic: str
    live_alerts: int
    same: int
    live_only: Counter[AlertKey]
    backtest_only: Counter[AlertKey]

    def to_json(self) -> dict[str, Any]:
        def rows(c: Counter[AlertKey]) -> list[dict[str, Any]]:
            return [
                {"flow": f, "key": k, "kind": kind, "step": step, "count": n}
                for (f, k, kind, step), n in sorted(c.items(), key=lambda kv: str(kv[0]))
            ]

        return {
            "topic": self.topic,
            "live_alerts": self.live_alerts,
            "same": self.same,
            "live_only": rows(self.live_only),
            "backtest_only": rows(self.backtest_only),
        }


def compare(backtest: Backtest, live: Iterable[Mapping[str, Any]], topic: str) -> Comparison:
    """Live alerts of the backtest's flows decided in the period (keys of instances started
    before it left out, as on the backtest's side) against the backtest's."""
    since, until = backtest.period.since, backtest.period.until
    flows = set(backtest.registry.names())
    warm = backtest.warm_keys()
    seen: Counter[AlertKey] = Counter()
    for alert in live:
        flow, key = str(alert.get("flow")), str(alert.get("key"))
        when = decision_time(alert)
        if flow not in flows or (flow, key) in warm or when is None or not since <= when < until:
            continue
        seen[(flow, key, str(alert.get("kind")), alert.get("step"))] += 1
    mine = backtest.alerts
    same = sum((seen & mine).values())
    return Comparison(topic, sum(seen.values()), same, seen - mine, mine - seen)


def describe_ms(ms: int | None) -> str:
    """A latency or window for people: `1m30s`, `-` when there is none."""
    return "-" if ms is None else format_duration(ms)
