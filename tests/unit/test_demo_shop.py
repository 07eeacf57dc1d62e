"""The shop's decisions, on a virtual clock: what each order publishes, for a happy order and
for every fault, and how the services answer the observer's commands."""

from __future__ import annotations

from demo.faults import Fault, FaultPlanner
from demo.shop import CHECKOUT, Shop
from demo.simulator import HOLD_GAP_MS, Happening, Simulation
from demo.wire import ShopEvent

T0 = 1_767_225_600_000
LATE_MS = 18_000
MAIN = [
    "OrderPlaced",
    "StockReserved",
    "ShippingQuoted",
    "TaxCalculated",
    "PaymentCaptured",
    "OrderPacked",
    "PurchaseHistoryUpdated",
    "TransportBooked",
    "StockLevelsUpdated",
]


def run_one(
    fault: Fault | None, seed: int = 7, until_ms: int = 60_000
) -> tuple[Simulation, list[Happening]]:
    """One order carrying `fault`, run to `until_ms` after T0 in 10 ms ticks."""
    rates = {fault: 1.0} if fault is not None else {}
    shop = Shop(CHECKOUT, FaultPlanner(seed, rates), "t", LATE_MS)
    sim = Simulation(shop, rate=1.0, orders=1, start_ms=T0)
    out: list[Happening] = []
    for now in range(T0, T0 + until_ms, 10):
        out += sim.advance(now)
    return sim, out


def published(hs: list[Happening]) -> list[ShopEvent]:
    return [h.event for h in hs if h.kind == "published" and h.event is not None]


def by_type(events: list[ShopEvent]) -> dict[str, ShopEvent]:
    return {e.type: e for e in events}


def test_a_happy_order_publishes_every_step_once_in_choreography_order() -> None:
    _, hs = run_one(None)
    events = published(hs)
    assert sorted(e.type for e in events) == sorted(MAIN)
    assert len({e.event_id for e in events}) == len(events)
    t = {e.type: e.time_ms for e in events}
    for service in CHECKOUT.services:
        for before in service.after:  # nobody acts before what it waits for
            assert t[service.emits] >= t[before]
    # reading order is event-time order, and the whole order takes seconds
    assert [e.time_ms for e in events] == sorted(e.time_ms for e in events)
    assert t["TransportBooked"] - t["OrderPlaced"] < 6_000
    assert all(e.order_id == "t-0001" for e in events)


def test_order_data_carries_what_the_flow_captures() -> None:
    _, hs = run_one(None)
    placed = by_type(published(hs))["OrderPlaced"].data
    assert {"total", "currency", "items", "customer"} <= set(placed)
    assert set(placed["customer"]) == {"id", "email"}


def test_the_same_seed_gives_the_same_order_and_another_seed_does_not() -> None:
    a = [(e.type, e.time_ms, e.event_id) for e in published(run_one(None, seed=7)[1])]
    b = [(e.type, e.time_ms, e.event_id) for e in published(run_one(None, seed=7)[1])]
    c = [(e.type, e.time_ms, e.event_id) for e in published(run_one(None, seed=8)[1])]
    assert a == b
    assert a != c


def test_slow_payment_is_captured_a_whole_window_late() -> None:
    _, hs = run_one(Fault.SLOW_PAYMENT)
    t = {e.type: e.time_ms for e in published(hs)}
    last_anchor = max(t["StockReserved"], t["ShippingQuoted"], t["TaxCalculated"])
    assert t["PaymentCaptured"] - last_anchor == LATE_MS


def test_lost_event_never_reaches_kafka_until_the_observer_asks() -> None:
    sim, hs = run_one(Fault.LOST_EVENT)
    lost = [h for h in hs if h.kind == "lost"]
    assert [h.event.type for h in lost if h.event] == ["TransportBooked"]
    assert "TransportBooked" not in by_type(published(hs))
    # the observer's if_missing: BookTransport; the transport service books again
    answered = sim.on_command("BookTransport", "t-0001", T0 + 60_000)
    assert answered is not None and answered.command == "BookTransport"
    again = published(sim.advance(T0 + 61_000))
    assert [e.type for e in again] == ["TransportBooked"]
    assert again[0].event_id != lost[0].event.event_id  # type: ignore[union-attr]


