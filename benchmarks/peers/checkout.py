"""The checkout check as a user of a stream processor would hand-write it: pure logic shared
by `faust_peer.py` and `quix_peer.py`, which wire it into each framework's idioms.

What it does (a subset of the observer's semantics, the part that costs per event):
- read type, order id and event time of a record with the source's selectors;
- keep per-order state: which main-path steps were seen and when (a small JSON dict);
- a step with a window is armed once all its anchors are seen: deadline = latest anchor + window;
  a step seen after its deadline raises `late`; an armed step still not seen once the stream's
  event time is one more window past its deadline (the grace, `GRACE_WINDOWS`) raises `missing`
  (optional steps never do);
- an error event (PaymentFailed, ...) raises `error` and closes the order;
- the order is closed once every required step is seen.
Time: every topic is keyed by the order id with the same partition count, so an order's
events are all in partition p of each topic; partition p's event time is the minimum over the
source topics of the latest event time read from (topic, p), and deadlines of orders of
partition p are judged when it passes them plus the grace (`Deadlines`). An idle stream counts
as caught up with the wall clock (faust's timer; Quix has no timers, so its last deadlines wait
for traffic: the workload's last orders bring enough of it).

Why a grace. The peers judge deadlines record by record. A late step (the workload's `late`
orders: up to half a window after the deadline) is usually preceded in its partition by records
of other orders stamped between its deadline and its own time; judged at the first of them, the
step is `missing` and then `late`. That is one of the answers the contract allows (sources are
separate topics), but not the one due: replayed on its own, a late order raises `late` only,
which is what the observer does on this workload (it applies a whole poll batch before its
deadlines fire). Waiting one more window of event time before calling a step missing (what
Quix's and Kafka Streams' windows call a grace period) gives the due answer whatever the read
order, so that both programs compute the same alerts.
Not modelled: alternate paths, warnings, SLA, buffering/orphans, duplicates by event id,
retention/expiry, actions and webhooks. The flow comes from `peer-spec.json`, written by
`benchmarks/workload.py` next to the workload it describes.

State is `{"seen": {step: time ms}, "closed": bool}`; alerts are JSON objects shaped like the
observer's (`flow`, `key`, `kind`, `step`, `deadline`, `observed_at`, `detected_at`).
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["GRACE_WINDOWS", "Alert", "CheckoutLogic", "Deadlines", "State"]

GRACE_WINDOWS = 1.0  # a step is judged missing this many windows after its deadline

State = dict[str, Any]
Alert = dict[str, Any]
Getter = Callable[[Any, Mapping[str, bytes], Any], Any]


def _getter(selector: str) -> Getter:
    """A selector (`value.a.b`, `header.X`, `key`) as a function (value, headers, key)."""
    if selector == "key":
        return lambda v, h, k: k.decode() if isinstance(k, bytes) else k
    if selector.startswith("header."):
        name = selector[len("header.") :]

        def header(v: Any, h: Mapping[str, bytes], k: Any) -> Any:
            raw = h.get(name)
            return raw.decode() if isinstance(raw, bytes) else raw

        return header
    parts = selector.split(".")[1:]

    def field(v: Any, h: Mapping[str, bytes], k: Any) -> Any:
        for p in parts:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    return field


def _ms(t: Any) -> int | None:
    if isinstance(t, int | float):
        return int(t)
    if isinstance(t, str):
        try:
            return int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    anchors: tuple[str, ...]
    within_ms: int | None
    optional: bool


class CheckoutLogic:
    """The flow of `peer-spec.json`, and the per-order transitions (no I/O)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.flow: str = spec["flow"]
        self.topics: dict[str, tuple[str, Getter, Getter, Getter]] = {}
        for name, src in spec["sources"].items():
            self.topics[src["topic"]] = (
                name,
                _getter(src["type"]),
                _getter(src["key"]),
                _getter(src["time"]),
            )
        self.steps = {
            s["name"]: _Step(s["name"], tuple(s["anchors"]), s["within_ms"], s["optional"])
            for s in spec["steps"]
        }
        self.start = spec["steps"][0]["name"]
        self.step_of: dict[tuple[str, str], str] = {}
        for s in spec["steps"]:
            for src, typ in s["on"]:
                self.step_of[(src, typ)] = s["name"]
        self.errors = {(src, typ) for on in spec["errors"] for src, typ in on}
        self.required = [s.name for s in self.steps.values() if not s.optional]
        self.dependents: dict[str, list[_Step]] = {name: [] for name in self.steps}
        for s in self.steps.values():
            for a in s.anchors:
                self.dependents[a].append(s)

    @classmethod
    def load(cls, path: str | Path) -> CheckoutLogic:
        return cls(json.loads(Path(path).read_text()))

    # -- reading ------------------------------------------------------------------------------

    def read(
        self, topic: str, value: Any, headers: Mapping[str, bytes], key: Any
    ) -> tuple[str, str, int, str | None, bool] | None:
        """(order id, step or error label, event time, step name or None, is_error), or None
        for a record this flow does not care about."""
        src = self.topics.get(topic)
        if src is None:
            return None
        name, get_type, get_key, get_time = src
        etype = get_type(value, headers, key)
        order = get_key(value, headers, key)
        t = _ms(get_time(value, headers, key))
        if etype is None or order is None or t is None:
            return None
        ref = (name, etype)
        step = self.step_of.get(ref)
        is_error = ref in self.errors
        if step is None and not is_error:
            return None
        return str(order), etype, t, step, is_error

    # -- transitions --------------------------------------------------------------------------

    def _deadline(self, seen: Mapping[str, int], step: _Step) -> int | None:
        if step.within_ms is None or not step.anchors:
            return None
        if any(a not in seen for a in step.anchors):
            return None
        return max(seen[a] for a in step.anchors) + step.within_ms

    def alert(
        self, key: str, kind: str, step: str | None, deadline: int | None, observed: int | None
    ) -> Alert:
        return {
            "flow": self.flow,
            "key": key,
            "kind": kind,
            "step": step,
            "deadline": deadline,
            "observed_at": observed,
            "detected_at": time.time_ns() // 1_000_000,
        }

    def judge_at(self, step: str, deadline: int) -> int:
        """When (stream event time, ms) a step still awaited at `deadline` is called missing."""
        return deadline + int(GRACE_WINDOWS * (self.steps[step].within_ms or 0))

    def on_event(
        self, state: State | None, key: str, step: str | None, is_error: bool, t: int
    ) -> tuple[State, list[Alert], list[tuple[int, str]]]:
        """Apply one event: (new state, alerts, deadlines to watch as (deadline ms, step))."""
        if state is None:
            state = {"seen": {}, "closed": False}
        seen: dict[str, int] = state["seen"]
        alerts: list[Alert] = []
        schedule: list[tuple[int, str]] = []
        if state["closed"]:
            return state, alerts, schedule
        if is_error:
            alerts.append(self.alert(key, "error", None, None, t))
            state["closed"] = True
            return state, alerts, schedule
        if step is None or step in seen:
            return state, alerts, schedule  # a repeat
        seen[step] = t
        s = self.steps[step]
        deadline = self._deadline(seen, s)
        if deadline is not None and t > deadline:
            alerts.append(self.alert(key, "late", step, deadline, t))
        for d in self.dependents[step]:
            if d.name not in seen and not d.optional:
                due = self._deadline(seen, d)
                if due is not None:
                    schedule.append((due, d.name))
            elif d.name in seen:  # seen before its anchor: judge it now
                due = self._deadline(seen, d)
                if due is not None and seen[d.name] > due:
                    alerts.append(self.alert(key, "late", d.name, due, seen[d.name]))
        if all(r in seen for r in self.required):
            state["closed"] = True
        return state, alerts, schedule

    def check(self, state: State | None, key: str, step: str, due: int) -> Alert | None:
        """A deadline passed: the `missing` alert, if the step is still awaited."""
        if state is None or state["closed"] or step in state["seen"]:
            return None
        return self.alert(key, "missing", step, due, None)


