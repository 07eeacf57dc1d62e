"""`ConsoleData`: what each page of the web console shows, read through the console's ports
(`ports.py`), the held-actions port of the guardrails and the instance query. Everything comes
from state the whole group shares, so any process answers the same.

- the last hour per flow and step: the per-minute counts (`numbers.py`), 60 hashes a request;
- where instances wait: a count over the flow's stored states (`waiting.py`) made by one process
  at most every `refresh_ms` and kept in Redis for the others (docs/console.md: the cost);
- the SLO: per-day counts over its window, and the last hour's minutes for the burn rate;
- incidents and held actions: the guardrails' state (`runtime/held_ops.py`);
- recent alerts: the tail of the alerts topic (`AlertFeed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from observer.console.layout import layout_flow
from observer.console.numbers import flow_hour, slo_status, step_hour, total
from observer.console.ports import AlertFeed, ConsoleStore
from observer.console.svg import render_svg
from observer.console.timeline import timeline
from observer.console.waiting import count_waiting
from observer.correlation import Count
from observer.flows.compiled import CompiledFlow
from observer.runtime.guard_ports import HeldActions
from observer.runtime.held_ops import Selection, describe_guard, held_actions, view
from observer.runtime.query import InstanceQuery

__all__ = ["ConsoleData", "UnknownFlow"]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
DAY_MS = 86_400_000
HOUR_MINUTES = 60


class UnknownFlow(LookupError):
    """No deployed flow (or version) of that name."""


class ConsoleData:
    """The console's answers (JSON-ready dicts, and the flow drawings as SVG text)."""

    def __init__(
        self,
        query: InstanceQuery,
        store: ConsoleStore,
        now_ms: Callable[[], int],
        *,
        held: HeldActions | None = None,
        alerts: AlertFeed | None = None,
        controls: bool = False,
        refresh_ms: int = 5_000,
        count_limit: int = 100_000,
    ) -> None:
        self.query = query
        self.store = store
        self.now_ms = now_ms
        self.held = held
        self.alerts_feed = alerts
        self.controls = controls  # release / drop / pause endpoints exist (a token is set)
        self.refresh_ms = refresh_ms
        self.count_limit = count_limit
        self._drawings: dict[tuple[str, int], tuple[CompiledFlow, str]] = {}

    # -- flows ----------------------------------------------------------------------------------

    def compiled(self, flow: str, version: int | None = None) -> CompiledFlow:
        registry = self.query.registry
        if flow not in registry.names():
            raise UnknownFlow(f"no deployed flow '{flow}'")
        found = registry.newest(flow) if version is None else registry.get(flow, version)
        if found is None:
            raise UnknownFlow(f"flow '{flow}' has no deployed version {version}")
        return found

    def graph(self, flow: str, version: int | None = None) -> str:
        """The flow version drawn (SVG), rendered once per deployed definition."""
        compiled = self.compiled(flow, version)
        key = (flow, compiled.version)
        cached = self._drawings.get(key)
        if cached is None or cached[0] is not compiled:
            cached = (compiled, render_svg(layout_flow(compiled)))
            self._drawings[key] = cached
        return cached[1]

    def _hour(self) -> dict[Count, int]:
        minute = self.now_ms() // MINUTE_MS
        return total(self.store.tally(minute - HOUR_MINUTES + 1, minute))

    def _slo(self, compiled: CompiledFlow, hour: dict[Count, int]) -> dict[str, Any] | None:
        slo = compiled.slo
        if slo is None:
            return None
        today = self.now_ms() // DAY_MS
        days = max(1, -(-slo.window_ms // DAY_MS))
        window = self.store.slo_days(today - days + 1, today).get(compiled.name, {})
        return slo_status(slo, compiled.name, window, hour)

    def _guard(self, flow: str) -> dict[str, Any]:
        if self.held is None:
            return {"available": False}
        return {"available": True, **describe_guard(self.held, flow)}

    def overview(self) -> dict[str, Any]:
        """Every deployed flow and version: open instances, the last hour's outcomes and
        deviations, open incidents, held actions, the SLO."""
        hour = self._hour()
        opened = self.store.open_counts()
        flows = []
        registry = self.query.registry
        for name in registry.names():
            newest = registry.newest(name)
            waiting = self.waiting(name)["versions"]
            guard = self._guard(name)
            flows.append(
                {
                    "flow": name,
                    "newest": newest.version,
                    "aliases": [a.name for a in newest.aliases],
                    "open": opened.get(name, 0),
                    "versions": [
                        {"version": v, "open": waiting.get(str(v), {}).get("open", 0)}
                        for v in registry.versions(name)
                    ],
                    "hour": flow_hour(name, hour),
                    "guardrails": guard,
                    "held": sum(guard.get("held", {}).values()),
                    "slo": self._slo(newest, hour),
                }
            )
        return {"flows": flows, "controls": self.controls, "at": self.now_ms()}

    def held_groups(self, flow: str) -> list[dict[str, Any]]:
        """The flow's held actions by why they are held (an incident, the rate limit, a
        pause): how many, of which actions, since when; the observer-ids of those held
        without an incident (to release or drop them by id)."""
        if self.held is None:
            return []
        groups: dict[tuple[str | None, str], dict[str, Any]] = {}
        for h in held_actions(self.held, Selection(flow)):
            group = groups.setdefault(
                (h.incident, h.reason),
                {"incident": h.incident, "reason": h.reason, "count": 0, "actions": {}, "ids": []},
            )
            group["count"] += 1
            group["actions"][h.action] = group["actions"].get(h.action, 0) + 1
            group.setdefault("since", view(h)["deviation"]["at"])
            if h.incident is None and len(group["ids"]) < 1_000:
                group["ids"].append(h.observer_id)
        return list(groups.values())

    def flow_live(self, flow: str, version: int | None = None) -> dict[str, Any]:
        """The live numbers of one flow version's drawing, per step."""
        compiled = self.compiled(flow, version)
        hour = self._hour()
        steps = step_hour(compiled, hour)
        waiting = self.waiting(flow)
        mine = waiting["versions"].get(str(compiled.version), {"open": 0, "steps": {}})
        for name, row in steps.items():
            cell = mine["steps"].get(name, {})
            row["waiting"] = cell.get("waiting", 0)
            row["overdue"] = cell.get("overdue", 0)
        return {
            "flow": flow,
            "version": compiled.version,
            "versions": self.query.registry.versions(flow),
            "open": mine["open"],
            "steps": steps,
            "hour": flow_hour(flow, hour),
            "slo": self._slo(compiled, hour),
            "guardrails": self._guard(flow),
            "held_groups": self.held_groups(flow),
            "counted_at": waiting["computed_at"],
            "partial": waiting["partial"],
            "controls": self.controls,
        }

    # -- where instances wait -------------------------------------------------------------------

    def waiting(self, flow: str) -> dict[str, Any]:
        """The group's last count of where the flow's instances wait; counted again here when
        it is older than `refresh_ms` and no other process is counting it."""
        now = self.now_ms()
        raw = self.store.cached_waiting(flow)
        cached = orjson.loads(raw) if raw is not None else None
        if cached is not None and now - int(cached["computed_at_ms"]) < self.refresh_ms:
            return cached  # type: ignore[no-any-return]
        claimed = self.store.claim_count(flow, self.refresh_ms)
        if cached is not None and not claimed:  # another process is counting it
            return cached  # type: ignore[no-any-return]
        slots = list(self.store.slots(flow, self.count_limit + 1))
        partial = len(slots) > self.count_limit
        data = count_waiting(
            self.query.engine, flow, slots[: self.count_limit], now, partial=partial
        )
        self.store.store_waiting(flow, orjson.dumps(data), self.refresh_ms * 12)
        return data

    def step_instances(
        self, flow: str, step: str, version: int | None = None, overdue: bool = False
    ) -> dict[str, Any]:
        """The instances waiting at a step (overdue ones first; at most `waiting.SAMPLE`)."""
        compiled = self.compiled(flow, version)
        compiled.step_named(step)  # KeyError for a step the version does not have
        waiting = self.waiting(flow)
        cell = waiting["versions"].get(str(compiled.version), {}).get("steps", {}).get(step, {})
        listed = cell.get("instances", [])
        if overdue:
            listed = [i for i in listed if i["overdue"]]
        return {
            "flow": flow,
            "version": compiled.version,
            "step": step,
            "waiting": cell.get("waiting", 0),
            "overdue": cell.get("overdue", 0),
            "instances": listed,
            "counted_at": waiting["computed_at"],
        }

    # -- alerts, incidents, instances -----------------------------------------------------------

    def alerts(
        self,
        flow: str | None = None,
        kind: str | None = None,
        step: str | None = None,
        limit: int = 200,
    ) -> dict[str, Any]:
        """Recent alerts (newest first), narrowed by flow, kind and step; and the incidents
        open now."""
        if self.alerts_feed is None:
            recent: list[dict[str, Any]] = []
            available = False
        else:
            recent = self.alerts_feed.recent()
            available = True
        picked = [
            a
            for a in recent
            if (flow is None or a.get("flow") == flow)
            and (kind is None or a.get("kind") == kind)
            and (step is None or a.get("step") == step)
        ][:limit]
        incidents = []
        if self.held is not None:
            for name in self.query.registry.names():
                if flow is None or name == flow:
                    for inc in describe_guard(self.held, name)["incidents"]:
                        incidents.append({"flow": name, **inc})
        return {
            "alerts": picked,
            "alerts_available": available,
            "incidents": incidents,
            "guardrails_available": self.held is not None,
            "controls": self.controls,
        }

    def instance(self, flow: str, key: str, via: str | None = None) -> dict[str, Any] | None:
        """The instance's view (`/instances`) with its timeline, and its held actions in
        full (observer-ids to release or drop)."""
        found = self.query.instance(flow, key, via=via)
        if found is None:
            return None
        found["timeline"] = timeline(found)
        if self.held is not None and found.get("held"):
            sel = Selection(flow, key=str(found["key"]))
            found["held_actions"] = [view(h) for h in held_actions(self.held, sel)]
        found["controls"] = self.controls
        return found
