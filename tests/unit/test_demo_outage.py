"""`--outage`: a service of the shop down for a while (the window, what the shop does then),
the guarded copy of the flow, and a whole run on a virtual clock: incidents opened and resolved
as the engine says, the actions of the orders the outage hit held (not published), and the
expectation still exactly `observer replay` over the run's timeline, held lines included."""

from __future__ import annotations

import io
import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from rich.console import Console

from demo.binding import FlowBinding, bind
from demo.faults import Fault, FaultPlanner
from demo.live import LiveView
from demo.offline import run_offline
from demo.outage import DEFAULT_OFFSET_MS, Outage, OutageWindow, guard_flow, parse_outage
from demo.records import Published, RecordReader
from demo.shop import CHECKOUT, Shop
from demo.simulator import Simulation
from demo.view import Status, format_entry, format_summary
from demo.wire import DemoError
from observer.cli import main as observer_cli
from observer.timefmt import format_time
from observer.topics import Topics

from .test_demo_offline import header

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_FLOW = REPO / "flows" / "checkout.yaml"
SERVICES = tuple(s.name for s in CHECKOUT.services if s.after)
T0 = 1_767_225_600_000
NO_FAULTS = dict.fromkeys(Fault, 0.0)
# 10 orders at 3/s, payments down from 1 s to 19 s: 8 orders reach it meanwhile, the first
# of them miss their `paid` deadline (15 s) before it is back
OUTAGE = Outage("payments", 18_000, 1_000)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> FlowBinding:
    run_dir = tmp_path_factory.mktemp("run")
    path, note = guard_flow(str(CHECKOUT_FLOW), bind(CHECKOUT_FLOW, CHECKOUT).spec, run_dir)
    assert Path(path).parent == run_dir and "has no guardrails" in note
    return bind(path, CHECKOUT)


@pytest.mark.parametrize(
    ("text", "outage"),
    [
        ("payments:30s", Outage("payments", 30_000, DEFAULT_OFFSET_MS)),
        ("payments:30s@5s", Outage("payments", 30_000, 5_000)),
        ("payments:1.5m@0", Outage("payments", 90_000, 0)),
        ("warehouse:800ms@2", Outage("warehouse", 800, 2_000)),
    ],
)
def test_parse_outage(text: str, outage: Outage) -> None:
    assert parse_outage(text, SERVICES) == outage


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("payments", "SERVICE:DURATION"),
        ("bank:30s", "no service 'bank' (one of: inventory"),
        ("shop:30s", "no service 'shop'"),  # the shop front: no orders at all
        ("payments:soon", "'soon' is not a duration"),
        ("payments:0s", "more than 0"),
        ("payments:30s@later", "offset 'later'"),
    ],
)
def test_a_bad_outage_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(DemoError, match=re.escape(says)):
        parse_outage(text, SERVICES)


def test_the_window() -> None:
    w = OUTAGE.window(T0)
    assert w == OutageWindow("payments", T0 + 1_000, T0 + 19_000)
    assert not w.holds("payments", T0 + 999) and w.holds("payments", T0 + 1_000)
    assert w.holds("payments", T0 + 18_999) and not w.holds("payments", T0 + 19_000)
    assert not w.holds("inventory", T0 + 5_000)


def test_what_reaches_the_service_while_down_is_never_done() -> None:
    shop = Shop(CHECKOUT, FaultPlanner(7, {}), "t", 18_000, outage=OUTAGE.window(T0))
    sim = Simulation(shop, rate=3.0, orders=10, start_ms=T0)
    happened = []
    for now in range(T0, T0 + 40_000, 10):
        happened += sim.advance(now)
    stalled = {h.order_id: h.at_ms for h in happened if h.kind == "stalled"}
    paid = {
        h.order_id
        for h in happened
        if h.kind == "published" and h.event is not None and h.event.type == "PaymentCaptured"
    }
    # 8 orders reached payments while it was down: no payment, nothing after it either
    assert len(stalled) == 8 and all(T0 + 1_000 <= at < T0 + 19_000 for at in stalled.values())
    assert paid == {f"t-{n:04d}" for n in range(1, 11)} - set(stalled)
    packed = {h.order_id for h in happened if h.event is not None and h.event.type == "OrderPacked"}
    assert packed == paid
    # the other services go on meanwhile: every order was reserved, quoted and taxed at once
    reserved = [h for h in happened if h.event is not None and h.event.type == "StockReserved"]
    assert len(reserved) == 10 and all(h.at_ms < T0 + 5_000 for h in reserved)
    assert sim.idle()
    # a command to the service while it is down is lost; once it is back, answered
    key = next(iter(stalled))
    assert sim.on_command("RefundPayment", key, T0 + 10_000) is None
    answered = sim.on_command("RefundPayment", key, T0 + 20_000)
    assert answered is not None and answered.kind == "answered"


