"""What the demo shows: a live terminal view (rich) or one log line per record (`--plain`),
and the summary at the end. Views only render; `Tally` holds the facts.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from demo.faults import Fault
from demo.tally import Entry, OrderTrack, Summary, Tally

__all__ = ["Header", "LiveView", "PlainView", "Status", "View", "format_entry", "format_summary"]

EXPLAIN_FOR_S = 4.0  # how long an explanation stays bright
STORY_LINES = 3  # explanations shown at once, newest first
_SEVERITY = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_OUTCOME = {"completed": "green", "compensated": "magenta", "cancelled": "yellow", "expired": "red"}


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


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _fault(fault: Fault | None) -> str:
    return fault.label if fault is not None else "-"


def format_entry(e: Entry) -> str:
    """One log line for `--plain`: time, what, key facts; the injected fault in brackets."""
    label = {
        "alert": "ALERT",
        "command": "COMMAND",
        "outcome": "OUTCOME",
        "fault": "INJECT",
        "shop": "SHOP",
    }
    if e.category == "alert":
        rest = f"{e.severity or '':<8} {e.detail}"
    elif e.category == "command":
        rest = f"-> {e.detail}"
    else:
        rest = e.detail
    line = f"{_clock(e.at_ms)} {label[e.category]:<8} {e.key}  {e.what:<15} {e.step or '':<17} {rest}".rstrip()
    if e.category in ("alert", "command", "outcome"):
        line += f"  [injected: {_fault(e.fault)}]"
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
        + (" in them" if summary.unjudged else ""),
        f"  {'fault':<16} {'injected':>8} {'detected':>9} {'as expected':>12}  what the observer does",
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


class LiveView:
    """A full-terminal picture refreshed a few times a second (rich.live)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None
        self._header: Header | None = None
        self._story: deque[tuple[float, str]] = deque(maxlen=STORY_LINES)
        self._notes: list[str] = []

    def start(self, header: Header) -> None:
        self._header = header
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        )
        self._live.start()

    def show(self, entry: Entry) -> None:
        if entry.explain:
            self._story.append((time.monotonic(), entry.explain))

    def note(self, text: str) -> None:
        self._notes = [*self._notes[-2:], text]

    def refresh(self, tally: Tally, status: Status) -> None:
        if self._live is not None and self._header is not None:
            self._live.update(self._render(tally, status, self._header), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, summary: Summary, header: Header, elapsed_s: float) -> None:
        text = format_summary(summary, header, elapsed_s)
        style = "green" if summary.ok else ("yellow" if summary.all_detected else "red")
        body, _, verdict = text.rpartition("\n")
        self.console.print(body, highlight=False)
        self.console.print(verdict, style=f"bold {style}", highlight=False)

    # -- rendering ------------------------------------------------------------------------------

    def _what_now(self, tally: Tally) -> RenderableType:
        now = time.monotonic()
        fresh = [(t, text) for t, text in self._story if now - t < EXPLAIN_FOR_S * STORY_LINES]
        if not fresh:
            return Text(
                f"▶ Watching {len(tally.in_flight())} orders in flight against the flow's windows. No news is "
                "good news: the observer publishes only when an order deviates, and one outcome when it ends.",
                style="dim",
            )
        lines = [
            Text(
                "▶ " + text,
                style="bold" if i == len(fresh) - 1 else "dim",
                no_wrap=True,
                overflow="ellipsis",
            )
            for i, (_, text) in enumerate(fresh)
        ]
        return Group(*reversed(lines))

    def _orders(self, tally: Tally, steps: Sequence[str], rows: int) -> Table:
        now = time.time() * 1000
        table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
        table.add_column("order", no_wrap=True)
        table.add_column("injected fault", no_wrap=True)
        table.add_column("steps", no_wrap=True)
        table.add_column("last", overflow="ellipsis", no_wrap=True, ratio=1)
        table.add_column("age", justify="right", no_wrap=True)
        table.caption = "steps ● seen ○ not yet: " + " ".join(steps)
        table.caption_style = "dim"
        table.caption_justify = "left"
        flying = tally.in_flight()
        shown = flying if len(flying) <= rows else flying[: rows - 1]
        for t in shown:
            table.add_row(
                t.key,
                Text(_fault(t.plan.fault), style="yellow" if t.plan.fault else "dim"),
                _progress(t, steps),
                t.last,
                f"{(now - t.placed_ms) / 1000:.0f}s",
            )
        if len(flying) > len(shown):
            table.add_row(Text(f"… {len(flying) - len(shown)} more", style="dim"), "", "", "", "")
        return table

    def _alerts(self, tally: Tally, rows: int) -> Table:
        table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
        for name in ("time", "kind", "step", "order", "injected"):
            table.add_column(name, no_wrap=True)
        table.add_column("summary", overflow="ellipsis", no_wrap=True, ratio=1)
        alerts = [e for e in tally.entries if e.category == "alert"][-rows:]
        for e in reversed(alerts):
            table.add_row(
                _clock(e.at_ms)[:8],
                Text(e.what, style=_SEVERITY.get(e.severity or "", "")),
                e.step or "-",
                e.key,
                _fault(e.fault),
                e.detail,
            )
        return table

    def _commands(self, tally: Tally, rows: int) -> Table:
        table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
        for name in ("time", "command", "topic", "order"):
            table.add_column(name, no_wrap=True)
        table.add_column("the service's answer", overflow="ellipsis", no_wrap=True, ratio=1)
        answers = {(e.key, e.what): e.detail for e in tally.entries if e.category == "shop"}
        commands = [e for e in tally.entries if e.category == "command"][-rows:]
        for e in reversed(commands):
            table.add_row(
                _clock(e.at_ms)[:8],
                Text(e.what, style="magenta"),
                e.detail,
                e.key,
                answers.get((e.key, e.what), "…"),
            )
        return table

    def _side(self, tally: Tally) -> Table:
        table = Table(box=None, pad_edge=False, show_header=False, expand=True)
        table.add_column(ratio=1)
        table.add_column(justify="right")
        table.add_row(Text("outcomes", style="bold"), "")
        for outcome, n in sorted(tally.outcomes.items()):
            table.add_row(Text(outcome, style=_OUTCOME.get(outcome, "")), str(n))
        table.add_row("in flight", str(len(tally.in_flight())))
        table.add_row(Text("faults caught", style="bold"), "")
        results = {r.fault: r for r in tally.summary().results}
        for fault in Fault:
            r = results.get(fault)
            if r is not None:
                caught = r.detected if r.needs_alert else r.as_expected
                table.add_row(fault.label, f"{caught}/{r.injected}")
        table.add_row(Text("deviations", style="bold"), "")
        for kind, n in sorted(tally.deviations.items()):
            table.add_row(kind, str(n))
        return table

    def _render(self, tally: Tally, status: Status, h: Header) -> RenderableType:
        height = self.console.size.height
        steps = tally.binding.main_steps
        title = Text.assemble(
            ("Choreography observer demo", "bold"),
            f"  flow {h.flow} v{h.version} · run {h.run_id} · seed {h.seed} · {h.rate:g} orders/s · "
            f"{status.placed} placed · {status.elapsed_s:.0f}s · {status.phase}",
        )
        side = self._side(tally)
        # what is left after the fixed parts, shared by orders, deviations and commands
        spare = max(9, height - (1 + STORY_LINES + 2) - 2 - 3 * 3 - 2)
        order_rows = max(side.row_count - 3, spare // 2)
        alert_rows = max(3, (spare - order_rows) * 2 // 3)
        command_rows = max(2, spare - order_rows - alert_rows)
        top = Table.grid(expand=True)
        top.add_column(ratio=1)
        top.add_column(width=30)
        top.add_row(
            Panel(
                self._orders(tally, steps, order_rows),
                title="orders in flight",
                title_align="left",
            ),
            Panel(side, title="tally", title_align="left"),
        )
        footer = [
            Text(f"observer: {h.observer} · log {h.observer_log} · Ctrl-C stops", style="dim"),
            Text(f"where is my order?  curl {h.instance_url.format(key='<order>')}", style="dim"),
        ]
        footer += [Text(n, style="yellow") for n in self._notes + status.problems[-2:]]
        return Group(
            title,
            Panel(
                self._what_now(tally),
                title="what the observer is doing",
                title_align="left",
                height=STORY_LINES + 2,
            ),
            top,
            Panel(
                self._alerts(tally, alert_rows),
                title="deviations: alerts the observer published",
                title_align="left",
            ),
            Panel(
                self._commands(tally, command_rows),
                title="commands the observer published",
                title_align="left",
            ),
            *footer,
        )


def _progress(track: OrderTrack, steps: Sequence[str]) -> Text:
    seen = set(track.steps)
    out = Text()
    for s in steps:
        out.append("●" if s in seen else "○", style="green" if s in seen else "dim")
    extra = [s for s in track.steps if s not in steps]
    if extra:
        out.append(" +" + ",".join(extra), style="magenta")
    return out
