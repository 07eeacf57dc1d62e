"""What the demo expects comes from the engine, not from a reading of the flow of its own: it is
exactly `observer replay` over the run's timeline; and the verdict catches an observer that
does otherwise (an alert missing, a false alarm, another outcome) and a flow that lets a
fault through."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from demo.binding import FlowBinding, bind
from demo.faults import DEFAULT_RATES, Fault
from demo.offline import run_offline
from demo.records import Published, RecordReader
from demo.shop import CHECKOUT
from demo.summary import judge
from observer.cli import main as observer_cli
from observer.timefmt import format_time
from observer.topics import Topics

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_FLOW = REPO / "flows" / "checkout.yaml"


@pytest.fixture(scope="module")
def binding() -> FlowBinding:
    return bind(CHECKOUT_FLOW, CHECKOUT)


def test_the_prediction_is_observer_replay_over_the_timeline(
    binding: FlowBinding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OBSERVER_ALERTS_TOPIC", "OBSERVER_OUTCOMES_TOPIC", "OBSERVER_DLQ_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    timeline = io.StringIO()
    tally = run_offline(
        binding, seed=3, rates=DEFAULT_RATES, orders=20, rate=2.0, timeline=timeline
    )
    events = tmp_path / "timeline.jsonl"
    events.write_text(timeline.getvalue())
    until = tally.expected.until_ms
    assert until is not None
    done = CliRunner().invoke(
        observer_cli,
        ["replay", str(CHECKOUT_FLOW), "--events", str(events), "--until", format_time(until)],
    )
    assert done.exit_code == 0, done.output
    reader = RecordReader(Topics(), binding.command_topics)
    replayed: dict[str, Published] = {}
    for line in done.stdout.splitlines():
        rec = orjson.loads(line)
        read = reader.read(rec["topic"], rec["key"], rec["value"], rec["headers"])
        if read is not None:
            replayed.setdefault(read.key, Published()).add(read)
    assert set(replayed) == set(tally.orders)
    for key in tally.orders:
        assert replayed[key] == tally.expected.of(key), key
    # ... and it is what the observer did: every order ended as the engine said
    assert tally.summary().ok


def test_an_observer_that_does_otherwise_is_not_as_expected(binding: FlowBinding) -> None:
    tally = run_offline(binding, seed=7, rates=DEFAULT_RATES, orders=20, rate=2.0)
    assert tally.summary().ok
    tracks = list(tally.orders.values())
    slow = next(t for t in tracks if t.plan.fault is Fault.SLOW_PAYMENT)
    clean = next(t for t in tracks if t.plan.fault is None)
    failed = next(t for t in tracks if t.plan.fault is Fault.PAYMENT_FAILURE)
    slow.observed.alerts.remove(("late", "paid"))  # an alert the engine raises, never published
    clean.observed.alerts.append(("warning", "paid"))  # a false alarm
    failed.observed.outcome = "completed"  # another outcome

    summary = tally.summary()
    by = {r.fault: r for r in summary.results}
    assert not summary.ok and not summary.all_detected
    assert (by[Fault.SLOW_PAYMENT].detected, by[Fault.SLOW_PAYMENT].as_expected) == (1, 1)
    assert (by[None].false_alarms, by[None].as_expected) == (1, 9)
    assert (by[Fault.PAYMENT_FAILURE].outcome_ok, by[Fault.PAYMENT_FAILURE].as_expected) == (1, 1)
    (miss,) = by[Fault.SLOW_PAYMENT].misses
    assert miss.startswith(f"{slow.key} [slow payment")
    assert ": not published: late at paid (published: warning, missing at paid -> " in miss
    assert "; the engine: warning, missing, late at paid -> " in miss
    assert ": not expected: warning at paid (" in by[None].misses[0]
    assert ": outcome completed, expected compensated (" in by[Fault.PAYMENT_FAILURE].misses[0]


def test_a_fault_the_flow_does_not_catch_is_not_detected(tmp_path: Path) -> None:
    # no window on transport_booked and no SLA: a lost TransportBooked goes unnoticed; the
    # engine raises nothing, the order never ends, and the summary says so
    text = CHECKOUT_FLOW.read_text()
    window = (
        "    within: 15s                       # anchor: packed\n    if_missing: [book_transport]\n"
    )
    sla = "sla:\n  within: 90s\n  warn: 1m\n  if_warning: [checkout_slow]\n  if_breached: [checkout_breached, page_oncall]\n"
    assert window in text and sla in text
    flow = tmp_path / "checkout.yaml"
    flow.write_text(text.replace(window, "").replace(sla, ""))
    lax = bind(flow, CHECKOUT)
    tally = run_offline(lax, seed=7, rates={Fault.LOST_EVENT: 1.0}, orders=2, rate=2.0)
    summary = tally.summary()
    (lost,) = summary.results
    assert (lost.fault, lost.injected, lost.detected, lost.as_expected) == (
        Fault.LOST_EVENT,
        2,
        0,
        0,
    )
    assert lost.meaning == "no alert -> no outcome yet"
    assert ": the flow raises no alert for this fault; outcome (none yet)" in lost.misses[0]
    assert not summary.ok and not summary.all_detected


@pytest.mark.parametrize(
    ("fault", "observed", "expected", "verdict"),
    [
        # (detected, outcome_ok, false_alarms, as_expected)
        (None, ([], "completed"), ([], "completed"), (True, True, 0, True)),
        (
            Fault.DUPLICATE,
            ([("late", "paid")], "completed"),
            ([], "completed"),
            (False, True, 1, False),
        ),
        # the engine itself raises an alert on a clean order: a false alarm all the same
        (
            None,
            ([("warning", "paid")], "completed"),
            ([("warning", "paid")], "completed"),
            (False, True, 1, False),
        ),
        (
            Fault.LOST_EVENT,
            ([("missing", "t")], "completed"),
            ([("missing", "t")], "completed"),
            (True, True, 0, True),
        ),
        (
            Fault.LOST_EVENT,
            ([], "completed"),
            ([("missing", "t")], "completed"),
            (False, True, 0, False),
        ),
        (
            Fault.LOST_EVENT,
            ([("missing", "t"), ("missing", "t")], "completed"),
            ([("missing", "t")], "completed"),
            (True, True, 1, False),
        ),
        # a fault that needs an alert, and the engine raises none: not detected
        (Fault.SLOW_PAYMENT, ([], "completed"), ([], "completed"), (False, True, 0, False)),
        (
            Fault.PAYMENT_FAILURE,
            ([("error", None)], None),
            ([("error", None)], "compensated"),
            (True, False, 0, False),
        ),
    ],
)
def test_judge(
    fault: Fault | None,
    observed: tuple[list[tuple[str, str | None]], str | None],
    expected: tuple[list[tuple[str, str | None]], str | None],
    verdict: tuple[bool, bool, int, bool],
) -> None:
    got = judge(
        fault,
        Published(list(observed[0]), [], observed[1]),
        Published(list(expected[0]), [], expected[1]),
    )
    assert (got.detected, got.outcome_ok, got.false_alarms, got.as_expected) == verdict


def test_published_in_words() -> None:
    assert Published().describe() == "no alert -> no outcome yet"
    p = Published(
        [("missing", "a"), ("late", "a"), ("error", None), ("sla_warning", None)],
        ["Fix", "Undo"],
        "compensated",
    )
    assert p.describe() == "missing, late at a; error, sla_warning -> Fix, Undo -> compensated"
    assert Published([("late", "a")], ["X"], "c").same_as(Published([("late", "a")], ["X"], "c"))
    assert not Published([("late", "a")], [], "c").same_as(Published([], [], "c"))
