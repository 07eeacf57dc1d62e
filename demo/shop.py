"""The checkout shop: eight services reacting to each other's events and to the observer's
commands, with faults injected per order. Pure: no Kafka, no clock, no threads.

`Shop` is driven by three inputs — a new order, an event some service announced, a command
the observer published — and answers each with `Emit`s: which service announces which event,
at which event time, and how it reaches Kafka (normally, lost, twice, or held back). The
driver in `simulator.py` does the waiting and the I/O; everything that makes an order slow,
failed or odd is decided here, from the seed, so it can be tested without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from demo.faults import Fault, FaultPlanner, order_rng
from demo.outage import OutageWindow
from demo.wire import DemoError, ShopEvent

__all__ = [
    "CHECKOUT",
    "Catalogue",
    "Emit",
    "OrderPlan",
    "Reaction",
    "Service",
    "Shop",
]


@dataclass(frozen=True, slots=True)
class Service:
    """A service that does one job per order once it has seen every event in `after`."""

    name: str  # who, e.g. "payments"
    job: str  # what, e.g. "take payment"
    source: str  # the flow source its events are read from
    emits: str  # the event type announcing the job is done
    after: tuple[str, ...]  # event types it waits for (all of them); () = it starts orders
    latency_ms: tuple[int, int]  # how long the job takes, drawn uniformly
    fails_with: str | None = None  # the event type announcing the job failed


@dataclass(frozen=True, slots=True)
class Reaction:
    """How a service answers one of the observer's commands: `emits` after `latency_ms`
    (None: it acknowledges the command without announcing anything the flow reads)."""

    command: str  # the command's type, e.g. "ReleaseStock"
    service: str
    source: str
    emits: str | None
    latency_ms: tuple[int, int] = (150, 400)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The shop: its services, their answers to commands, and which events faults touch."""

    services: tuple[Service, ...]
    reactions: tuple[Reaction, ...]
    slow: str  # the service made slow by SLOW_PAYMENT
    lost: str  # the event type lost by LOST_EVENT
    held_until: str  # OUT_OF_ORDER: OrderPlaced reaches Kafka only after this event type
    closes: tuple[str, ...] = ()  # event types after which no service starts a job for the order

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def starter(self) -> Service:
        """The service that starts orders (the shop front)."""
        return next(s for s in self.services if not s.after)

    def emitted(self) -> set[tuple[str, str]]:
        """Every (source, event type) the shop may announce."""
        out = {(s.source, s.emits) for s in self.services}
        out |= {(s.source, s.fails_with) for s in self.services if s.fails_with}
        out |= {(r.source, r.emits) for r in self.reactions if r.emits}
        return out

    def with_latencies(self, latencies: Mapping[str, tuple[int, int]]) -> Catalogue:
        """A copy with some services' latencies replaced (by service name)."""
        services = tuple(
            Service(
                s.name,
                s.job,
                s.source,
                s.emits,
                s.after,
                latencies.get(s.name, s.latency_ms),
                s.fails_with,
            )
            for s in self.services
        )
        return Catalogue(
            services, self.reactions, self.slow, self.lost, self.held_until, self.closes
        )


# The reference checkout of flows/checkout.yaml. Latencies are what the jobs take on a good
# day; `binding.py` checks every event against the flow and shortens a latency that would not
# fit comfortably in its step's window.
CHECKOUT = Catalogue(
    services=(
        Service("shop", "place the order", "orders", "OrderPlaced", (), (0, 0)),
        Service(
            "inventory", "reserve stock", "inventory", "StockReserved", ("OrderPlaced",), (150, 500)
        ),
        Service(
            "shipping", "quote shipping", "shipping", "ShippingQuoted", ("OrderPlaced",), (200, 700)
        ),
        Service("tax", "calculate tax", "tax", "TaxCalculated", ("OrderPlaced",), (100, 400)),
        Service(
            "payments",
            "take payment",
            "payments",
            "PaymentCaptured",
            ("StockReserved", "ShippingQuoted", "TaxCalculated"),
            (300, 1200),
            fails_with="PaymentFailed",
        ),
        Service(
            "warehouse",
            "pick and pack",
            "warehouse",
            "OrderPacked",
            ("PaymentCaptured",),
            (400, 1200),
        ),
        Service(
            "transport",
            "book transport",
            "shipping",
            "TransportBooked",
            ("OrderPacked",),
            (200, 800),
        ),
        Service(
            "stock",
            "update stock levels",
            "inventory",
            "StockLevelsUpdated",
            ("OrderPacked",),
            (100, 400),
        ),
        Service(
            "crm",
            "update the purchase history",
            "crm",
            "PurchaseHistoryUpdated",
            ("PaymentCaptured",),
            (100, 900),
        ),
    ),
    reactions=(
        Reaction("ReleaseStock", "inventory", "inventory", "StockReleased"),
        Reaction("RefundPayment", "payments", "payments", "PaymentRefunded", (300, 900)),
        Reaction("CancelOrder", "shop", "orders", "OrderCancelled"),
        Reaction("BookTransport", "transport", "shipping", "TransportBooked", (300, 800)),
        Reaction("SyncStockLevels", "stock", "inventory", "StockLevelsUpdated"),
    ),
    slow="payments",
    lost="TransportBooked",
    held_until="PaymentCaptured",
    closes=("OrderCancelled",),
)


