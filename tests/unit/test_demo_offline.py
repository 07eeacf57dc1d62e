"""The simulated shop against the observer's engine on a virtual clock: each injected fault is
detected the way the flow says, clean orders complete silently, and a seed replays exactly.
Also: what `bind` checks in the flow, and what the views print. (What the demo expects, and
how it judges, is in test_demo_expected.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from demo.binding import FlowBinding, bind
from demo.faults import DEFAULT_RATES, PLANNED, Fault
from demo.live import LiveView
from demo.offline import run_offline
from demo.shop import CHECKOUT
from demo.view import Header, Status, format_entry, format_summary
from demo.wire import DemoError

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_FLOW = REPO / "flows" / "checkout.yaml"


def header() -> Header:
    return Header(
        "checkout",
        1,
        "sim",
        7,
        2.0,
        20,
        None,
        "in-process",
        "-",
        "-",
        "http://x/instances/checkout/{key}",
    )


@pytest.fixture(scope="module")
def binding() -> FlowBinding:
    return bind(CHECKOUT_FLOW, CHECKOUT)


def test_twenty_orders_with_seed_7_every_fault_detected(binding: FlowBinding) -> None:
    tally = run_offline(binding, seed=7, rates=DEFAULT_RATES, orders=20, rate=2.0)
    summary = tally.summary()
    assert summary.ok, format_summary(summary, header(), 0)
    by = {r.fault: r for r in summary.results}
    assert {f: by[f].injected for f in PLANNED} == dict.fromkeys(PLANNED, 2)
    assert by[None].outcomes == {"completed": 10}
    assert by[Fault.PAYMENT_FAILURE].outcomes == {"compensated": 2}
    assert by[Fault.SLOW_PAYMENT].outcomes == {"cancelled": 2}
    assert by[Fault.LOST_EVENT].outcomes == {"completed": 2}  # BookTransport brought it back
    assert by[Fault.SLOW_PAYMENT].meaning == (
        "warning, missing, late at paid -> ReleaseStock, CancelOrder -> cancelled"
    )
    assert by[Fault.DUPLICATE].meaning == "no alert -> completed"


@pytest.mark.parametrize(
    ("fault", "alerts", "commands", "outcome"),
    [
        (None, [], [], "completed"),
        (Fault.DUPLICATE, [], [], "completed"),
        (Fault.OUT_OF_ORDER, [], [], "completed"),
        (
            Fault.SLOW_PAYMENT,
            [("warning", "paid"), ("missing", "paid"), ("late", "paid")],
            ["ReleaseStock", "CancelOrder"],
            "cancelled",
        ),
        (
            Fault.LOST_EVENT,
            [("missing", "transport_booked"), ("late", "transport_booked")],
            ["BookTransport"],
            "completed",
        ),
        (
            Fault.PAYMENT_FAILURE,
            [("error", None)],
            ["ReleaseStock", "RefundPayment"],
            "compensated",
        ),
    ],
)
def test_what_the_observer_does_about_each_fault(
    binding: FlowBinding,
    fault: Fault | None,
    alerts: list[tuple[str, str | None]],
    commands: list[str],
    outcome: str,
) -> None:
    rates = {fault: 1.0} if fault is not None else {}
    tally = run_offline(binding, seed=11, rates=rates, orders=3, rate=1.0)
    assert len(tally.orders) == 3
    for track in tally.orders.values():
        assert track.plan.fault is fault
        assert track.observed.alerts == alerts, tally.describe(track)
        assert sorted(track.observed.commands) == sorted(commands), tally.describe(track)
        assert track.observed.outcome == outcome, tally.describe(track)
        assert tally.expected.of(track.key).same_as(track.observed), tally.describe(track)
        assert tally.as_expected(track)


def test_a_seed_replays_the_same_run(binding: FlowBinding) -> None:
    def lines(seed: int) -> list[str]:
        tally = run_offline(binding, seed=seed, rates=DEFAULT_RATES, orders=20, rate=3.0)
        return [format_entry(e) for e in tally.entries]

    assert lines(5) == lines(5)
    assert lines(5) != lines(6)


def test_bind_fits_the_shop_to_the_flow(binding: FlowBinding) -> None:
    assert binding.flow.name == "checkout"
    assert set(binding.command_topics) >= {
        "inventory.commands",
        "payments.commands",
        "shop.commands",
    }
    paid = binding.flow.step_named("paid").within_ms
    assert paid is not None and binding.late_ms > paid
    assert binding.main_steps[0] == "placed"
    assert binding.settle_ms > paid


def test_bind_says_which_step_no_service_announces(tmp_path: Path) -> None:
    text = CHECKOUT_FLOW.read_text().replace(
        "on: warehouse.OrderPacked", "on: warehouse.OrderWrapped"
    )
    flow = tmp_path / "checkout.yaml"
    flow.write_text(text)
    with pytest.raises(DemoError, match=r"step 'packed' expects warehouse\.OrderWrapped"):
        bind(flow, CHECKOUT)


def test_bind_reports_an_invalid_flow(tmp_path: Path) -> None:
    flow = tmp_path / "bad.yaml"
    flow.write_text("flow: checkout\nversion: 0\n")
    with pytest.raises(DemoError, match="not a valid flow"):
        bind(flow, CHECKOUT)


def test_plain_lines_and_summary_name_the_injected_fault(binding: FlowBinding) -> None:
    tally = run_offline(binding, seed=7, rates=DEFAULT_RATES, orders=20, rate=2.0)
    alert = next(e for e in tally.entries if e.category == "alert" and e.what == "missing")
    line = format_entry(alert)
    assert " ALERT " in line and alert.key in line and "[injected: " in line
    text = format_summary(tally.summary(), header(), 30)
    assert "slow payment" in text and "2/2" in text
    assert text.splitlines()[-1].startswith("RESULT: every injected fault was detected")


def test_the_live_view_renders_mid_run(binding: FlowBinding) -> None:
    tally = run_offline(
        binding, seed=7, rates=DEFAULT_RATES, orders=40, rate=3.0, stop_after_ms=12_000
    )
    assert tally.in_flight()
    console = Console(file=io.StringIO(), width=120, height=40, record=True)
    view = LiveView(console)
    for e in tally.entries:
        view.show(e)
    console.print(view._render(tally, Status("placing orders", 36, 12.0), header()))
    text = console.export_text()
    for part in (
        "orders in flight",
        "deviations",
        "commands the observer published",
        "faults caught",
    ):
        assert part in text
