"""The console's numbers from the group's per-minute counts (pure).

The counts are those of `observer/correlation.py`, added per minute by every process into
Redis (`P:tally:<minute>`): steps observed and deviations per step, instances started and
ended, step latencies per bucket and SLO judgements. Summed over the last hour they give each
node's "observed / missing / late" and its p50 / p99, and each flow's outcomes and deviations;
the SLO's per-day counts give the error budget left over its window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from observer.correlation import LATENCY_BOUNDS_MS, Count
from observer.flows.compiled import CompiledFlow, CompiledSlo
from observer.timefmt import format_duration

__all__ = ["flow_hour", "quantile_ms", "slo_status", "step_hour", "total"]


def total(minutes: Mapping[int, Mapping[Count, int]]) -> dict[Count, int]:
    """The counts of several minutes added up."""
    out: dict[Count, int] = {}
    for per in minutes.values():
        for count, n in per.items():
            out[count] = out.get(count, 0) + n
    return out


def quantile_ms(buckets: Mapping[int, int], q: float) -> int | None:
    """The q-quantile (0..1) of latencies counted per bucket (index into LATENCY_BOUNDS_MS;
    the last index: above every bound), interpolated linearly inside its bucket as
    Prometheus' histogram_quantile does; None without any."""
    n = sum(buckets.values())
    if n == 0:
        return None
    rank = q * n
    seen = 0
    bounds = LATENCY_BOUNDS_MS
    for i in range(len(bounds) + 1):
        c = buckets.get(i, 0)
        if c and seen + c >= rank:
            if i == len(bounds):  # above every bound: the highest bound is all one can say
                return bounds[-1]
            low = 0 if i == 0 else bounds[i - 1]
            return int(low + (bounds[i] - low) * (rank - seen) / c)
        seen += c
    return bounds[-1]


def step_hour(flow: CompiledFlow, counts: Mapping[Count, int]) -> dict[str, dict[str, Any]]:
    """Per step of `flow` (by name): observed, missing, late, other deviations by kind, and
    the latency p50 / p99 (ms, and as text) from its anchor."""
    out: dict[str, dict[str, Any]] = {
        s.name: {"observed": 0, "missing": 0, "late": 0, "deviations": {}, "lat": {}}
        for s in flow.steps
    }
    for (scope, name, step, kind), n in counts.items():
        row = out.get(step)
        if name != flow.name or row is None:
            continue
        if scope == "step":
            if kind in ("observed", "missing", "late"):
                row[kind] += n
            else:
                row["deviations"][kind] = row["deviations"].get(kind, 0) + n
        elif scope == "lat" and kind.isdigit():
            row["lat"][int(kind)] = row["lat"].get(int(kind), 0) + n
    for row in out.values():
        lat = row.pop("lat")
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            ms = quantile_ms(lat, q)
            row[name + "_ms"] = ms
            row[name] = None if ms is None else format_duration(ms)
    return out


def flow_hour(flow: str, counts: Mapping[Count, int]) -> dict[str, Any]:
    """A flow's instances started, ended by outcome and deviations by kind (all steps)."""
    outcomes: dict[str, int] = {}
    deviations: dict[str, int] = {}
    started = 0
    for (scope, name, b, c), n in counts.items():
        if name != flow:
            continue
        if scope == "flow" and b == "started":
            started += n
        elif scope == "flow" and b == "ended":
            outcomes[c] = outcomes.get(c, 0) + n
        elif scope == "step" and c != "observed":
            deviations[c] = deviations.get(c, 0) + n
    return {
        "started": started,
        "outcomes": dict(sorted(outcomes.items())),
        "deviations": dict(sorted(deviations.items())),
    }


def _judged(counts: Iterable[tuple[Count, int]], flow: str) -> tuple[int, int]:
    good = bad = 0
    for (scope, name, result, _), n in counts:
        if scope == "slo" and name == flow:
            if result == "good":
                good += n
            elif result == "bad":
                bad += n
    return good, bad


def slo_status(
    slo: CompiledSlo, flow: str, window: Mapping[str, int], hour: Mapping[Count, int]
) -> dict[str, Any]:
    """Budget left over the SLO's window (from `window`: {"good": n, "bad": n} over its days)
    and the burn rate over the last hour (bad share / budget: 1 spends exactly the budget over
    the window). Without instances judged the budget is whole and the burn rate unknown."""
    budget = 1.0 - slo.objective
    good, bad = window.get("good", 0), window.get("bad", 0)
    ratio = bad / (good + bad) if good + bad else 0.0
    h_good, h_bad = _judged(hour.items(), flow)
    burn = (h_bad / (h_good + h_bad)) / budget if h_good + h_bad and budget > 0 else None
    left = 1.0 - ratio / budget if budget > 0 else (1.0 if bad == 0 else 0.0)
    return {
        "objective": slo.objective_percent + " %",
        "within": format_duration(slo.within_ms),
        "window": format_duration(slo.window_ms),
        "good": good,
        "bad": bad,
        "budget_left": round(left, 4),
        "burn_rate_1h": None if burn is None else round(burn, 2),
        "judged_1h": h_good + h_bad,
    }