def test_payment_failure_stops_the_checkout_and_compensations_complete() -> None:
    sim, hs = run_one(Fault.PAYMENT_FAILURE)
    types = {e.type for e in published(hs)}
    assert "PaymentFailed" in types
    assert not types & {
        "PaymentCaptured",
        "OrderPacked",
        "TransportBooked",
        "PurchaseHistoryUpdated",
    }
    sim.on_command("ReleaseStock", "t-0001", T0 + 60_000)
    sim.on_command("RefundPayment", "t-0001", T0 + 60_000)
    answers = published(sim.advance(T0 + 62_000))
    assert sorted((e.source, e.type) for e in answers) == [
        ("inventory", "StockReleased"),
        ("payments", "PaymentRefunded"),
    ]


def test_duplicate_publishes_one_event_twice_with_the_same_id() -> None:
    _, hs = run_one(Fault.DUPLICATE)
    copies = [h for h in hs if h.kind == "published" and h.copy == 2]
    assert len(copies) == 1 and copies[0].event is not None
    first = [e for e in published(hs) if e.event_id == copies[0].event.event_id]
    assert len(first) == 2 and first[0] is first[1]
    assert sorted({e.type for e in published(hs)}) == sorted(MAIN)


def test_out_of_order_holds_order_placed_until_the_payment_went_out() -> None:
    _, hs = run_one(Fault.OUT_OF_ORDER)
    pubs = [h for h in hs if h.kind == "published" and h.event is not None]
    order = [h.event.type for h in pubs if h.event]
    assert order.index("OrderPlaced") == order.index("PaymentCaptured") + 1
    placed = next(h for h in pubs if h.event and h.event.type == "OrderPlaced")
    paid = next(h for h in pubs if h.event and h.event.type == "PaymentCaptured")
    assert placed.at_ms == paid.at_ms + HOLD_GAP_MS
    # event times stay true: OrderPlaced happened first, it is only read late
    assert placed.event is not None and placed.event.time_ms == T0
    assert [h.kind for h in hs if h.event and h.event.type == "OrderPlaced"] == [
        "held",
        "published",
    ]


def test_commands_are_answered_once_per_order_and_only_for_our_orders() -> None:
    sim, _ = run_one(Fault.PAYMENT_FAILURE)
    assert sim.on_command("ReleaseStock", "t-0001", T0 + 60_000) is not None
    assert sim.on_command("ReleaseStock", "t-0001", T0 + 60_100) is None
    assert sim.on_command("ReleaseStock", "someone-else", T0 + 60_000) is None
    assert sim.on_command("PaintItBlue", "t-0001", T0 + 60_000) is None


def test_a_cancelled_order_gets_no_further_work_after_its_late_payment() -> None:
    rates = {Fault.SLOW_PAYMENT: 1.0}
    shop = Shop(CHECKOUT, FaultPlanner(7, rates), "t", LATE_MS)
    sim = Simulation(shop, rate=1.0, orders=1, start_ms=T0)
    for now in range(T0, T0 + 15_000, 10):
        sim.advance(now)
    sim.on_command("CancelOrder", "t-0001", T0 + 15_000)
    hs: list[Happening] = []
    for now in range(T0 + 15_000, T0 + 60_000, 10):
        hs += sim.advance(now)
    types = [e.type for e in published(hs)]
    assert types == ["OrderCancelled", "PaymentCaptured"]  # the payment still lands, late


def test_orders_arrive_at_the_rate_and_stop_at_the_limit() -> None:
    shop = Shop(CHECKOUT, FaultPlanner(1, {}), "t", LATE_MS)
    sim = Simulation(shop, rate=4.0, orders=10, start_ms=T0)
    placed = [
        h for now in range(T0, T0 + 10_000, 10) for h in sim.advance(now) if h.kind == "placed"
    ]
    assert len(placed) == 10 and not sim.placing
    span = placed[-1].at_ms - placed[0].at_ms
    assert 9 * 250 * 0.7 <= span <= 9 * 250 * 1.3


def test_the_shop_is_idle_once_nothing_more_will_be_published() -> None:
    # a slow payment keeps the shop busy until the payment is out
    sim, _ = run_one(Fault.SLOW_PAYMENT, until_ms=LATE_MS - 1_000)
    assert not sim.idle()
    sim, hs = run_one(Fault.SLOW_PAYMENT, until_ms=LATE_MS + 8_000)
    assert "PaymentCaptured" in by_type(published(hs)) and sim.idle()
    # a held OrderPlaced let out after the payment leaves its timeout behind: idle all the same
    sim, hs = run_one(Fault.OUT_OF_ORDER, until_ms=10_000)
    assert "OrderPlaced" in by_type(published(hs))
    assert sim.next_due() is not None and sim.idle()
    # an answer to a command is work too
    sim.on_command("ReleaseStock", "t-0001", T0 + 10_000)
    assert not sim.idle()
