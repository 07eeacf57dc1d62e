"""Section 6 of the contract (correlation by a second id), bullet by bullet, through replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.replay_harness import T0, alerts, on_topic, outcomes, run

FLOW = """
flow: delivery
version: 1
key: order_id
sources:
  orders: {topic: shop.orders, type: value.type, key: value.order_id, id: header.eid}
  shipping: {topic: shop.shipping, type: value.type, key: value.order_id, id: header.eid}
  carrier:
    topic: carrier.events
    type: value.status
    key: value.tracking_no
    id: header.eid
    via: tracking
aliases:
  tracking:
    from: shipping.TransportBooked
    value: value.tracking_no
steps:
  - step: placed
    on: orders.OrderPlaced
  - step: booked
    on: shipping.TransportBooked
    within: 1h
  - step: picked_up
    on: carrier.PickedUp
    within: 1d
    if_missing: [chase]
    if_late: [late_pickup]
  - step: delivered
    on: carrier.Delivered
    within: 3d
errors:
  - on: carrier.Lost
    do: [refund]
if_alias_conflict: [ops]
buffer: 1h
retain: 7d
expire: 30d
actions:
  chase:
    publish:
      topic: carrier.commands
      key: "{{ aliases.tracking }}"
      value: {type: Chase, tracking_no: "{{ aliases.tracking }}", order_id: "{{ order_id }}"}
  refund:
    publish: {topic: shop.commands, key: "{{ key }}", value: {type: Refund, order_id: "{{ key }}", tracking: "{{ aliases }}"}}
  late_pickup:
    alert: {severity: info, summary: "{{ aliases.tracking }} picked up late by {{ deviation.late_by }}"}
  ops:
    publish:
      topic: ops
      key: "{{ key }}"
      value:
        order: "{{ order_id }}"
        tracking: "{{ deviation.alias_value }}"
        held_by: "{{ deviation.held_by }}"
        kind: "{{ deviation.kind }}"
