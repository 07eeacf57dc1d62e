"""What the demo shows: one log line per record (`--plain`), the summary at the end, and what
every view is given. Views only render; `Tally` holds the facts. The full-terminal view is in
`live.py` (it needs rich, from the `[demo]` extra); this module needs nothing beyond the
standard library.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from demo.faults import Fault
from demo.summary import Summary
from demo.tally import Entry, Tally

__all__ = [
    "Header",
    "PlainView",
    "Status",
    "View",
    "clock_text",
    "fault_text",
    "format_entry",
    "format_summary",
]


@dataclass(frozen=True, slots=True)
class Header:
    """What the run is: shown once at the top."""

    flow: str
    version: int
    run_id: str
    seed: int
    rate: float
    orders: int | None
    duration_s: float | None
    observer: str  # e.g. "pid 1234, http://127.0.0.1:8123"
    observer_log: str
    run_dir: str
    instance_url: str  # "where is my order?" URL template with {key}


@dataclass(slots=True)
class Status:
    """How the run is going, refreshed by the loop."""

    phase: str = "starting"
    placed: int = 0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)


class View(Protocol):
    def start(self, header: Header) -> None: ...
    def show(self, entry: Entry) -> None: ...
    def refresh(self, tally: Tally, status: Status) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...
    def summary(self, summary: Summary, header: Header, elapsed_s: float) -> None: ...


def clock_text(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def fault_text(fault: Fault | None) -> str:
    return fault.label if fault is not None else "-"


def format_entry(e: Entry) -> str:
    """One log line for `--plain`: time, what, key facts; the injected fault in brackets."""
    label = {
        "alert": "ALERT",
        "command": "COMMAND",
        "outcome": "OUTCOME",
        "fault": "INJECT",
        "shop": "SHOP",
        "incident": "INCIDENT",
    }
    if e.category in ("alert", "incident"):
        rest = f"{e.severity or '':<8} {e.detail}"
    elif e.category == "command":
        rest = f"-> {e.detail}"
    else:
        rest = e.detail
    line = f"{clock_text(e.at_ms)} {label[e.category]:<8} {e.key}  {e.what:<15} {e.step or '':<17} {rest}".rstrip()
    if e.category in ("alert", "command", "outcome"):
        line += f"  [injected: {fault_text(e.fault)}]"
    return line


def format_summary(summary: Summary, header: Header, elapsed_s: float) -> str:
    """The end-of-run summary as plain text."""
    lines = [
        f"Summary: run {header.run_id}, seed {header.seed}, {summary.orders + summary.unjudged} orders in "
        f"{elapsed_s:.0f}s"
        + (
            f"; judged: the {summary.orders} that ended (the other {summary.unjudged} were still in flight)"
            if summary.unjudged
            else ""
        )
        + f"; {summary.faults_injected} faults injected"
        + (" in them" if summary.unjudged else "")
        + (f"; {summary.outage_hit} hit by the outage" if summary.outage_hit else ""),
        f"  {'fault':<16} {'injected':>8} {'detected':>9} {'as expected':>12}  what the engine publishes on this run's records",
    ]
    for r in summary.results:
        name = r.fault.label if r.fault is not None else "(no fault)"
        detected = f"{r.detected}/{r.injected}" if r.needs_alert else "-"
        lines.append(
            f"  {name:<16} {r.injected:>8} {detected:>9} {f'{r.as_expected}/{r.injected}':>12}  {r.meaning}"
        )

    def counts(d: Mapping[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    lines.append(f"  deviations seen: {counts(summary.deviations)}")
    lines.append(f"  outcomes:        {counts(summary.outcomes)}")
    lines.append(f"  commands:        {counts(summary.commands)}")
    lines += _guardrail_lines(summary)
    misses = [m for r in summary.results for m in r.misses]
    for m in misses[:20]:
        lines.append(f"  not as expected: {m}")
    if len(misses) > 20:
        lines.append(f"  ... and {len(misses) - 20} more")
    if summary.orders == 0:
        lines.append(
            "No order ended: nothing to judge." if summary.unjudged else "No order was placed."
        )
    elif summary.ok:
        lines.append(
            "RESULT: every injected fault was detected, nothing else raised an alert, every order ended as expected."
        )
    elif summary.all_detected:
        lines.append(
            "RESULT: every injected fault was detected, but some orders did not end as expected (above)."
        )
    else:
        lines.append("RESULT: some injected faults were NOT detected (above).")
    return "\n".join(lines)


def _guardrail_lines(summary: Summary) -> list[str]:
    """Incidents and held actions (a flow with guardrails), observer against engine."""
    if not (summary.incidents or summary.incidents_expected or summary.held_expected):
        return []
    shown = ", ".join(i.describe() for i in summary.incidents) or "none"
    lines = [f"  incidents:       {shown}"]
    if summary.incidents_ok:
        lines[0] += "  [the engine: the same]"
    else:
        engine = ", ".join(i.describe() for i in summary.incidents_expected) or "none"
        lines.append(f"  not as expected: the engine's incidents: {engine}")
    lines.append(
        f"  held actions:    {summary.held} held by the observer (the engine holds "
        f"{summary.held_expected}), not published; they wait for an operator"
    )
    return lines


def _banner(h: Header) -> list[str]:
    limit = (
        f"{h.orders} orders"
        if h.orders
        else (f"{h.duration_s:g}s" if h.duration_s else "until Ctrl-C")
    )
    return [
        f"Choreography observer demo: flow {h.flow} v{h.version}, run {h.run_id}, seed {h.seed}, "
        f"{h.rate:g} orders/s, {limit}",
        f"observer run: {h.observer}; log {h.observer_log}",
        f"where is my order?  curl {h.instance_url.format(key='<order>')}",
    ]


class PlainView:
    """One line per alert, outcome, command, injected fault and service answer."""

    def __init__(self, out: TextIO | None = None, progress_every_s: float = 10.0) -> None:
        self.out = out or sys.stdout
        self.progress_every_s = progress_every_s
        self._last_progress = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start(self, header: Header) -> None:
        for line in _banner(header):
            self._print(line)

    def show(self, entry: Entry) -> None:
        self._print(format_entry(entry))

    def note(self, text: str) -> None:
        self._print(text)

    def refresh(self, tally: Tally, status: Status) -> None:
        if status.elapsed_s - self._last_progress >= self.progress_every_s:
            self._last_progress = status.elapsed_s
            self._print(
                f"... {status.elapsed_s:.0f}s: {status.placed} orders placed, {len(tally.in_flight())} in flight, "
                f"outcomes {dict(tally.outcomes) or '{}'}; {status.phase}"
            )

    def stop(self) -> None:
        pass

    def summary(self, summary: Summary, header: Header, elapsed_s: float) -> None:
        self._print(format_summary(summary, header, elapsed_s))
