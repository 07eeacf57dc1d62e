"""The instance view behind `/instances/{flow}/{key}` and `observer status`."""

from __future__ import annotations

from pathlib import Path

from observer.engine.codec import encode_slot
from observer.engine.core import Engine
from observer.engine.state import Event, KeySlot
from observer.flows.compiler import load_registry
from observer.runtime.batch import history_entry
from observer.runtime.query import (
    InstanceQuery,
    describe_flows,
    describe_instance,
    format_instance,
)
from observer.timefmt import format_time
from observer.topics import Topics
from tests.unit.test_runtime_batch import FLOW, T0


class Reader:
    def __init__(self, state: bytes | None, history: list[bytes]) -> None:
        self.state, self.history = state, history

    def read(self, flow: str, key: str) -> tuple[bytes | None, list[bytes]]:
        return self.state, self.history

    def deployed(self) -> dict[str, object] | None:
        return None


def setup(tmp_path: Path) -> Engine:
    (tmp_path / "flow.yaml").write_text(FLOW)
    return Engine(load_registry([tmp_path / "flow.yaml"]), Topics())


def test_an_open_instance_shows_steps_deadlines_deviations_and_actions(tmp_path: Path) -> None:
    engine = setup(tmp_path)
    slot = KeySlot("shop", "o1")
    effects = engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0), T0)
    effects += engine.fire(slot, T0 + 10_000, T0 + 10_500)
    history = [history_entry(e, T0 + 10_500) for e in effects]
    view = describe_instance(engine, "shop", "o1", encode_slot(slot), history)
    assert view is not None
    assert (view["state"], view["version"], view["path"], view["outcome"]) == (
        "open",
        1,
        "main",
        None,
    )
    assert [(s["step"], s["status"]) for s in view["steps"]] == [
        ("placed", "observed"),
        ("paid", "waiting"),
    ]
    assert view["steps"][1]["missing"] is True and view["steps"][1]["deadline"] == format_time(
        T0 + 10_000
    )
    assert [p["kind"] for p in view["pending"]] == ["expire"]
    assert view["deviations"] == [
        {"kind": "missing", "step": "paid", "detected_at": format_time(T0 + 10_500)}
    ]
    assert [(a["category"], a["topic"]) for a in view["actions"]] == [
        ("alert", "observer.alerts"),
        ("action", "cmds"),
    ]
    assert all(len(a["observer_id"]) == 32 for a in view["actions"])
    text = format_instance(view)
    assert text.startswith("shop o1: open (version 1, path main)")
    assert "paid" in text and "missing" in text and "observer-id" in text


def test_early_events_and_unknown_keys(tmp_path: Path) -> None:
    engine = setup(tmp_path)
    slot = KeySlot("shop", "o2")
    engine.apply(slot, Event("pay", "Paid", "o2", "p1", T0), T0 + 5)
    view = describe_instance(engine, "shop", "o2", encode_slot(slot), [])
    assert view is not None and view["state"] == "buffering"
    assert view["buffered"] == [
        {
            "source": "pay",
            "type": "Paid",
            "id": "p1",
            "time": format_time(T0),
            "read_at": format_time(T0 + 5),
        }
    ]
    assert [p["kind"] for p in view["pending"]] == ["orphan"]
    assert "early events buffered" in format_instance(view)
    assert describe_instance(engine, "shop", "nope", None, []) is None
    q = InstanceQuery(engine.registry, Reader(None, []))
    assert q.instance("shop", "nope") is None and q.instance("other-flow", "o2") is None


def test_flows_list_versions_paths_and_steps(tmp_path: Path) -> None:
    engine = setup(tmp_path)
    (flow,) = describe_flows(engine.registry)
    assert flow["flow"] == "shop" and flow["newest"] == 1
    (v1,) = flow["versions"]
    assert v1["sources"] == {"orders": "orders", "pay": "pay"}
    steps = v1["paths"][0]["steps"]
    assert [(s["step"], s["within"], s["after"]) for s in steps] == [
        ("placed", None, []),
        ("paid", "10s", ["placed"]),
    ]


# -- aliases: "where is my parcel?" by its tracking number ------------------------------------------


class Slots:
    """A SlotReader over slots kept in a dict: (flow, key) -> state bytes."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], bytes] = {}

    def read(self, flow: str, key: str) -> tuple[bytes | None, list[bytes]]:
        return self.states.get((flow, key)), []

    def deployed(self) -> dict[str, object] | None:
        return None


def test_an_instance_is_found_by_an_alias_value(tmp_path: Path) -> None:
    from observer.engine.effects import Hop
    from observer.flows.aliases import alias_flow
    from tests.unit.test_engine_aliases import FLOW as DELIVERY

    (tmp_path / "delivery.yaml").write_text(DELIVERY)
    registry = load_registry([tmp_path / "delivery.yaml"])
    engine = Engine(registry, Topics())
    order, value = KeySlot("delivery", "o-1"), KeySlot(alias_flow("delivery", "tracking"), "T1")
    engine.apply(order, Event("orders", "OrderPlaced", "o-1", "p", T0), T0)
    booked = Event("shipping", "TransportBooked", "o-1", "b", T0, {"value.tracking_no": "T1"})
    (register,) = [e for e in engine.apply(order, booked, T0) if isinstance(e, Hop)]
    early = KeySlot(alias_flow("delivery", "tracking"), "T2")
    engine.apply(early, Event("carrier", "PickedUp", "T2", "c", T0), T0)
    slots = Slots()
    query = InstanceQuery(registry, slots)
    slots.states[("delivery", "o-1")] = encode_slot(order)
    slots.states[(early.flow, "T2")] = encode_slot(early)
    assert query.instance("delivery", "T1", via="tracking") is None  # not held yet
    (answer,) = [e for e in engine.deliver(value, register, T0) if isinstance(e, Hop)]
    engine.deliver(order, answer, T0)
    slots.states[("delivery", "o-1")] = encode_slot(order)
    slots.states[(value.flow, "T1")] = encode_slot(value)
    view = query.instance("delivery", "T1", via="tracking")
    assert view is not None and view["key"] == "o-1" and view["state"] == "open"
    assert view["via"] == {"alias": "tracking", "value": "T1"}
    assert view["aliases"] == {"tracking": "T1"}
    assert format_instance(view).startswith("via tracking T1\ndelivery o-1: open")
    waiting = query.instance("delivery", "T2", via="tracking")
    assert waiting is not None and waiting["state"] == "buffering"
    assert [b["type"] for b in waiting["buffered"]] == ["PickedUp"]
    assert [p["kind"] for p in waiting["pending"]] == ["orphan"]
    assert query.instance("delivery", "T1", via="parcel") is None  # no such alias
    (flow,) = describe_flows(registry)
    assert flow["versions"][0]["aliases"] == {
        "tracking": {
            "from": ["shipping.TransportBooked"],
            "value": "value.tracking_no",
            "via": ["carrier"],
        }
    }
