"""`--outage SERVICE:DURATION[@OFFSET]`: one service of the shop down for a while, and the
guarded copy of the flow the demo then runs. Pure but for `guard_flow`, which writes the copy.

During the outage the service starts no job and answers no command, and what reached it
meanwhile is lost (requests that timed out: a job already under way when it went down is
finished). So every order that reached payments during the outage misses its `paid` deadline,
and the flow's compensation for it (release the stock, cancel the order) is what the
guardrails hold. Once back, the service does new work as usual.

Why not work through the backlog late, once back? Then some of those payments land within a
moment of their deadline; the live observer decides such a case by arrival (`late` alone when
the event comes before its watermark passed the deadline) and the engine in replay by event
time (`missing`, then `late`), so the verdict would turn on a race of milliseconds. The
demo's other faults keep seconds from every deadline for the same reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from demo.wire import DemoError
from observer.flows.spec import FlowSpec

__all__ = [
    "DEFAULT_OFFSET_MS",
    "GUARDRAILS",
    "Outage",
    "OutageWindow",
    "guard_flow",
    "guarded_flow_text",
    "parse_outage",
]

DEFAULT_OFFSET_MS = 10_000  # an outage starts this long after the first order, unless told
# What the demo adds to a flow without `guardrails:` when an outage is asked for: an incident
# once 5 deviations of one kind at one step fall within 5 s (at 2 orders a second an outage
# gets there in under 3 s; the demo's own faults, one order in ten each, never do), closed 5 s
# after the last; and a rate limit no healthy run reaches, as a backstop.
GUARDRAILS = (
    "guardrails:                       # added by the demo for --outage (docs/demo.md)\n"
    "  incident: {threshold: 5, within: 5s}\n"
    "  max_actions: {count: 100, per: 1m}\n"
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000}


def _duration_ms(text: str, what: str) -> int:
    m = _DURATION.match(text.strip())
    if m is None:
        raise DemoError(f"--outage: {what} '{text}' is not a duration (say 30s, 1.5m or 800ms)")
    return round(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"])


@dataclass(frozen=True, slots=True)
class Outage:
    """What `--outage` asked for: `service` down `duration_ms`, from `offset_ms` after the
    first order."""

    service: str
    duration_ms: int
    offset_ms: int = DEFAULT_OFFSET_MS

    def window(self, first_order_ms: int) -> OutageWindow:
        start = first_order_ms + self.offset_ms
        return OutageWindow(self.service, start, start + self.duration_ms)

    def describe(self) -> str:
        return f"{self.service} down {self.duration_ms / 1000:g}s from {self.offset_ms / 1000:g}s"


def parse_outage(text: str, services: tuple[str, ...]) -> Outage:
    """`payments:30s` or `payments:30s@5s` (down 30 s, from 5 s after the first order)."""
    service, sep, rest = text.partition(":")
    if not sep or not service or not rest:
        raise DemoError(f"--outage '{text}': say SERVICE:DURATION[@OFFSET], e.g. payments:30s")
    if service not in services:
        raise DemoError(
            f"--outage '{text}': no service '{service}' (one of: {', '.join(services)})"
        )
    duration, at, offset = rest.partition("@")
    duration_ms = _duration_ms(duration, "duration")
    if duration_ms <= 0:
        raise DemoError(f"--outage '{text}': the duration must be more than 0")
    offset_ms = _duration_ms(offset, "offset") if at else DEFAULT_OFFSET_MS
    return Outage(service, duration_ms, offset_ms)


@dataclass(frozen=True, slots=True)
class OutageWindow:
    """`service` does nothing from `start_ms` (included) to `end_ms` (excluded), epoch ms."""

    service: str
    start_ms: int
    end_ms: int

    def holds(self, service: str, at_ms: int) -> bool:
        """Whether `service` is down at `at_ms`."""
        return service == self.service and self.start_ms <= at_ms < self.end_ms


def guarded_flow_text(text: str, spec: FlowSpec, source: str) -> str:
    """The flow file `text` with `GUARDRAILS` added at its end. The flow (`spec`) must have
    none yet, and be the file's only document (the block goes to the last one)."""
    if spec.guardrails is not None:
        raise DemoError(f"{source} already has guardrails: run it as it is")
    if re.search(r"\n---\s*(\n|$)", text.strip()):
        raise DemoError(
            f"{source} holds several YAML documents: add `guardrails:` to the flow yourself "
            "(see docs/flow-language.md)"
        )
    return text.rstrip("\n") + "\n\n" + GUARDRAILS


def guard_flow(flow_file: str, spec: FlowSpec, run_dir: Path) -> tuple[str, str]:
    """The flow file the observer runs during an outage, and a line saying which: the flow
    itself when it has `guardrails:`, else a copy with `GUARDRAILS` added, in `run_dir`."""
    if spec.guardrails is not None:
        return flow_file, f"{flow_file} has guardrails of its own: the observer runs it as it is"
    source = Path(flow_file)
    copy = run_dir / f"{source.stem}.guarded{source.suffix or '.yaml'}"
    copy.write_text(guarded_flow_text(source.read_text(), spec, flow_file))
    return str(copy), (
        f"{flow_file} has no guardrails: the observer runs a copy with `incident: {{threshold: 5, "
        f"within: 5s}}, max_actions: {{count: 100, per: 1m}}` added: {copy}"
    )