def test_the_guarded_copy_adds_guardrails_and_nothing_else(guarded: FlowBinding) -> None:
    plain = bind(CHECKOUT_FLOW, CHECKOUT)
    rails = guarded.flow.guardrails
    assert (rails.threshold, rails.within_ms) == (5, 5_000)
    assert plain.spec.guardrails is None and guarded.spec.guardrails is not None
    assert guarded.spec.steps == plain.spec.steps and guarded.spec.actions == plain.spec.actions
    # a flow with guardrails of its own (here: the copy) runs as it is
    again, note = guard_flow("copy.yaml", guarded.spec, Path("/nonexistent"))
    assert again == "copy.yaml" and "guardrails of its own" in note


def test_several_documents_are_refused(tmp_path: Path) -> None:
    from demo.outage import guarded_flow_text

    spec = bind(CHECKOUT_FLOW, CHECKOUT).spec
    with pytest.raises(DemoError, match="several YAML documents"):
        guarded_flow_text("flow: a\n---\nflow: b\n", spec, "two.yaml")


def test_an_outage_opens_incidents_and_holds_actions_as_the_engine_says(
    guarded: FlowBinding,
) -> None:
    tally = run_offline(guarded, seed=7, rates=NO_FAULTS, orders=10, rate=3.0, outage=OUTAGE)
    summary = tally.summary()
    assert summary.ok, format_summary(summary, header(), 0)
    assert summary.incidents_ok and summary.incidents == summary.incidents_expected
    kinds = {(i.kind, i.deviation, i.step) for i in summary.incidents}
    assert ("incident", "missing", "paid") in kinds
    assert ("incident_resolved", "missing", "paid") in kinds
    assert summary.held == summary.held_expected > 0
    by = {r.fault: r for r in summary.results}
    assert by[Fault.OUTAGE].injected == by[Fault.OUTAGE].as_expected == 8
    assert summary.outage_hit == 8 and summary.faults_injected == 0
    for t in tally.orders.values():
        if t.observed.held:  # held, hence not published: the shop never cancelled it
            assert "cancel_order" in t.observed.held and "CancelOrder" not in t.observed.commands
            assert t.observed.outcome is None
    # the first threshold - 1 `missing` at `paid` are published, the next opens the incident
    # and is the last one: one record instead of an alert per order
    missing_paid = [
        a for t in tally.orders.values() for a in t.observed.alerts if a == ("missing", "paid")
    ]
    assert len(missing_paid) == guarded.flow.guardrails.threshold - 1
    text = format_summary(summary, header(), 0)
    assert "incidents:       warning at paid opened (5)" in text
    assert f"held actions:    {summary.held} held by the observer" in text
    assert any(format_entry(e).split()[1] == "INCIDENT" for e in tally.entries)


def test_the_expectation_is_observer_replay_with_held_lines(
    guarded: FlowBinding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OBSERVER_ALERTS_TOPIC", "OBSERVER_OUTCOMES_TOPIC", "OBSERVER_DLQ_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    timeline = io.StringIO()
    tally = run_offline(
        guarded, seed=7, rates=NO_FAULTS, orders=10, rate=3.0, outage=OUTAGE, timeline=timeline
    )
    events = tmp_path / "timeline.jsonl"
    events.write_text(timeline.getvalue())
    until = tally.expected.until_ms
    assert until is not None
    flow = _flow_path(tmp_path)
    done = CliRunner().invoke(
        observer_cli, ["replay", flow, "--events", str(events), "--until", format_time(until)]
    )
    assert done.exit_code == 0, done.output
    reader = RecordReader(Topics(), guarded.command_topics)
    replayed: dict[str, Published] = {}
    incidents = 0
    for line in done.stdout.splitlines():
        rec = orjson.loads(line)
        if rec.get("held"):
            replayed.setdefault(rec["key"], Published()).held.append(_action(rec))
            continue
        if rec["value"] and rec["value"].get("kind") in ("incident", "incident_resolved"):
            incidents += 1
            continue
        read = reader.read(rec["topic"], rec["key"], rec["value"], rec["headers"])
        if read is not None:
            replayed.setdefault(read.key, Published()).add(read)
    assert incidents == len(tally.expected.incidents.records) > 0
    for key in tally.orders:
        mine = tally.expected.of(key)
        theirs = replayed.get(key, Published())
        assert (theirs.alerts, theirs.commands, theirs.outcome) == (
            mine.alerts,
            mine.commands,
            mine.outcome,
        ), key
        assert len(theirs.held) == len(mine.held), key


def _flow_path(tmp_path: Path) -> str:
    path, _ = guard_flow(str(CHECKOUT_FLOW), bind(CHECKOUT_FLOW, CHECKOUT).spec, tmp_path)
    return path


def _action(rec: dict[str, object]) -> str:
    """A held line's action, by its command type or webhook (replay prints no action name)."""
    value = rec.get("value")
    if rec.get("webhook"):
        return "webhook"
    return str(value.get("type")) if isinstance(value, dict) else "?"


def test_the_live_view_shows_incidents_and_held_actions(guarded: FlowBinding) -> None:
    tally = run_offline(guarded, seed=7, rates=NO_FAULTS, orders=10, rate=3.0, outage=OUTAGE)
    console = Console(file=io.StringIO(), width=140, height=50, record=True)
    view = LiveView(console)
    console.print(view._render(tally, Status("payments DOWN", 10, 20.0), header()))
    text = console.export_text()
    assert "incident" in text and "actions held" in text and "(the flow)" in text