@dataclass(frozen=True, slots=True)
class Emit:
    """A service announces `event` at `event.time_ms`.

    `publish`: False when the record never reaches Kafka (LOST_EVENT); the service believes
    it sent it, nobody reads it. `copies`: 2 when a retry publishes it again with the same id,
    `copy_gap_ms` later (DUPLICATE). `hold_until`: the record reaches Kafka only after this
    event type of the same order did (OUT_OF_ORDER), though the other services act on it at once.
    `stalled`: the service was down when the job came (`--outage`): it never does it, and
    `event` (at the job's start) only says what it would have announced.
    """

    event: ShopEvent
    publish: bool = True
    copies: int = 1
    copy_gap_ms: int = 0
    hold_until: str | None = None
    stalled: bool = False


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """An order and the fault it carries. `detail`: what exactly the fault touches."""

    no: int
    key: str
    fault: Fault | None
    detail: str = ""

    def describe(self) -> str:
        if self.fault is None:
            return "none"
        return f"{self.fault.label} ({self.detail})" if self.detail else self.fault.label


@dataclass(slots=True)
class _Order:
    plan: OrderPlan
    seen: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)  # services that did their job
    answered: set[str] = field(default_factory=set)  # commands answered
    seq: int = 0
    duplicate: str | None = None


_CUSTOMERS = (
    "ada",
    "grace",
    "alan",
    "edsger",
    "barbara",
    "donald",
    "frances",
    "ken",
    "margaret",
    "linus",
)
_SKUS = ("SKU-KETTLE", "SKU-MUG", "SKU-TEAPOT", "SKU-BEANS", "SKU-GRINDER", "SKU-FILTER")


def _payload(event_type: str, plan: OrderPlan, seed: int) -> dict[str, Any]:
    """Plausible business data for an event (what a flow may `capture:`)."""
    rng = order_rng(seed, plan.no, "order")
    name = rng.choice(_CUSTOMERS)
    lines = [(rng.choice(_SKUS), rng.randint(1, 3)) for _ in range(rng.randint(1, 3))]
    items = [{"sku": sku, "qty": qty} for sku, qty in lines]
    total = round(sum(qty for _, qty in lines) * rng.uniform(4.5, 39.0), 2)
    if event_type == "OrderPlaced":
        return {
            "customer": {"id": f"c-{name}", "email": f"{name}@example.com"},
            "items": items,
            "total": total,
            "currency": "EUR",
        }
    if event_type in ("PaymentCaptured", "PaymentFailed", "PaymentRefunded"):
        out: dict[str, Any] = {"amount": total, "currency": "EUR", "payment_id": f"pay-{plan.key}"}
        if event_type == "PaymentFailed":
            out["reason"] = rng.choice(("card_declined", "insufficient_funds", "expired_card"))
        return out
    if event_type == "ShippingQuoted":
        rng = order_rng(seed, plan.no, "carrier")
        return {
            "carrier": rng.choice(("DHL", "UPS", "PostNL")),
            "amount": round(rng.uniform(3, 12), 2),
        }
    if event_type == "TaxCalculated":
        return {"amount": round(total * 0.21, 2), "rate": 0.21, "currency": "EUR"}
    return {}


