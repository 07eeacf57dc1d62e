"""Prometheus rules for the flows' SLOs: `observer rules FLOWS` (docs/monitoring.md).

Per flow with an `slo:`, one rule group over `observer_slo_events_total{flow, result}` (good/bad,
counted once per instance by the engine): the error ratio and burn rate over the SRE workbook's
windows, the error budget left over the SLO's window, and its multi-window, multi-burn-rate
alerts (page: 14.4x over 1h and 5m or 6x over 6h and 30m; ticket: 3x over 1d and 2h or 1x over
3d and 6h). Pure: flows in, rule groups (plain data) out; `render_rules` makes the YAML text.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

from observer.flows.compiled import CompiledFlow, CompiledSlo
from observer.timefmt import format_duration

__all__ = ["BURN_ALERTS", "SLI_WINDOWS", "BurnAlert", "render_rules", "slo_rule_groups"]

METRIC = "observer_slo_events_total"
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnAlert:
    """Fires while the burn rate exceeds `factor` over both the long and the short window."""

    long: str
    short: str
    factor: Decimal


# The SRE workbook, "Alerting on SLOs", multiwindow multi-burn-rate alerts.
BURN_ALERTS = {
    "page": (BurnAlert("1h", "5m", Decimal("14.4")), BurnAlert("6h", "30m", Decimal("6"))),
    "ticket": (BurnAlert("1d", "2h", Decimal("3")), BurnAlert("3d", "6h", Decimal("1"))),
}
_ALERT_NAMES = {"page": "ObserverSLOBudgetBurnFast", "ticket": "ObserverSLOBudgetBurnSlow"}


def _number(d: Decimal) -> str:
    """A decimal as PromQL reads it, without float noise or exponent: 0.005, 14.4, 1."""
    return format(d.normalize(), "f")


def _prom_duration(ms: int) -> str:
    """A Prometheus range duration (`28d`, `1h30m`, `1500ms`)."""
    return format_duration(ms).replace(" ", "")


def _objective(slo: CompiledSlo) -> Decimal:
    return Decimal(slo.objective_percent) / 100


def _sli(flow: str, window: str) -> list[dict[str, Any]]:
    selector = f'flow="{flow}"'
    ratio = (
        f'sum by (flow) (rate({METRIC}{{{selector},result="bad"}}[{window}]))\n'
        f"/\nsum by (flow) (rate({METRIC}{{{selector}}}[{window}]))\n"
    )
    return [
        {"record": f"observer_slo:error_ratio:rate{window}", "expr": LiteralScalarString(ratio)},
        {
            "record": f"observer_slo:burn_rate:rate{window}",
            "expr": f"observer_slo:error_ratio:rate{window}{{{selector}}}"
            f" / on (flow) observer_slo:error_budget:ratio{{{selector}}}",
        },
    ]


def _alert(flow: CompiledFlow, slo: CompiledSlo, kind: str) -> dict[str, Any]:
    sel = f'{{flow="{flow.name}"}}'
    clauses = [
        f"(observer_slo:burn_rate:rate{a.long}{sel} > {_number(a.factor)}\n"
        f" and observer_slo:burn_rate:rate{a.short}{sel} > {_number(a.factor)})"
        for a in BURN_ALERTS[kind]
    ]
    first, second = BURN_ALERTS[kind]
    return {
        "alert": _ALERT_NAMES[kind],
        "expr": LiteralScalarString("\nor\n".join(clauses) + "\n"),
        "labels": {
            "severity": kind,
            "slo_objective": f"{slo.objective_percent}%",
            "slo_within": format_duration(slo.within_ms),
            "slo_window": format_duration(slo.window_ms),
        },
        "annotations": {
            "summary": f"Flow {flow.name} spends its SLO error budget "
            '{{ $value | printf "%.1f" }}x as fast as it may',
            "description": (
                f"SLO: {slo.objective_percent}% of {flow.name} instances complete within "
                f"{format_duration(slo.within_ms)} of their start, over "
                f"{format_duration(slo.window_ms)}. Fires at {_number(first.factor)}x over "
                f"{first.long} and {first.short}, or {_number(second.factor)}x over "
                f"{second.long} and {second.short}."
            ),
            "runbook_url": "docs/monitoring.md#slo-alerts",
        },
    }


def _group(flow: CompiledFlow, slo: CompiledSlo) -> dict[str, Any]:
    name = flow.name
    sel = f'{{flow="{name}"}}'
    objective = _objective(slo)
    budget = 1 - objective
    window = _prom_duration(slo.window_ms)
    rules: list[dict[str, Any]] = [
        {"record": f"observer_slo:{what}:ratio", "expr": _number(value), "labels": {"flow": name}}
        for what, value in (("objective", objective), ("error_budget", budget))
    ]
    for w in SLI_WINDOWS:
        rules += _sli(name, w)
    period = (
        f'sum by (flow) (increase({METRIC}{{flow="{name}",result="bad"}}[{window}]))\n'
        f'/\nsum by (flow) (increase({METRIC}{{flow="{name}"}}[{window}]))\n'
    )
    rules += [
        {"record": "observer_slo:error_ratio:period", "expr": LiteralScalarString(period)},
        {
            "record": "observer_slo:error_budget_remaining:ratio",
            "expr": f"1 - observer_slo:error_ratio:period{sel}"
            f" / on (flow) observer_slo:error_budget:ratio{sel}",
        },
        _alert(flow, slo, "page"),
        _alert(flow, slo, "ticket"),
    ]
    return {"name": f"observer-slo-{name}", "rules": rules}


def slo_rule_groups(flows: Iterable[CompiledFlow]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rule groups for every flow with an `slo:` (the newest version of each, in name order),
    and warnings: alerts that can never fire because the objective leaves too big a budget."""
    groups: list[dict[str, Any]] = []
    warnings: list[str] = []
    for flow in sorted(flows, key=lambda f: f.name):
        slo = flow.slo
        if slo is None:
            continue
        groups.append(_group(flow, slo))
        budget = 1 - _objective(slo)
        for kind, alerts in BURN_ALERTS.items():
            for a in alerts:
                if a.factor * budget >= 1:
                    warnings.append(
                        f"flow '{flow.name}': with objective {slo.objective_percent}% the {kind} "
                        f"alert's {_number(a.factor)}x burn over {a.long} cannot fire (it needs "
                        f"more than {_number(a.factor * budget * 100)}% of instances bad)"
                    )
    return groups, warnings


HEADER = (
    "# Prometheus rules for the flows' SLOs, generated by `observer rules` from their `slo:`.\n"
    "# Regenerate instead of editing. What each rule means: docs/monitoring.md.\n"
)


def render_rules(groups: list[dict[str, Any]]) -> str:
    """The rule file's text (YAML), with a header saying where it comes from."""
    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    yaml.dump({"groups": groups}, out)
    return HEADER + out.getvalue()