"""

H = 3_600  # seconds in an hour


def order(etype: str, key: str, at_s: float, **value: Any) -> dict[str, Any]:
    topic = "shop.orders" if etype == "OrderPlaced" else "shop.shipping"
    t = T0 + round(at_s * 1000)
    return {
        "topic": topic,
        "key": key,
        "value": {"type": etype, "order_id": key, **value},
        "headers": {"eid": f"{etype}-{key}-{t}"},
        "timestamp": t,
    }


def booked(key: str, at_s: float, tracking: str | None) -> dict[str, Any]:
    extra = {} if tracking is None else {"tracking_no": tracking}
    return order("TransportBooked", key, at_s, **extra)


def carrier(status: str, tracking: str, at_s: float, eid: str | None = None) -> dict[str, Any]:
    t = T0 + round(at_s * 1000)
    return {
        "topic": "carrier.events",
        "key": tracking,
        "value": {"status": status, "tracking_no": tracking},
        "headers": {"eid": eid or f"{status}-{tracking}-{t}"},
        "timestamp": t,
    }


def placed(key: str, at_s: float) -> dict[str, Any]:
    return order("OrderPlaced", key, at_s)


def test_an_event_via_a_registered_value_belongs_to_its_instance(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            booked("o-1", 60, "T1"),
            carrier("PickedUp", "T1", 2 * H),
            carrier("Delivered", "T1", 30 * H),
        ],
        flow=FLOW,
    )
    assert alerts(lines) == []
    (out,) = outcomes(lines)
    assert out["outcome"] == "completed" and out["aliases"] == {"tracking": "T1"}
    assert out["steps"]["picked_up"] == "2026-01-01T02:00:00Z"
    assert out["steps"]["delivered"] == "2026-01-02T06:00:00Z"


def test_an_event_via_a_value_nobody_holds_yet_waits_and_applies_in_event_time_order(
    tmp_path: Path,
) -> None:
    # the carrier's events are read before the booking that registers their tracking number
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            carrier("Delivered", "T1", 50),
            carrier("PickedUp", "T1", 40),
            booked("o-1", 60, "T1"),
        ],
        flow=FLOW,
    )
    # no deviation from the buffering itself; both observed at their own times, in event-time
    # order (picked_up before its anchor booked: out of order, recorded only)
    assert alerts(lines) == []
    (out,) = outcomes(lines)
    assert out["steps"]["picked_up"] == "2026-01-01T00:00:40Z"
    assert out["steps"]["delivered"] == "2026-01-01T00:00:50Z"
    assert out["deviations"] == ["out_of_order"]
    assert out["aliases"] == {"tracking": "T1"}


def test_an_event_via_a_value_never_registered_is_orphaned_by_alias(tmp_path: Path) -> None:
    lines = run(tmp_path, [carrier("PickedUp", "T9", 10)], flow=FLOW)
    (line,) = lines
    assert line["key"] == "T9" and line["timestamp"] == T0 + 10_000 + H * 1000
    alert = line["value"]
    assert alert | {"summary": None} == {
        "flow": "delivery",
        "version": 1,
        "key": "T9",
        "kind": "orphaned",
        "step": "picked_up",
        "severity": "critical",
        "deadline": "2026-01-01T01:00:10Z",
        "observed_at": "2026-01-01T00:00:10Z",
        "detected_at": "2026-01-01T01:00:10Z",
        "late_by_ms": None,
        "summary": None,
        "alias": "tracking",
    }
    assert "T9" in alert["summary"] and "tracking" in alert["summary"]


def test_an_event_via_an_alias_never_causes_missing_by_itself(tmp_path: Path) -> None:
    # the instance registers T1; an event via T2 concerns nobody: orphaned, never `missing`
    lines = run(
        tmp_path,
        [placed("o-1", 0), booked("o-1", 60, "T1"), carrier("PickedUp", "T2", 120)],
        flow=FLOW,
        until=T0 + 2 * H * 1000,
    )
    assert alerts(lines) == [("orphaned", "picked_up", "T2")]


def test_a_second_open_instance_does_not_take_a_held_value(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            booked("o-1", 60, "T1"),
            placed("o-2", 100),
            booked("o-2", 160, "T1"),
            carrier("PickedUp", "T1", 200),
            carrier("Delivered", "T1", 300),
        ],
        flow=FLOW,
        until=T0 + 2 * 86_400_000,
    )
    conflict = [
        x for x in on_topic(lines, "observer.alerts") if x["value"]["kind"] == "alias_conflict"
    ]
    (c,) = conflict
    assert c["key"] == "o-2" and c["timestamp"] == T0 + 160_000
    assert c["value"] | {"summary": None} == {
        "flow": "delivery",
        "version": 1,
        "key": "o-2",
        "kind": "alias_conflict",
        "step": None,
        "severity": "warning",
        "deadline": None,
        "observed_at": None,
        "detected_at": "2026-01-01T00:02:40Z",
        "late_by_ms": None,
        "summary": None,
        "alias": "tracking",
        "alias_value": "T1",
        "held_by": "o-1",
    }
    # the handler on the flow's top level ran, with the deviation's alias fields
    (ops,) = on_topic(lines, "ops")
    assert ops["value"] == {
        "order": "o-2",
        "tracking": "T1",
        "held_by": "o-1",
        "kind": "alias_conflict",
    }
    # the carrier's events stay with the holder; o-2 misses its pickup and chases no tracking
    done = {o["key"]: o for o in outcomes(lines)}
    assert done["o-1"]["aliases"] == {"tracking": "T1"} and done["o-1"]["outcome"] == "completed"
    assert ("missing", "picked_up", "o-2") in alerts(lines)
    chase = [x for x in on_topic(lines, "carrier.commands") if x["value"]["order_id"] == "o-2"]
    assert chase[0]["value"]["tracking_no"] is None


def test_a_value_held_by_an_ended_instance_is_taken_by_a_new_open_one(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            booked("o-1", 60, "T1"),
            carrier("PickedUp", "T1", 100),
            carrier("Delivered", "T1", 200),  # o-1 completes, retained for 7d
            placed("o-2", 300),
            booked("o-2", 360, "T1"),  # the carrier reuses the number: no conflict
            carrier("PickedUp", "T1", 400, eid="second-pickup"),
            carrier("Delivered", "T1", 500, eid="second-delivery"),
        ],
        flow=FLOW,
    )
    assert alerts(lines) == []
    done = {o["key"]: o for o in outcomes(lines)}
    assert done["o-2"]["outcome"] == "completed" and done["o-2"]["aliases"] == {"tracking": "T1"}
    assert done["o-2"]["steps"]["picked_up"] == "2026-01-01T00:06:40Z"


def test_retain_frees_the_value_and_later_events_via_it_are_orphaned(tmp_path: Path) -> None:
    day = 86_400
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            booked("o-1", 60, "T1"),
            carrier("PickedUp", "T1", 100),
            carrier("Delivered", "T1", 200),
            carrier("Returned", "T1", 8 * day),  # not a step: ignored, never buffered
            carrier("Delivered", "T1", 8 * day, eid="after-retain"),
        ],
        flow=FLOW,
        until=T0 + 9 * day * 1000,
    )
    kinds = alerts(lines)
    assert kinds == [("orphaned", "delivered", "T1")]
    (orphan,) = [x for x in lines if x["value"].get("kind") == "orphaned"]
    assert orphan["value"]["alias"] == "tracking"


def test_a_retained_holder_records_events_via_its_value_and_late_ones_raise_late(
    tmp_path: Path,
) -> None:
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            booked("o-1", 60, "T1"),
            carrier("Lost", "T1", 100),  # an error via the alias: its handler runs
            carrier("PickedUp", "T1", 200),
            carrier("Delivered", "T1", 300),
            carrier("PickedUp", "T1", 400, eid="again"),  # after the end: recorded only
        ],
        flow=FLOW,
    )
    assert alerts(lines) == [("error", None, "o-1")]
    (refund,) = on_topic(lines, "shop.commands")
    assert refund["value"]["tracking"] == {"tracking": "T1"}


def test_templates_see_aliases_in_handlers(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [placed("o-1", 0), booked("o-1", 60, "T1")],
        flow=FLOW,
        until=T0 + 2 * 86_400_000,
    )
    assert ("missing", "picked_up", "o-1") in alerts(lines)
    (chase,) = on_topic(lines, "carrier.commands")
    assert chase["key"] == "T1"
    assert chase["value"] == {"type": "Chase", "tracking_no": "T1", "order_id": "o-1"}


def test_a_late_event_via_an_alias_raises_late_with_its_handler(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [placed("o-1", 0), booked("o-1", 60, "T1"), carrier("PickedUp", "T1", 60 + 25 * H)],
        flow=FLOW,
    )
    late = [x["value"] for x in on_topic(lines, "observer.alerts") if x["value"]["kind"] == "late"]
    assert late[0]["summary"] == "T1 picked up late by 1h"


def test_a_from_event_without_a_value_registers_nothing(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [placed("o-1", 0), booked("o-1", 60, None), carrier("PickedUp", "T1", 100)],
        flow=FLOW,
        until=T0 + 2 * H * 1000,
    )
    assert alerts(lines) == [("orphaned", "picked_up", "T1")]


def test_duplicates_via_an_alias_change_nothing(tmp_path: Path) -> None:
    events = [
        placed("o-1", 0),
        carrier("PickedUp", "T1", 70, eid="p1"),  # buffered
        carrier("PickedUp", "T1", 70, eid="p1"),  # the same event again, buffered once
        booked("o-1", 60, "T1"),
        carrier("PickedUp", "T1", 70, eid="p1"),  # forwarded, recognised
        carrier("Delivered", "T1", 100),
    ]
    lines = run(tmp_path, events, flow=FLOW)
    assert alerts(lines) == []
    assert [o["outcome"] for o in outcomes(lines)] == ["completed"]


def test_an_alias_registered_by_the_start_event(tmp_path: Path) -> None:
    flow = FLOW.replace("from: shipping.TransportBooked", "from: [orders.OrderPlaced]")
    lines = run(
        tmp_path,
        [
            carrier("PickedUp", "T7", 5),  # read before the order that carries its number
            order("OrderPlaced", "o-1", 0, tracking_no="T7"),
            booked("o-1", 60, "T7"),
            carrier("Delivered", "T7", 100),
        ],
        flow=flow,
    )
    (out,) = outcomes(lines)
    assert out["aliases"] == {"tracking": "T7"} and out["outcome"] == "completed"


def test_outcomes_of_flows_without_aliases_have_no_aliases_field(tmp_path: Path) -> None:
    from tests.unit.replay_harness import ev

    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 1), ev("Shipped", "o1", 2)])
    assert "aliases" not in outcomes(lines)[0]


def test_an_alias_registered_on_an_alternate_path_by_an_event_no_step_expects(
    tmp_path: Path,
) -> None:
    flow = FLOW.replace("from: shipping.TransportBooked", "from: [shipping.Relabelled]").replace(
        "errors:\n  - on: carrier.Lost\n    do: [refund]\n",
        "errors:\n  - on: carrier.Lost\n    do: [refund]\n"
        "  - on: shipping.Rerouted\n    then: reroute\n"
        "paths:\n  reroute:\n    outcome: rerouted\n    steps:\n"
        "      - {step: returned, on: carrier.Returned, within: 1d}\n",
    )
    lines = run(
        tmp_path,
        [
            placed("o-1", 0),
            order("Rerouted", "o-1", 10),  # an error: on to the alternate path
            order("Relabelled", "o-1", 20, tracking_no="T5"),  # no step: registers T5 only
            carrier("Returned", "T5", 30),
        ],
        flow=flow,
    )
    assert alerts(lines) == [("error", None, "o-1")]
    (out,) = outcomes(lines)
    assert out["outcome"] == "rerouted" and out["aliases"] == {"tracking": "T5"}
    assert out["steps"]["returned"] == "2026-01-01T00:00:30Z"
