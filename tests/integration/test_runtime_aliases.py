"""Aliases (contract section 6) and late after `missing` by arrival, with `observer run`
in-process against the real broker and redis-server, in both routings (the harness:
tests/integration/harness.py). Events keyed by a tracking number reach the order that
registered it through a second hop of the keyed topic (or of its in-memory stand-in)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.harness import FLOW, Harness, make, now_ms, outcome_of

pytestmark = pytest.mark.timeout(120)

__all__ = ["make"]  # the fixture, with `routing` below

# the harness's flow, with a carrier whose events carry the tracking number Shipped registered
ALIAS_FLOW = (
    FLOW.replace(
        "  ship: {topic: P.ship, type: value.type, key: value.id, id: header.eid}\n",
        "  ship: {topic: P.ship, type: value.type, key: value.id, id: header.eid}\n"
        "  carrier: {topic: P.carrier, type: value.type, key: value.id, id: header.eid,"
        " via: tracking}\n"
        "aliases:\n"
        "  tracking: {from: ship.Shipped, value: value.tn}\n",
    )
    .replace(
        "    on: ship.Shipped\n    within: 20s\n",
        "    on: ship.Shipped\n    within: 20s\n"
        "  - step: delivered\n"
        "    on: carrier.Delivered\n"
        "    within: 2s\n"
        "    if_missing: [chase]\n"
        "    if_late: [notify]\n",
    )
    .replace("buffer: 30s", "buffer: 3s\nif_alias_conflict: [refund]")
    .replace(
        "actions:\n",
        "actions:\n"
        "  chase:\n"
        '    publish: {topic: P.cmds, key: "{{ aliases.tracking }}", headers: {type: Chase},'
        ' value: {type: Chase, tn: "{{ aliases.tracking }}", id: "{{ key }}"}}\n',
    )
)


@pytest.fixture(params=["keyed", "direct"])
def routing(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def started(make: Callable[..., Harness]) -> Harness:
    h = make(flow=ALIAS_FLOW)
    h.create_topics([h.t("carrier")], 2)
    h.start()
    return h


def carrier(h: Harness, etype: str, tn: str, at: int) -> None:
    h.send(etype, tn, at, topic="carrier")


def shipped(h: Harness, key: str, at: int, tn: str) -> None:
    h.send("Placed", key, at)
    h.send("Paid", key, at + 100)
    h.send("Shipped", key, at + 200, tn=tn)


def holder(h: Harness, tn: str) -> Any:
    r = h.api(f"/instances/shop/{tn}?via=tracking")
    return r.json() if r.status_code == 200 and r.json().get("state") != "buffering" else None


def test_events_via_an_alias_find_their_instance_before_and_after_registration(
    make: Callable[..., Harness],
) -> None:
    h = started(make)
    t = now_ms()
    carrier(h, "Delivered", "TN-1", t + 400)  # read before the Shipped that carries TN-1
    early = h.wait_for(
        lambda: (v := h.api("/instances/shop/TN-1?via=tracking").json()).get("buffered") and v,
        message="the carrier's event buffered for TN-1",
    )
    assert early["state"] == "buffering" and early["via"] == {"alias": "tracking", "value": "TN-1"}
    shipped(h, "o1", t, "TN-1")
    out = outcome_of(h, "o1")
    assert out["outcome"] == "completed" and out["aliases"] == {"tracking": "TN-1"}
    assert out["deviations"] == [] and "delivered" in out["steps"]
    view = h.wait_for(lambda: holder(h, "TN-1"), message="o1 found by its tracking number")
    assert view["key"] == "o1" and view["aliases"] == {"tracking": "TN-1"}
    # after the registration, straight through the second hop
    shipped(h, "o2", t + 1000, "TN-2")
    h.wait_for(lambda: holder(h, "TN-2"), message="o2 holding TN-2")
    carrier(h, "Delivered", "TN-2", t + 1500)
    assert outcome_of(h, "o2")["aliases"] == {"tracking": "TN-2"}
    h.processed()
    assert h.alerts() == []


def test_missing_via_an_alias_then_late_by_arrival(make: Callable[..., Harness]) -> None:
    h = started(make)
    t = now_ms()
    shipped(h, "o1", t, "TN-1")
    deadline = t + 200 + 2000
    (missing,) = h.wait_for(lambda: h.alerts("missing"), message="delivered missing")
    assert (missing.key, missing.json["step"]) == (b"o1", "delivered")
    chase = h.wait_for(lambda: h.out("cmds"), message="the chase")
    assert chase[0].key == b"TN-1" and chase[0].json == {"type": "Chase", "tn": "TN-1", "id": "o1"}
    # the carrier stamps its event before the deadline, but it is read after `missing` fired
    carrier(h, "Delivered", "TN-1", deadline - 500)
    (late,) = h.wait_for(lambda: h.alerts("late"), message="late by arrival")
    assert late.json["step"] == "delivered" and late.json["late_by_ms"] > 0
    assert late.json["observed_at"] is not None
    assert outcome_of(h, "o1")["deviations"] == ["missing", "late"]


def test_an_event_via_an_unknown_value_is_orphaned_by_alias(
    make: Callable[..., Harness],
) -> None:
    h = started(make)
    carrier(h, "Delivered", "TN-9", now_ms())
    (orphan,) = h.wait_for(lambda: h.alerts("orphaned"), message="the orphan", timeout=30)
    assert orphan.key == b"TN-9"
    assert orphan.json["alias"] == "tracking" and orphan.json["step"] == "delivered"


def test_a_second_open_instance_gets_alias_conflict(make: Callable[..., Harness]) -> None:
    h = started(make)
    t = now_ms()
    shipped(h, "o1", t, "TN-1")
    h.wait_for(lambda: holder(h, "TN-1"), message="o1 holding TN-1")
    shipped(h, "o2", t + 100, "TN-1")
    (conflict,) = h.wait_for(lambda: h.alerts("alias_conflict"), message="the conflict")
    assert conflict.key == b"o2" and conflict.json["severity"] == "warning"
    assert (conflict.json["alias"], conflict.json["alias_value"], conflict.json["held_by"]) == (
        "tracking",
        "TN-1",
        "o1",
    )
    refunds = h.wait_for(
        lambda: [o for o in h.out("cmds") if o.json["type"] == "Refund"],
        message="if_alias_conflict's refund",
    )
    assert [o.json for o in refunds] == [{"type": "Refund", "id": "o2"}]
    carrier(h, "Delivered", "TN-1", t + 400)
    assert outcome_of(h, "o1")["aliases"] == {"tracking": "TN-1"}
    assert holder(h, "TN-1")["key"] == "o1"
