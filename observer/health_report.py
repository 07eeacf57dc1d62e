"""`observer health`'s report: correlation counts over a period in, plain sentences out.

Pure: the counts (`observer/correlation.py`, added up over the period), what the flows'
sources are, and the thresholds go in; findings come out, each a sentence that says what
looks wrong ("12 % of carrier.events events match no tracking registered in the last hour")
or worth knowing, and a one-screen text or a JSON document is rendered from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from observer.correlation import (
    ALIAS_CONFLICT,
    ARRIVALS,
    BUFFER_FULL,
    BUFFERED,
    DEAD_LETTER_REASONS,
    ORPHANED,
    Count,
)
from observer.timefmt import format_duration

__all__ = ["Finding", "HealthReport", "SourceInfo", "Thresholds", "assess", "render_text"]

# dead letters of a source that the router attributes to it (said per source, not per topic)
_SOURCE_REASONS = {"no_key": "no correlation key", "no_type": "no event type"}
_SOURCE_REASONS["no_time"] = "no or bad event time"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One source of a flow, as its flow file declares it."""

    flow: str
    source: str
    topic: str
    key: str = "key"  # selectors, as written
    type: str = "value.type"
    time: str = "timestamp"
    buffer_ms: int = 300_000
    via: str | None = None  # aliases: the alias its key selector reads


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a share counts as something wrong (fractions, 0.01 = 1 %)."""

    unmatched: float = 0.01  # orphaned + dropped for a full buffer, of a source's events
    invalid: float = 0.001  # events without key, type or time, of a source's records
    dead_letters: float = 0.001  # other dead letters, of a topic's records
    min_records: int = 10  # a topic all of whose records are ignored, from this many on

    def describe(self) -> str:
        return (
            f"events matching no instance >= {_pct(self.unmatched)} of a source's events; "
            f"events without key, type or time >= {_pct(self.invalid)} of a source's records; "
            f"other dead letters >= {_pct(self.dead_letters)} of a topic's records; "
            f"any alias conflict; every record of a topic ignored (from {self.min_records} on)"
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """A sentence about one flow's source, a topic, or the whole period."""

    severity: Literal["problem", "note"]
    message: str
    flow: str | None = None
    source: str | None = None
    topic: str | None = None
    kind: str | None = None
    count: int = 0
    total: int = 0


@dataclass(slots=True)
class HealthReport:
    period: str  # "in the last hour"
    healthy: bool
    findings: list[Finding]
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)  # what was counted
    topics: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "healthy": self.healthy,
            "findings": [asdict(f) for f in self.findings],
            "flows": self.flows,
            "topics": self.topics,
            "thresholds": self.thresholds,
        }


def _pct(share: float) -> str:
    if share >= 0.095:
        return f"{share * 100:.0f} %"
    if share >= 0.001:
        return f"{share * 100:.1f} %"
    return f"{share * 100:.2f} %" if share >= 0.0001 else "< 0.01 %"


def _n(n: int) -> str:
    return f"{n:,}"


