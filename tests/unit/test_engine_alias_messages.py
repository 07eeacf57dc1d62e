"""The engine's messages between slots (aliases) one by one, as `observer run` delivers them:
late, twice, to an instance that is gone; the timers an instance holds back meanwhile; the
state they leave, through the codec."""

from __future__ import annotations

from pathlib import Path

import pytest

from observer.engine.codec import decode_slot, encode_slot
from observer.engine.core import Engine
from observer.engine.effects import Effect, Hop, Publish, Signal
from observer.engine.state import ALIAS_CONFLICT, ALIAS_HELD, ALIAS_PENDING, Event, KeySlot
from observer.flows.aliases import alias_flow, split_alias_flow
from observer.flows.compiler import load_registry
from tests.unit.replay_harness import T0
from tests.unit.test_engine_aliases import FLOW

HOUR = 3_600_000


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    f = tmp_path / "delivery.yaml"
    f.write_text(FLOW)
    return Engine(load_registry([f]))


def hops(effects: list[Effect]) -> list[Hop]:
    return [e for e in effects if isinstance(e, Hop)]


def alerts(effects: list[Effect]) -> list[str]:
    return [e.value["kind"] for e in effects if isinstance(e, Publish) and e.category == "alert"]


def placed(key: str, t: int = T0) -> Event:
    return Event("orders", "OrderPlaced", key, f"placed-{key}", t)


def booked(key: str, value: str, t: int = T0 + 60_000) -> Event:
    return Event(
        "shipping", "TransportBooked", key, f"booked-{key}", t, {"value.tracking_no": value}
    )


def via(status: str, value: str, t: int, eid: str) -> Event:
    return Event("carrier", status, value, eid, t)


def started(engine: Engine, key: str, value: str) -> tuple[KeySlot, Hop]:
    """An instance that booked `value`: its slot and the register it sent."""
    slot = KeySlot("delivery", key)
    engine.apply(slot, placed(key), T0)
    (register,) = hops(engine.apply(slot, booked(key, value), T0 + 60_000))
    return slot, register


def alias_slot(value: str) -> KeySlot:
    return KeySlot(alias_flow("delivery", "tracking"), value)


def test_slot_names_of_alias_values_never_meet_instance_keys() -> None:
    assert alias_flow("delivery", "tracking") == "delivery/tracking"
    assert split_alias_flow("delivery/tracking") == ("delivery", "tracking")
    assert split_alias_flow("delivery") == ("delivery", None)


def test_register_and_its_answer_are_idempotent(engine: Engine) -> None:
    slot, register = started(engine, "o-1", "T1")
    assert register.kind == "register" and register.target() == ("delivery/tracking", "T1")
    assert slot.instance is not None and slot.instance.aliases == {0: ("T1", ALIAS_PENDING)}
    value = alias_slot("T1")
    early = via("PickedUp", "T1", T0 + 30_000, "p1")
    assert engine.apply(value, early, T0) == []  # nobody holds T1: buffered
    (answer,) = hops(engine.deliver(value, register, T0))
    assert answer.kind == "registered" and answer.events == (early,)
    assert value.hold is not None and value.hold.key == "o-1" and not value.buffer
    # the register again (a crash replays it): the same answer, without the events given away
    (again,) = hops(engine.deliver(value, register, T0))
    assert again.kind == "registered" and again.events == ()
    engine.deliver(slot, answer, T0)
    engine.deliver(slot, answer, T0)  # twice: the event is recognised by its id
    inst = slot.instance
    assert inst.aliases == {0: ("T1", ALIAS_HELD)}
    assert inst.observed[2] == T0 + 30_000  # picked_up
    # an event via T1 now goes to its holder
    (forward,) = hops(engine.apply(value, via("Delivered", "T1", T0 + 90_000, "d1"), T0))
    assert forward.kind == "forward" and forward.target() == ("delivery", "o-1")


def test_conflict_is_raised_once_and_only_for_what_was_asked(engine: Engine) -> None:
    _first, reg1 = started(engine, "o-1", "T1")
    second, reg2 = started(engine, "o-2", "T1")
    value = alias_slot("T1")
    engine.deliver(value, reg1, T0)
    (conflict,) = hops(engine.deliver(value, reg2, T0))
    assert conflict.kind == "conflict" and conflict.held_by == "o-1"
    assert conflict.target() == ("delivery", "o-2")
    effects = engine.deliver(second, conflict, T0)
    assert alerts(effects) == ["alias_conflict"]
    signals = [e for e in effects if isinstance(e, Signal) and e.what == "deviation"]
    assert [s.source for s in signals] == ["shipping"]  # the source of the `from` event
    assert second.instance is not None
    assert second.instance.aliases == {0: ("T1", ALIAS_CONFLICT)}
    assert alerts(engine.deliver(second, conflict, T0)) == []  # repeated: nothing new