class Deadlines:
    """Pending (deadline, order, step) per partition number, each judged once the partition's
    event time passes its deadline plus the grace; and each partition's event time."""

    def __init__(self, logic: CheckoutLogic) -> None:
        self.logic = logic
        self.topics = list(logic.topics)
        self._last: dict[tuple[str, int], int] = {}
        self._heaps: dict[int, list[tuple[int, int, str, str]]] = {}

    def add(self, partition: int, deadline: int, key: str, step: str) -> None:
        at = self.logic.judge_at(step, deadline)
        heapq.heappush(self._heaps.setdefault(partition, []), (at, deadline, key, step))

    def observe(self, topic: str, partition: int, t: int) -> int | None:
        """Record an event time read from (topic, partition); the partition's event time
        (None until every source topic has been read in that partition)."""
        tp = (topic, partition)
        if t > self._last.get(tp, -1):
            self._last[tp] = t
        times = [self._last.get((top, partition)) for top in self.topics]
        return None if None in times else min(t for t in times if t is not None)

    def due(self, partition: int, now: int | None) -> Iterator[tuple[int, str, str]]:
        """Pop the (deadline, order, step) of a partition to judge at event time `now`."""
        heap = self._heaps.get(partition)
        while heap and now is not None and heap[0][0] < now:
            _at, deadline, key, step = heapq.heappop(heap)
            yield deadline, key, step

    def partitions(self) -> list[int]:
        return list(self._heaps)