def _tables(counts: Mapping[Count, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Counts as nested tables: flows (sources, steps, started, ended) and topics."""
    flows: dict[str, Any] = {}
    topics: dict[str, Any] = {}
    for (scope, a, b, c), n in sorted(counts.items()):
        if scope == "src":
            flow = flows.setdefault(a, {})
            flow.setdefault("sources", {}).setdefault(b, {})[c] = n
        elif scope == "step":
            flow = flows.setdefault(a, {})
            flow.setdefault("steps", {}).setdefault(b or "(none)", {})[c] = n
        elif scope == "flow":
            flow = flows.setdefault(a, {})
            if b == "started":
                flow["started"] = flow.get("started", 0) + n
            elif b == "ended":
                flow.setdefault("ended", {})[c] = n
        elif scope == "topic":
            topic = topics.setdefault(a, {"read": 0, "ignored": 0, "dead_letters": {}})
            if b == "dead_letter":
                topic["dead_letters"][c] = n
            elif b in ("read", "ignored"):
                topic[b] += n
    return flows, topics


def _of(
    info: SourceInfo,
    severity: Literal["problem", "note"],
    message: str,
    *,
    kind: str,
    count: int,
    total: int = 0,
) -> Finding:
    return Finding(severity, message, info.flow, info.source, info.topic, kind, count, total)


def _source_findings(
    info: SourceInfo, kinds: Mapping[str, int], period: str, t: Thresholds
) -> list[Finding]:
    """What looks wrong (or is worth a note) about one source of a flow."""
    out: list[Finding] = []
    arrivals = sum(kinds.get(k, 0) for k in ARRIVALS)
    invalid = sum(kinds.get(k, 0) for k in _SOURCE_REASONS)
    label = f"{info.topic} events (source {info.source})"
    orphaned, full = kinds.get(ORPHANED, 0), kinds.get(BUFFER_FULL, 0)
    unmatched = orphaned + full
    if unmatched and arrivals:
        share = min(unmatched / arrivals, 1.0)
        what = f"{info.via} registered" if info.via else "instance"
        parts = []
        if orphaned:
            wait = format_duration(info.buffer_ms)
            parts.append(f"{_n(orphaned)} orphaned (no instance started within {wait})")
        if full:
            parts.append(f"{_n(full)} dropped because the buffer of their key was full")
        severity: Literal["problem", "note"] = "problem" if share >= t.unmatched else "note"
        message = f"{_pct(share)} of {label} match no {what} {period}: {', '.join(parts)}"
        out.append(_of(info, severity, message, kind="unmatched", count=unmatched, total=arrivals))
    buffered = kinds.get(BUFFERED, 0)
    if buffered and arrivals:
        share = buffered / arrivals
        message = (
            f"{_pct(share)} of {label} came before their instance started and waited for it "
            f"(buffered, up to {format_duration(info.buffer_ms)})"
        )
        out.append(_of(info, "note", message, kind=BUFFERED, count=buffered, total=arrivals))
    for kind, what in _SOURCE_REASONS.items():
        n = kinds.get(kind, 0)
        if not n:
            continue
        total = arrivals + invalid
        share = n / total
        selector = {"no_key": info.key, "no_type": info.type, "no_time": info.time}[kind]
        severity = "problem" if share >= t.invalid else "note"
        message = (
            f"{_pct(share)} of {info.topic} records for source {info.source} had {what} at "
            f"{selector} {period} ({_n(n)} dead-lettered)"
        )
        out.append(_of(info, severity, message, kind=kind, count=n, total=total))
    conflicts = kinds.get(ALIAS_CONFLICT, 0)
    if conflicts:
        message = (
            f"{_n(conflicts)} alias conflicts on {info.topic} (source {info.source}) {period}: "
            "a second open instance registered an alias value another one holds"
        )
        out.append(_of(info, "problem", message, kind=ALIAS_CONFLICT, count=conflicts))
    return out


def _topic_findings(
    topic: str, row: Mapping[str, Any], period: str, t: Thresholds
) -> list[Finding]:
    out: list[Finding] = []
    read, ignored = row["read"], row["ignored"]
    others = {r: n for r, n in row["dead_letters"].items() if r not in _SOURCE_REASONS and n}
    dead = sum(others.values())
    if dead:
        share = dead / read if read else 1.0
        why = ", ".join(
            f"{_n(n)} {DEAD_LETTER_REASONS.get(r, r)}" for r, n in sorted(others.items())
        )
        severity: Literal["problem", "note"] = "problem" if share >= t.dead_letters else "note"
        message = f"{_pct(share)} of {topic} records went to the dead-letter topic {period}: {why}"
        out.append(
            Finding(severity, message, topic=topic, kind="dead_letter", count=dead, total=read)
        )
    if ignored and read:
        if ignored >= read and read >= t.min_records:
            message = (
                f"every one of the {_n(read)} {topic} records {period} had a type no flow wants: "
                "check the sources' type selectors and the event types in `on:`"
            )
            out.append(
                Finding("problem", message, topic=topic, kind="ignored", count=ignored, total=read)
            )
        elif ignored / read >= 0.5:
            message = (
                f"{_pct(ignored / read)} of {topic} records had a type no flow wants (ignored)"
            )
            out.append(
                Finding("note", message, topic=topic, kind="ignored", count=ignored, total=read)
            )
    return out


def _summary(flow: str, row: Mapping[str, Any]) -> str:
    """One line of what a flow saw."""
    sources = row.get("sources", {})
    events = sum(sum(v for k, v in kinds.items() if k in ARRIVALS) for kinds in sources.values())
    text = f"{_n(events)} events from {len(sources)} source{'s' if len(sources) != 1 else ''}"
    started = row.get("started", 0)
    ended = row.get("ended", {})
    text += f"; {_n(started)} instances started, {_n(sum(ended.values()))} ended"
    if ended:
        text += " (" + ", ".join(f"{_n(n)} {o}" for o, n in sorted(ended.items())) + ")"
    deviations: dict[str, int] = {}
    for kinds in row.get("steps", {}).values():
        for kind, n in kinds.items():
            if kind != "observed":
                deviations[kind] = deviations.get(kind, 0) + n
    if deviations:
        text += "; deviations: " + ", ".join(f"{_n(n)} {k}" for k, n in sorted(deviations.items()))
    return text


def assess(
    counts: Mapping[Count, int],
    sources: Iterable[SourceInfo],
    *,
    period: str,
    flow: str | None = None,
    thresholds: Thresholds | None = None,
) -> HealthReport:
    """The report over one period's counts (added up); `flow` keeps only that flow and the
    topics its sources read. `period` reads after a number: "in the last hour"."""
    t = thresholds or Thresholds()
    infos = {(s.flow, s.source): s for s in sources if flow is None or s.flow == flow}
    flows, topics = _tables(counts)
    if flow is not None:
        flows = {flow: flows.get(flow, {})}
        wanted = {s.topic for s in infos.values()}
        topics = {k: v for k, v in topics.items() if k in wanted}
    findings: list[Finding] = []
    if not counts:
        message = f"nothing was counted {period}: no observer ran with this key prefix, or it read nothing"
        findings.append(Finding("problem", message))
    for name, row in sorted(flows.items()):
        seen = row.get("sources", {})
        for src in sorted(set(seen) | {s for f, s in infos if f == name}):
            info = infos.get((name, src)) or SourceInfo(name, src, f"source {src}")
            kinds = seen.get(src, {})
            findings += _source_findings(info, kinds, period, t)
            if counts and not any(kinds.get(k) for k in (*ARRIVALS, *_SOURCE_REASONS)):
                message = f"no events from {info.topic} (source {info.source}) {period}"
                findings.append(Finding("note", message, flow=name, source=src, topic=info.topic))
    for topic, row in sorted(topics.items()):
        findings += _topic_findings(topic, row, period, t)
    for name, row in flows.items():
        row["summary"] = _summary(name, row)
    healthy = not any(f.severity == "problem" for f in findings)
    return HealthReport(period, healthy, findings, flows, topics, t.describe())


def render_text(report: HealthReport, header: str) -> str:
    """One screen: the header, a line per flow, its findings, the topics', the thresholds."""
    problems = sum(1 for f in report.findings if f.severity == "problem")
    verdict = (
        "looks healthy"
        if report.healthy
        else f"{problems} thing{'s' if problems != 1 else ''} look wrong"
    )
    lines = [f"{header}: {verdict}", ""]
    general = [f for f in report.findings if f.flow is None and f.topic is None]
    for f in general:
        lines.append(f"  {f.severity}: {f.message}")
    for name, row in sorted(report.flows.items()):
        lines.append(f"{name}: {row['summary']}")
        lines += [f"  {f.severity}: {f.message}" for f in report.findings if f.flow == name]
    topical = [f for f in report.findings if f.flow is None and f.topic is not None]
    if topical:
        lines.append("topics:")
        lines += [f"  {f.severity}: {f.message}" for f in topical]
    lines += ["", f"thresholds: {report.thresholds}"]
    return "\n".join(lines) + "\n"