def test_ended_and_free_release_the_value(engine: Engine) -> None:
    slot, register = started(engine, "o-1", "T1")
    value = alias_slot("T1")
    engine.deliver(slot, hops(engine.deliver(value, register, T0))[0], T0)
    out: list[Effect] = []
    for status, t in (("PickedUp", 1), ("Delivered", 2)):
        (fwd,) = hops(engine.apply(value, via(status, "T1", T0 + 60_000 + t, status), T0))
        out += engine.deliver(slot, fwd, T0)
    (ended,) = hops(out)
    assert ended.kind == "ended" and slot.instance is not None and not slot.instance.open
    engine.deliver(value, ended, T0)
    assert value.hold is not None and not value.hold.open
    # the retain timer frees the key, and with it the value
    assert slot.instance.ended_at is not None
    retain = slot.instance.ended_at + 7 * 24 * HOUR
    (free,) = hops(engine.fire(slot, retain))
    assert free.kind == "free" and slot.instance is None
    engine.deliver(value, free, T0)
    assert value.hold is None and value.empty


def test_a_forward_to_an_instance_that_is_gone_bounces_back(engine: Engine) -> None:
    slot, register = started(engine, "o-1", "T1")
    stale = Hop(
        "forward", "delivery", "tracking", "T1", "o-1", T0 - 5, (via("PickedUp", "T1", T0, "x"),)
    )
    (back,) = hops(engine.deliver(slot, stale, T0))
    assert back.kind == "bounce" and back.target() == ("delivery/tracking", "T1")
    value = alias_slot("T1")
    assert hops(engine.deliver(value, back, T0)) == []  # nobody holds T1: buffered
    assert [b.event.id for b in value.buffer] == ["x"]
    # a bounce while another instance holds the value goes on to that one
    engine.deliver(value, register, T0)
    (fwd,) = hops(engine.deliver(value, back, T0))
    assert fwd.kind == "forward" and fwd.key == "o-1"
    # an answer to an instance that is gone sends its events back too
    gone = KeySlot("delivery", "o-9")
    answer = Hop(
        "registered", "delivery", "tracking", "T1", "o-9", T0, (via("PickedUp", "T1", T0, "y"),)
    )
    assert [h.kind for h in hops(engine.deliver(gone, answer, T0))] == ["bounce"]
    assert gone.empty


def test_an_instance_waiting_for_an_answer_fires_no_timer(engine: Engine) -> None:
    slot, register = started(engine, "o-1", "T1")
    assert engine.next_due(slot) is None  # the answer may bring the pickup
    assert engine.fire(slot, T0 + 10 * 24 * HOUR) == []
    value = alias_slot("T1")
    engine.deliver(slot, hops(engine.deliver(value, register, T0))[0], T0)
    due = T0 + 60_000 + 24 * HOUR  # picked_up: 1d after booked
    assert engine.next_due(slot) == due
    assert alerts(engine.fire(slot, due)) == ["missing"]


def test_alias_state_round_trips_through_the_codec(engine: Engine) -> None:
    slot, register = started(engine, "o-1", "T1")
    assert decode_slot("delivery", "o-1", encode_slot(slot)) == slot
    value = alias_slot("T1")
    engine.apply(value, via("PickedUp", "T1", T0, "p"), T0)
    engine.deliver(value, register, T0)
    engine.apply(value, via("Delivered", "T1", T0, "early"), T0)
    value.buffer = []
    engine.deliver(
        value,
        Hop("bounce", "delivery", "tracking", "T1", "o-1", T0, (via("Lost", "T1", T0, "l"),)),
        T0,
    )
    restored = decode_slot(value.flow, "T1", encode_slot(value))
    assert restored.hold == value.hold and restored.buffer == value.buffer
    assert encode_slot(value).startswith(b"[2,null,")


def test_flows_without_aliases_store_the_same_bytes(tmp_path: Path) -> None:
    from tests.unit.replay_harness import BASE_FLOW

    f = tmp_path / "shop.yaml"
    f.write_text(BASE_FLOW)
    engine = Engine(load_registry([f]))
    slot = KeySlot("shop", "o1")
    engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0, {"value.total": 3}), T0)
    engine.apply(slot, Event("pay", "Paid", "o1", "e2", T0 + 1000), T0)
    assert encode_slot(slot) == b"[2,1,1767225600000,[0,0,1,1000],[0,[3]]]"


def test_late_by_arrival_uses_the_watermark_at_observation(tmp_path: Path) -> None:
    from tests.unit.replay_harness import BASE_FLOW

    f = tmp_path / "shop.yaml"
    f.write_text(BASE_FLOW)
    engine = Engine(load_registry([f]))
    slot = KeySlot("shop", "o1")
    engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0), T0)
    assert alerts(engine.fire(slot, T0 + 10_000)) == ["warning", "missing"]
    # stamped on time (9s) but observed with the watermark at 25s: late by 15s
    effects = engine.apply(
        slot, Event("pay", "Paid", "o1", "e2", T0 + 9_000), T0 + 99_000, T0 + 25_000
    )
    (late,) = [e.value for e in effects if isinstance(e, Publish) and e.category == "alert"]
    assert late["kind"] == "late" and late["late_by_ms"] == 15_000
    assert late["observed_at"] == "2026-01-01T00:00:09Z"
    assert late["deadline"] == "2026-01-01T00:00:10Z"
    # once: the same step again raises nothing more
    assert alerts(engine.apply(slot, Event("pay", "Paid", "o1", "e2", T0 + 9_000), T0)) == []
