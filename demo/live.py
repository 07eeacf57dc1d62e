"""The full-terminal live view of the demo (rich), refreshed a few times a second.

Needs rich, which only the `[demo]` extra installs (`ops/demo` does): `--plain` and `--offline`
run without it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from demo.faults import Fault
from demo.summary import Summary
from demo.tally import Entry, Tally
from demo.view import Header, Status, clock_text, fault_text, format_summary

__all__ = ["LiveView"]

EXPLAIN_FOR_S = 4.0  # how long an explanation stays bright
STORY_LINES = 3  # explanations shown at once, newest first
INCIDENT_FOR_S = 20.0  # how long the last incident opened or resolved stays on top
_SEVERITY = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_OUTCOME = {"completed": "green", "compensated": "magenta", "cancelled": "yellow", "expired": "red"}


class LiveView:
    """A full-terminal picture refreshed a few times a second (rich.live)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None
        self._header: Header | None = None
        self._story: deque[tuple[float, str]] = deque(maxlen=STORY_LINES)
        self._incident: tuple[float, str] | None = None  # the last incident news, kept on top
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
        if entry.category == "incident":
            self._incident = (time.monotonic(), entry.explain)
        elif entry.explain:
            self._story.append((time.monotonic(), entry.explain))

    def note(self, text: str) -> None:
        """Shown in the footer while the view is live, printed once it has stopped."""
        if self._live is None:
            self.console.print(text, highlight=False)
        else:
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
        pinned = (
            self._incident if self._incident and now - self._incident[0] < INCIDENT_FOR_S else None
        )
        if pinned is not None:  # an incident stays on top a while: it is the news of an outage
            fresh = fresh[-(STORY_LINES - 1) :]
        if not fresh and pinned is None:
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
        if pinned is not None:
            lines.append(
                Text("▶ " + pinned[1], style="bold red", no_wrap=True, overflow="ellipsis")
            )
        return Group(*reversed(lines))

    def _orders(self, tally: Tally, steps: Sequence[str], rows: int) -> Table:
        now = time.time() * 1000
        table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
        table.add_column("order", no_wrap=True)
        table.add_column("injected fault", no_wrap=True)
        table.add_column("steps", no_wrap=True)
        table.add_column("last", overflow="ellipsis", no_wrap=True, ratio=1)
        table.add_column("age", justify="right", no_wrap=True)
        table.caption = "steps ● observed ○ not yet: " + " ".join(steps)
        table.caption_style = "dim"
        table.caption_justify = "left"
        flying = tally.in_flight()
        shown = flying if len(flying) <= rows else flying[: rows - 1]
        for t in shown:
            table.add_row(
                t.key,
                Text(fault_text(t.plan.fault), style="yellow" if t.plan.fault else "dim"),
                _progress(tally.steps_seen(t), steps),
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
        alerts = [e for e in tally.entries if e.category in ("alert", "incident")][-rows:]
        for e in reversed(alerts):
            incident = e.category == "incident"
            table.add_row(
                clock_text(e.at_ms)[:8],
                Text(
                    e.what,
                    style="bold reverse red" if incident else _SEVERITY.get(e.severity or "", ""),
                ),
                e.step or "-",
                "(the flow)" if incident else e.key,
                "-" if incident else fault_text(e.fault),
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
                clock_text(e.at_ms)[:8],
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
            if r is not None and fault is Fault.OUTAGE:
                table.add_row("hit by the outage", str(r.injected))
            elif r is not None:
                caught = r.detected if r.needs_alert else r.as_expected
                table.add_row(fault.label, f"{caught}/{r.injected}")
        table.add_row(Text("deviations", style="bold"), "")
        for kind, n in sorted(tally.deviations.items()):
            table.add_row(kind, str(n))
        if tally.incidents.records or tally.held:
            table.add_row(Text("guardrails", style="bold"), "")
            table.add_row("incidents open", str(len(tally.incidents.open)))
            resolved = sum(1 for i in tally.incidents.records if i.kind == "incident_resolved")
            table.add_row("incidents resolved", str(resolved))
            table.add_row(Text("actions held", style="bold red"), str(tally.held))
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


def _progress(observed: list[str], steps: Sequence[str]) -> Text:
    """● for each main step the engine has observed, ○ for the others; then other paths' steps."""
    seen = set(observed)
    out = Text()
    for s in steps:
        out.append("●" if s in seen else "○", style="green" if s in seen else "dim")
    extra = [s for s in observed if s not in steps]
    if extra:
        out.append(" +" + ",".join(extra), style="magenta")
    return out
