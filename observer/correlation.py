"""Correlation health: what became of the events on their way to an instance, as counts.

An operator trusts the correlation when nearly every event finds its instance. Each event read
is counted once by what became of it, per (flow, source); dead letters are counted per topic
and reason; steps per (flow, step) as observed or by deviation kind (what a web console shows
as "observed / missing / late in the last hour"). The runtime keeps these counts per minute
(`runtime/tally.py`, stored by `adapters/redis/tally.py`), exports them as Prometheus metrics,
and `observer health` reads them back (`health_report.py`). Pure: names and a mapping only.

A count is keyed by a 4-tuple `(scope, a, b, c)`:

    ("src",   flow,  source, kind)     kind: one of SOURCE_KINDS
    ("step",  flow,  step,   kind)     kind: "observed" or a deviation kind; step "" for
                                       deviations of no step (sla_breach, orphaned ones)
    ("flow",  flow,  "started", "")    instances started
    ("flow",  flow,  "ended", OUTCOME) instances ended, by outcome
    ("topic", topic, "read", "")       source records read
    ("topic", topic, "ignored", "")    records whose type no flow wants
    ("topic", topic, "dead_letter", REASON)   dead letters, by reason (DEAD_LETTER_REASONS)

For the web console (issue 17) also:

    ("slo",   flow,  RESULT, "")       instances judged against the flow's `slo:`: good / bad
    ("lat",   flow,  step,   BUCKET)   step latencies (event time from the step's anchor), by
                                       bucket: the index in LATENCY_BOUNDS_MS of the first bound
                                       at or above it (len(LATENCY_BOUNDS_MS): above them all)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

__all__ = [
    "ARRIVALS",
    "DEAD_LETTER_REASONS",
    "LATENCY_BOUNDS_MS",
    "SIGNAL_KINDS",
    "SOURCE_KINDS",
    "Count",
    "count_signal",
    "latency_counts",
    "signal_kind",
]

Count = tuple[str, str, str, str]

# What became of an event of a flow's source. An event applied by the tracker is counted once
# in one of ARRIVALS; `orphaned` later counts again one that was `buffered`; the `no_*` ones
# never reached a flow (dead-lettered by the router).
MATCHED = "matched"  # applied to its instance (open, or ended and retained)
STARTED = "started"  # started an instance
BUFFERED = "buffered"  # no instance yet: kept for `buffer`
BUFFER_FULL = "buffer_full"  # no instance yet and the buffer of its key was full: dropped
ORPHANED = "orphaned"  # was buffered; no instance started within `buffer`: dropped, alerted
NO_KEY = "no_key"  # a type the flow wants, but no correlation key
NO_TYPE = "no_type"
NO_TIME = "no_time"  # no event time, or one that cannot be parsed
ALIAS_CONFLICT = "alias_conflict"  # (aliases) registered a value another instance holds
ALIAS_UNKNOWN = "alias_unknown"  # (aliases) came via an alias value nobody registered (yet)

ARRIVALS = (MATCHED, STARTED, BUFFERED, BUFFER_FULL)
SOURCE_KINDS = (*ARRIVALS, ORPHANED, NO_KEY, NO_TYPE, NO_TIME, ALIAS_CONFLICT, ALIAS_UNKNOWN)

# Why a record went to the dead-letter topic (the `observer-error` header says it in full).
DEAD_LETTER_REASONS = {
    "undecodable": "cannot be decoded",
    "schema": "schema registry: unknown, unreadable or refused schema id",
    "no_type": "no event type",
    "no_key": "no correlation key",
    "no_time": "no or bad event time",
    "too_large": "too large (the record once decoded, its key or its event id)",
    "processing": "processing failed",
    "action": "an action could not be carried out",
}

# Engine signals `(what, detail)` that say something about an event's correlation, counted for
# the (flow, source) of the event that caused them; a `recorded` note is matched by the text
# before its first colon ("buffer full: dropped T ID"). A new kind is one line here (and its
# name in SOURCE_KINDS above), e.g. once aliases land:
#     ("deviation", "alias_conflict"): ALIAS_CONFLICT,
#     ("recorded", "via alias not registered"): ALIAS_UNKNOWN,
SIGNAL_KINDS: dict[tuple[str, str], str] = {
    ("deviation", "orphaned"): ORPHANED,
    ("recorded", "buffer full"): BUFFER_FULL,
    ("deviation", "alias_conflict"): ALIAS_CONFLICT,
}


def signal_kind(what: str, detail: str) -> str | None:
    """The correlation kind a signal counts as, or None."""
    kind = SIGNAL_KINDS.get((what, detail))
    if kind is None and what == "recorded":
        kind = SIGNAL_KINDS.get((what, detail.partition(":")[0]))
    return kind


def count_signal(
    tally: dict[Count, int],
    what: str,
    flow: str,
    step: str | None,
    detail: str,
    source: str | None,
    orphans: list[str] | None,
) -> None:
    """Count an engine signal for its flow or step, and for the source of the event it concerns.
    `source`: that event's source (None for timers); `orphans`: the sources of the early events
    the timers dropped, in order (one is taken per orphan signal)."""
    count: Count | None = None
    if what == "started":
        count = ("flow", flow, "started", "")
    elif what == "ended":
        count = ("flow", flow, "ended", detail)
    elif what == "deviation":
        count = ("step", flow, step or "", detail)
    elif what == "slo":  # web console: the SLO's good / bad per minute
        count = ("slo", flow, detail, "")
    elif what != "recorded":
        return
    if count is not None:
        tally[count] = tally.get(count, 0) + 1
    kind = signal_kind(what, detail)
    if kind is not None:
        src = source if source is not None else (orphans.pop(0) if orphans else "")
        count = ("src", flow, src, kind)
        tally[count] = tally.get(count, 0) + 1


# Step latency buckets (ms) the console's p50 / p99 are estimated from: the bounds of the
# `observer_step_latency_seconds` histogram, so a quantile is off by at most a bucket.
LATENCY_BOUNDS_MS = (
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
    900_000, 1_800_000, 3_600_000, 14_400_000, 86_400_000,
)  # fmt: skip


def latency_counts(latencies: Iterable[tuple[str, str, int]]) -> dict[Count, int]:
    """Step latencies (flow, step, ms) as counts per bucket (`("lat", flow, step, bucket)`)."""
    out: dict[Count, int] = {}
    bounds, names, get = LATENCY_BOUNDS_MS, _BUCKET_NAMES, out.get
    for flow, step, ms in latencies:
        count = ("lat", flow, step, names[bisect_left(bounds, ms)])
        out[count] = get(count, 0) + 1
    return out


_BUCKET_NAMES = tuple(str(i) for i in range(len(LATENCY_BOUNDS_MS) + 1))
