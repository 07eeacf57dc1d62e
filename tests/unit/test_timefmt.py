"""Event times: what is read, and what is out of range (bad input, not a crash later)."""

from __future__ import annotations

from pathlib import Path

import pytest

from observer.flows.compiler import load_registry
from observer.ingest import Ingest, SourceRecord
from observer.timefmt import MAX_TIME_MS, MIN_TIME_MS, format_time, parse_time
from observer.topics import Topics


def test_epoch_ms_and_iso_8601_are_read() -> None:
    assert parse_time(1_767_225_600_000) == parse_time("2026-01-01T00:00:00Z")
    assert parse_time("1767225600000") == parse_time("2026-01-01T01:00:00+01:00")
    assert format_time(MAX_TIME_MS - 1) == "8999-12-31T23:59:59.999Z"
    assert format_time(MIN_TIME_MS) == "0001-01-01T00:00:00Z"


@pytest.mark.parametrize("raw", ["2026-11-25T00:38:25+00:80", "2026-11-25T00:38:25+0080"])
def test_an_offset_with_more_than_59_minutes_is_not_iso_8601(raw: str) -> None:
    with pytest.raises(ValueError, match="not epoch ms or ISO-8601"):
        parse_time(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "2026-11-25T03:34:00:00",  # a fourth time field (found by the fuzz e2e test)
        "2026-11-25T12:00.702000+00:00",  # minutes with a fraction
        "20261125T033400Z",  # basic format: the extended one only
        "2026-11-25T03",
        "2026-11-25T03:34:00+01:00:00",
    ],
)
def test_only_extended_iso_8601_is_read(raw: str) -> None:
    """Python's `fromisoformat` takes more than ISO-8601; the observer takes what the docs say."""
    with pytest.raises(ValueError, match="not epoch ms or ISO-8601"):
        parse_time(raw)


def test_extended_iso_8601_variants_are_read() -> None:
    t = parse_time("2026-01-01T00:00:00Z")
    assert parse_time("2026-01-01t00:00:00z") == parse_time("2026-01-01 00:00") == t
    assert parse_time("2026-01-01") == t
    assert parse_time("2026-01-01T01:00:00,5+01") == parse_time("2026-01-01T01:00:00.5+0100")
    assert parse_time("2026-01-01T00:00:00.123456789Z") == t + 123


@pytest.mark.parametrize("raw", [10**15, -(10**15), 1e300, "9" * 20, 2**63, MAX_TIME_MS])
def test_times_outside_years_1_to_9000_are_refused(raw: object) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_time(raw)


def test_a_record_with_such_a_time_is_a_dead_letter(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        "flow: f\nversion: 1\nsources:\n  s: {topic: t, type: value.type, key: value.id,"
        " time: value.at}\nsteps:\n  - step: a\n    on: s.A\n"
    )
    ingest = Ingest(load_registry([tmp_path / "f.yaml"]), Topics())
    for at, bad in ((2**63, True), (10**15, True), (1_767_225_600_000, False)):
        value = b'{"type": "A", "id": "k", "at": %d}' % at
        d = ingest.decode(SourceRecord("t", 0, 0, None, value, (), 0))
        assert (d.dead_letter is not None) == bad, at
        assert bool(d.events) != bad
