"""The simulated shop over time: orders arriving, services taking their time, records going out.

`Simulation` is the pure core — every decision is made by `Shop` from the seed, every time is
passed in (epoch ms) — so the same code runs on the wall clock against Kafka (`KafkaShop`,
below, the only I/O here) and on a virtual clock against the engine in the tests
(`offline.py`).

How services talk: a service hands its event to the others at the moment it publishes it, as
if their consumers had no lag. The observer, by contrast, sees only what reaches Kafka, which
is where the faults live: a lost record never arrives, a retried one arrives twice, a held one
arrives after events that followed it. Commands from the observer come back over Kafka
(`on_command`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from demo.faults import order_rng
from demo.shop import Emit, OrderPlan, Shop
from demo.wire import ShopEvent, WireFormat, WireRecord

__all__ = ["Happening", "KafkaShop", "Simulation"]

HOLD_GAP_MS = 300  # a held record goes out this long after the event it waits for
MAX_HOLD_MS = 15_000  # ... or after this long, whatever happens


@dataclass(frozen=True, slots=True)
class Happening:
    """Something the simulation did at `at_ms`.

    kind: `placed` (a new order, `plan` set), `published` (a record went to Kafka; `copy` 2 for a
    retry with the same id), `lost` (a service announced `event` but the record never reaches
    Kafka), `held` (the record of `event` is held back; the services already act on it),
    `answered` (a service acted on the observer's command `command`), `stalled` (the service
    to do the next job is down, `--outage`: the job, which would have announced `event`, is
    never done).
    """

    kind: Literal["placed", "published", "lost", "held", "answered", "stalled"]
    at_ms: int
    order_id: str
    event: ShopEvent | None = None
    plan: OrderPlan | None = None
    copy: int = 1
    command: str | None = None


@dataclass(frozen=True, slots=True)
class _Deliver:
    emit: Emit


@dataclass(frozen=True, slots=True)
class _Publish:
    event: ShopEvent
    copy: int


@dataclass(frozen=True, slots=True)
class _Release:
    event_id: str


@dataclass(frozen=True, slots=True)
class _Arrival:
    pass


_Action = _Deliver | _Publish | _Release | _Arrival


class Simulation:
    """Orders at `rate` per second (seeded jitter), up to `orders` (None: until `stop_placing`)."""

    def __init__(self, shop: Shop, rate: float, orders: int | None, start_ms: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 orders/s")
        self.shop = shop
        self.rate = rate
        self.limit = orders
        self.placed = 0
        self._heap: list[tuple[int, int, _Action]] = []
        self._seq = itertools.count()
        self._held: dict[str, ShopEvent] = {}  # event id -> held record
        self._release_on: dict[tuple[str, str], str] = {}  # (order, event type) -> held event id
        self._placing = orders is None or orders > 0
        if self._placing:
            self._push(start_ms, _Arrival())

    @property
    def placing(self) -> bool:
        """Whether more orders will arrive."""
        return self._placing

    def stop_placing(self) -> None:
        """No new orders from now on; orders in flight carry on."""
        self._placing = False

    def next_due(self) -> int | None:
        """When `advance` next has something to do (epoch ms), or None when all is quiet."""
        while self._heap and isinstance(self._heap[0][2], _Arrival) and not self._placing:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def idle(self) -> bool:
        """No order will arrive and no service has work left: nothing more will be published
        unless the observer sends a command (an arrival after `stop_placing`, or the timeout of
        a held record already let out, does not count)."""
        return not self._placing and all(
            isinstance(action, _Arrival)
            or (isinstance(action, _Release) and action.event_id not in self._held)
            for _, _, action in self._heap
        )

    def advance(self, now_ms: int) -> list[Happening]:
        """Do everything due at or before `now_ms`, in time order."""
        out: list[Happening] = []
        while (due := self.next_due()) is not None and due <= now_ms:
            at, _, action = heapq.heappop(self._heap)
            if isinstance(action, _Arrival):
                self._arrive(at, out)
            elif isinstance(action, _Deliver):
                self._deliver(action.emit, at, out)
            elif isinstance(action, _Release):
                held = self._held.pop(action.event_id, None)
                if held is not None:  # else released already
                    self._publish(held, 1, at, out)
            else:
                self._publish(action.event, action.copy, at, out)
        return out

    def on_command(self, command: str, order_id: str, now_ms: int) -> Happening | None:
        """The observer published `command` for `order_id`; the service in charge answers."""
        emits = self.shop.on_command(command, order_id, now_ms)
        if emits is None:
            return None
        for e in emits:
            self._push(e.event.time_ms, _Deliver(e))
        return Happening("answered", now_ms, order_id, command=command)

    # -- internals ------------------------------------------------------------------------------

    def _push(self, at: int, action: _Action) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), action))

    def _arrive(self, at: int, out: list[Happening]) -> None:
        plan, emits = self.shop.place_order(at)
        self.placed += 1
        out.append(Happening("placed", at, plan.key, plan=plan))
        for e in emits:
            self._push(e.event.time_ms, _Deliver(e))
        if self.limit is not None and self.placed >= self.limit:
            self._placing = False
        if self._placing:
            jitter = order_rng(self.shop.seed, self.placed, "arrival").uniform(0.7, 1.3)
            self._push(at + max(1, round(1000 / self.rate * jitter)), _Arrival())

    def _deliver(self, emit: Emit, at: int, out: list[Happening]) -> None:
        event = emit.event
        if not emit.publish:
            # lost on the way: nobody reads it, the other services neither
            out.append(Happening("lost", at, event.order_id, event))
            return
        if emit.hold_until is not None:
            out.append(Happening("held", at, event.order_id, event))
            self._held[event.event_id] = event
            self._release_on[(event.order_id, emit.hold_until)] = event.event_id
            self._push(at + MAX_HOLD_MS, _Release(event.event_id))
        else:
            self._publish(event, 1, at, out)
            if emit.copies > 1:
                self._push(at + emit.copy_gap_ms, _Publish(event, 2))
        for follow in self.shop.on_event(event):
            if follow.stalled:
                out.append(Happening("stalled", at, event.order_id, follow.event))
                continue
            self._push(follow.event.time_ms, _Deliver(follow))

    def _publish(self, event: ShopEvent, copy: int, at: int, out: list[Happening]) -> None:
        out.append(Happening("published", at, event.order_id, event, copy=copy))
        held = self._release_on.pop((event.order_id, event.type), None)
        if held is not None:
            self._push(at + HOLD_GAP_MS, _Release(held))


class KafkaShop:
    """Publishes the simulation's records with a confluent-kafka producer.

    `producer` is anything with confluent-kafka's `produce(topic, value, key, headers,
    timestamp)` and `poll(timeout)`; delivery errors are reported through `on_error`.
    """

    def __init__(self, wire: WireFormat, producer: Any, on_error: Callable[[str], None]) -> None:
        self.wire = wire
        self.producer = producer
        self.on_error = on_error

    def publish(self, event: ShopEvent) -> WireRecord:
        """Send `event`'s record (delivery is reported later); returns the record."""
        import orjson

        rec = self.wire.encode(event)

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.on_error(
                    f"could not publish {event.type} of {event.order_id} to {rec.topic}: {err}"
                )

        self.producer.produce(
            rec.topic,
            value=orjson.dumps(rec.value),
            key=rec.key.encode(),
            headers=[(k, v.encode()) for k, v in rec.headers],
            timestamp=rec.timestamp,
            on_delivery=delivered,
        )
        self.producer.poll(0)
        return rec
