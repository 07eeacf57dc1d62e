"""Fuzzed event decoding against one real `observer run` process.

A few thousand records -- random bytes, random JSON, events with wrong-typed or missing type,
key and time fields, byte-level mutations of valid events (bit flips, deleted, inserted and
replaced bytes, truncation, splices), escape tricks (lone surrogates, invalid and overlong
UTF-8, control characters, NaN/Infinity, numbers out of range, a BOM), deep nesting, null and
empty keys and values, odd headers -- are generated with hypothesis (derandomized, generate
phase only, so every run of the same code produces the same records: hypothesis also draws
constants it finds in the project's modules, so a change elsewhere changes the draws),
interleaved with valid events, and produced to a source topic of several partitions. One
`observer run` reads them all.

Which records are bad is decided here, by a small oracle written from the contract
(docs/flow-language.md, "Bad input" and "Dead letters") and not by calling observer code. The
test then checks that the process is alive and healthy, that every bad record is in the
dead-letter topic exactly once with its key, value and headers unchanged plus the observer's
headers, that no good record is, that the observer's own counts of applied / ignored /
dead-lettered records match the oracle's, and that the valid events were applied (their
instances completed with the expected step times, and `/instances` shows them). Every value of
the edge-case menus is also sent once in an otherwise valid event, so none depends on the
random draws.

Event times out of range (beyond 64 bits, or outside years 1..9000) once crashed the observer
or poisoned their key; the last test sends them on purpose. Runs in about 20-30 s.

The parts, in tests/e2e/fuzz/: `oracle` (what must be dead-lettered, applied or ignored),
`strategies` and `records` (what is sent), `harness` (the `run_observer` fixture: one process
over the records, read back once it has processed, committed and published everything).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.fuzz.harness import Run, metric, run_observer
from tests.e2e.fuzz.oracle import ORDER_TYPES, oracle
from tests.e2e.fuzz.records import (
    FUZZ_EXAMPLES,
    PARTITIONS,
    Rec,
    edge_cases,
    generate,
    interleave,
    valid_events,
)
from tests.e2e.fuzz.strategies import T0
from tests.integration.kafka_helpers import Record

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

__all__ = ["run_observer"]  # the fixture

OBSERVER_HEADERS = (
    "observer-error",
    "observer-source-topic",
    "observer-source-partition",
    "observer-source-offset",
)


def _shown(ms: int) -> str:
    """How the observer renders a time: ISO-8601 UTC, milliseconds only when not zero."""
    text = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def _show(rec: Rec) -> str:
    return (
        f"{rec.kind} p{rec.partition}@{rec.offset} key={rec.key!r:.40} "
        f"value={rec.value!r:.160} headers={rec.headers!r:.100} oracle={rec.verdict}"
    )


def check(run: Run, recs: list[Rec], expected: dict[str, dict[str, int]]) -> None:
    check_dead_letters(run.source, recs, run.dlq)
    check_counts(run.source, recs, run.metrics)
    check_valid_applied(expected, run.outcomes, run.views)
    assert "Traceback" not in run.log, run.log[-20_000:]


# -- the tests ------------------------------------------------------------------------------------


def test_fuzzed_records_never_crash_the_observer_and_every_bad_one_is_dead_lettered_once(
    run_observer: Callable[[list[Rec], list[str]], Run], figures: list[str]
) -> None:
    fuzz = generate(FUZZ_EXAMPLES) + edge_cases()
    valid, expected = valid_events()
    recs = interleave(fuzz, valid)
    for rec in recs:
        rec.verdict = oracle(rec.key, rec.value)
    assert all(r.verdict.outcome == "applied" for r in valid)
    by_outcome = Counter(r.verdict.outcome for r in recs)
    # The generator must keep producing every class (a change of it that stops doing so would
    # silently weaken the test).
    assert by_outcome["dead_letter"] >= 1000 and by_outcome["applied"] >= 600, by_outcome
    assert by_outcome["ignored"] >= 100, by_outcome

    views = list(expected)[:: max(len(expected) // 10, 1)]
    run = run_observer(recs, views)
    figures.append(
        f"{len(recs)} records ({dict(by_outcome)}) on {PARTITIONS} partitions; "
        f"{len(run.dlq)} dead letters; read, applied and published in {run.seconds:.1f}s"
    )
    check(run, recs, expected)


def _order(key: str, etype: str, at: Any) -> bytes:
    return orjson.dumps({"type": etype, "order_id": key, "occurred_at": at})


def test_an_event_time_out_of_range_is_bad_input_and_harms_no_instance(
    run_observer: Callable[[list[Rec], list[str]], Run],
) -> None:
    recs: list[Rec] = []
    expected: dict[str, dict[str, int]] = {}
    for i, at in enumerate([10**15, -(10**15), 1e300, "9" * 20, 2**63]):
        key = f"oor-{i}"
        recs.append(Rec("out-of-range", None, _order(key, "OrderPlaced", at), [], i % PARTITIONS))
        times = {"placed": T0, "paid": T0 + 1000, "shipped": T0 + 2000}
        expected[f"fuzz-orders/{key}"] = times
        for (_, ms), etype in zip(times.items(), ORDER_TYPES, strict=True):
            recs.append(Rec("ok", None, _order(key, etype, ms), [], i % PARTITIONS))
    for rec in recs:
        rec.verdict = oracle(rec.key, rec.value)
    assert [r.verdict.outcome for r in recs[::4]] == ["dead_letter"] * 5
    check(run_observer(recs, list(expected)), recs, expected)


def check_dead_letters(source: str, recs: list[Rec], dlq: list[Record]) -> None:
    by_src: dict[tuple[str, int, int], list[Record]] = {}
    for d in dlq:
        where = (
            (d.header("observer-source-topic") or b"").decode(),
            int(d.header("observer-source-partition") or -1),
            int(d.header("observer-source-offset") or -1),
        )
        by_src.setdefault(where, []).append(d)
    problems: list[str] = []
    dups = {w: len(ds) for w, ds in by_src.items() if len(ds) > 1}
    if dups:
        problems.append(f"{len(dups)} records dead-lettered more than once: {list(dups)[:10]}")
    known = {(source, r.partition, r.offset): r for r in recs}
    strangers = [w for w in by_src if w not in known]
    if strangers:
        problems.append(f"dead letters of records never produced: {strangers[:10]}")
    missed = [
        r
        for r in recs
        if r.verdict.outcome == "dead_letter" and not by_src.get((source, r.partition, r.offset))
    ]
    wrongly = [
        r
        for r in recs
        if r.verdict.outcome != "dead_letter" and by_src.get((source, r.partition, r.offset))
    ]
    for r in missed[:15]:
        problems.append(f"bad record not dead-lettered: {_show(r)}")
    for r in wrongly[:15]:
        d = by_src[(source, r.partition, r.offset)][0]
        problems.append(f"good record dead-lettered ({d.header('observer-error')!r}): {_show(r)}")
    altered = []
    for r in recs:
        for d in by_src.get((source, r.partition, r.offset), [])[:1]:
            orig = tuple(r.headers)
            added = dict(d.headers[len(orig) :])
            if (
                d.key != r.key
                or d.value != r.value
                or d.headers[: len(orig)] != orig
                or not set(OBSERVER_HEADERS) <= set(added)
                or not (added.get("observer-error") or b"").strip()
            ):
                altered.append(
                    f"{_show(r)}\n    dead letter: key={d.key!r:.40} value={d.value!r:.120} "
                    f"headers={d.headers!r:.300}"
                )
    if altered:
        problems.append(f"{len(altered)} dead letters not the original record plus headers:")
        problems.extend(altered[:10])
    summary = (
        f"{len(recs)} records: {Counter(r.verdict.outcome for r in recs)}; "
        f"{len(dlq)} dead letters; {len(missed)} bad ones missing, {len(wrongly)} good ones "
        "dead-lettered"
    )
    assert not problems, summary + "\n" + "\n".join(problems)


def check_counts(source: str, recs: list[Rec], metrics: str) -> None:
    want = Counter(r.verdict.outcome for r in recs)
    got = {
        o: metric(metrics, "observer_events_total", topic=source, outcome=o)
        for o in ("applied", "ignored", "dead_letter")
    }
    assert got == {o: float(want[o]) for o in got}, (got, want)
    assert metric(metrics, "observer_dead_letters_total", topic=source) == want["dead_letter"]
    for where in ("decode", "apply", "timer"):
        assert metric(metrics, "observer_processing_errors_total", where=where) == 0, where


def check_valid_applied(
    expected: dict[str, dict[str, int]], outcomes: list[Record], views: dict[str, httpx.Response]
) -> None:
    ended: dict[str, list[Any]] = {}
    for o in outcomes:
        js = orjson.loads(o.value or b"null")
        ended.setdefault(f"{js['flow']}/{js['key']}", []).append(js)
    for name, times in expected.items():
        got = ended.get(name)
        assert got, f"{name}: no outcome"
        assert len({orjson.dumps(g) for g in got}) == 1, got  # repeats are the same record
        out = got[0]
        assert out["outcome"] == "completed" and out["deviations"] == [], out
        if times:
            assert out["steps"] == {step: _shown(ms) for step, ms in times.items()}, out
    for name, resp in views.items():
        assert resp.status_code == 200, (name, resp.text)
        view = resp.json()
        assert (view["state"], view["outcome"]) == ("ended", "completed"), view