class Shop:
    """The services of a `Catalogue`, reacting per order. Deterministic for `seed`.

    Order keys are `<run_id>-<no:04d>`; event ids `<key>-<seq:02d>`. Times are epoch ms.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        planner: FaultPlanner,
        run_id: str,
        late_ms: int,
        duplicable: tuple[str, ...] = (),
        outage: OutageWindow | None = None,
    ) -> None:
        """`late_ms`: how long the slow service takes under SLOW_PAYMENT (past its window).
        `duplicable`: event types a DUPLICATE may hit (those whose source has an id selector).
        `outage`: when one service does nothing (its jobs and answers wait for its end)."""
        self.catalogue = catalogue
        self.planner = planner
        self.seed = planner.seed
        self.run_id = run_id
        self.late_ms = late_ms
        self.duplicable = duplicable or tuple(s.emits for s in catalogue.services if s.after)
        self.outage = outage
        self._orders: dict[str, _Order] = {}
        self._next_no = 1

    # -- inputs ---------------------------------------------------------------------------------

    def place_order(self, now_ms: int) -> tuple[OrderPlan, list[Emit]]:
        """A customer checks out: the order's plan and the shop front's OrderPlaced."""
        no = self._next_no
        self._next_no += 1
        fault = self.planner.fault_of(no)
        key = f"{self.run_id}-{no:04d}"
        detail = ""
        duplicate = None
        if fault is Fault.SLOW_PAYMENT:
            detail = f"{self.catalogue.slow} takes {self.late_ms / 1000:g}s"
        elif fault is Fault.LOST_EVENT:
            detail = f"{self.catalogue.lost} lost"
        elif fault is Fault.PAYMENT_FAILURE:
            detail = f"{self.catalogue.service(self.catalogue.slow).fails_with} instead"
        elif fault is Fault.DUPLICATE:
            duplicate = order_rng(self.seed, no, "duplicate").choice(self.duplicable)
            detail = f"{duplicate} twice"
        elif fault is Fault.OUT_OF_ORDER:
            detail = f"OrderPlaced read after {self.catalogue.held_until}"
        plan = OrderPlan(no, key, fault, detail)
        self._orders[key] = _Order(plan, duplicate=duplicate)
        starter = self.catalogue.starter
        emit = self._emit(self._orders[key], starter.source, starter.emits, now_ms)
        if fault is Fault.OUT_OF_ORDER:
            emit = Emit(emit.event, hold_until=self.catalogue.held_until)
        return plan, [emit]

    def on_event(self, event: ShopEvent) -> list[Emit]:
        """Every service sees `event` (as its consumer would) and starts what it now can."""
        order = self._orders.get(event.order_id)
        if order is None:
            return []
        order.seen.add(event.type)
        if order.seen.intersection(self.catalogue.closes):
            return []
        out = []
        for service in self.catalogue.services:
            if (
                service.name in order.done
                or event.type not in service.after
                or not order.seen.issuperset(service.after)
            ):
                continue
            order.done.add(service.name)
            out.append(self._do_job(order, service, event.time_ms))
        return out

    def on_command(self, command: str, order_id: str, now_ms: int) -> list[Emit] | None:
        """A service answers one of the observer's commands, once per order and command.

        None: nobody answers (not our order, a command no service knows, or answered before);
        an empty list: answered without an event the flow reads."""
        order = self._orders.get(order_id)
        reaction = self.answers(command)
        if order is None or reaction is None or command in order.answered:
            return None
        if self._down(reaction.service, now_ms):
            return None  # the service is down: the command is lost on it
        order.answered.add(command)
        if reaction.emits is None:
            return []
        lo, hi = reaction.latency_ms
        took = order_rng(self.seed, order.plan.no, f"command/{command}").randint(lo, hi)
        return [self._emit(order, reaction.source, reaction.emits, now_ms + took)]

    # -- queries --------------------------------------------------------------------------------

    def plan(self, order_id: str) -> OrderPlan | None:
        order = self._orders.get(order_id)
        return order.plan if order is not None else None

    def answers(self, command: str) -> Reaction | None:
        return next((r for r in self.catalogue.reactions if r.command == command), None)

    # -- internals ------------------------------------------------------------------------------

    def _down(self, service: str, at_ms: int) -> bool:
        """Whether `service` is down at `at_ms` (`--outage`)."""
        return self.outage is not None and self.outage.holds(service, at_ms)

    def _emit(self, order: _Order, source: str, event_type: str, at_ms: int) -> Emit:
        order.seq += 1
        event_id = f"{order.plan.key}-{order.seq:02d}"
        event = ShopEvent(
            source,
            event_type,
            order.plan.key,
            event_id,
            at_ms,
            _payload(event_type, order.plan, self.seed),
        )
        return Emit(event)

    def _do_job(self, order: _Order, service: Service, start_ms: int) -> Emit:
        fault = order.plan.fault
        rng = order_rng(self.seed, order.plan.no, service.name)
        lo, hi = service.latency_ms
        took = rng.randint(lo, hi)
        event_type = service.emits
        if service.name == self.catalogue.slow:
            if fault is Fault.SLOW_PAYMENT:
                took = self.late_ms
            elif fault is Fault.PAYMENT_FAILURE:
                if service.fails_with is None:
                    raise DemoError(f"service '{service.name}' has no failure event")
                event_type = service.fails_with
        if self._down(service.name, start_ms):
            # down when the job came: it is never done (nothing to announce, nothing published)
            emit = self._emit(order, service.source, event_type, start_ms)
            return Emit(emit.event, publish=False, stalled=True)
        emit = self._emit(order, service.source, event_type, start_ms + took)
        if fault is Fault.LOST_EVENT and event_type == self.catalogue.lost:
            return Emit(emit.event, publish=False)
        if fault is Fault.DUPLICATE and event_type == order.duplicate:
            gap = order_rng(self.seed, order.plan.no, "duplicate-gap").randint(100, 600)
            return Emit(emit.event, copies=2, copy_gap_ms=gap)
        return emit
