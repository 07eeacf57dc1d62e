"""The web console: the flow's layout and drawing (pure), its numbers from the group's counts,
where instances wait, the instance timeline, and the endpoints (Starlette's test client over a
runtime on in-memory adapters and a manual clock)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from observer.adapters.memory import InMemoryWorld
from observer.adapters.memory.console import InMemoryConsoleStore
from observer.config import ObserverConfig
from observer.console.layout import COL_W, MARGIN, layout_flow
from observer.console.numbers import flow_hour, quantile_ms, slo_status, step_hour
from observer.console.service import ConsoleData
from observer.console.svg import NUMBER_FIELDS, render_svg
from observer.console.timeline import timeline
from observer.correlation import LATENCY_BOUNDS_MS, count_signal, latency_counts
from observer.flows.compiler import load_registry
from observer.http.actions import action_routes
from observer.http.app import create_app
from observer.http.console import console_routes
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.loop import Runtime
from observer.runtime.query import InstanceQuery

REPO = Path(__file__).resolve().parents[2]
TOKEN = "console-unit-token-0123456789"
SVG = "{http://www.w3.org/2000/svg}"

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id, time: value.at}
  pay: {topic: pay, type: value.type, key: value.id, time: value.at}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 10s
    if_missing:
      do: [cancel]
      then: cancelled
  - step: shipped
    on: orders.Shipped
    within: 1m
paths:
  cancelled:
    outcome: cancelled
    steps:
      - step: cancel_confirmed
        on: orders.Cancelled
        within: 1m
slo: {objective: 99%, within: 30s, window: 7d}
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", value: {type: Cancel, id: "{{ key }}"}}
"""


def checkout() -> Any:
    return load_registry([REPO / "flows" / "checkout.yaml"]).newest("checkout")


# -- layout and drawing ------------------------------------------------------------------------------


def test_the_main_path_follows_the_anchors_and_other_paths_get_lanes_below() -> None:
    layout = layout_flow(checkout())
    col = {n.id: (n.x - MARGIN) // COL_W for n in layout.nodes}
    assert col["placed"] == 0
    assert col["reserved"] == col["shipping_quoted"] == col["tax_calculated"] == 1
    assert col["paid"] == 2 and col["packed"] == 3 and col["crm_updated"] == 3
    assert col["transport_booked"] == col["stock_updated"] == 4
    main = {n.id: n.y for n in layout.nodes if n.path == "main"}
    assert len({main["reserved"], main["shipping_quoted"], main["tax_calculated"]}) == 3
    lowest_main = max(main.values())
    others = [n for n in layout.nodes if n.path != "main"]
    assert others and all(n.y > lowest_main for n in others)
    # a path a step switches to comes first (its edges cross no other lane), then the rest
    assert [title for title, _ in layout.lanes] == [
        "main path → completed",
        "cancelled path → cancelled",
        "compensation path → compensated",
    ]


def test_edges_carry_windows_switches_and_error_handlers() -> None:
    layout = layout_flow(checkout())
    edges = {(e.src, e.dst): e for e in layout.edges}
    assert edges[("placed", "reserved")].label == "≤ 10s"
    assert edges[("reserved", "paid")].label == "≤ 15s (warn 9s)"  # once per window
    assert edges[("tax_calculated", "paid")].label == ""
    assert edges[("reserved", "path:cancelled")].kind == "switch"
    assert edges[("paid", "path:cancelled")].label == "missing"
    assert edges[("path:cancelled", "order_cancelled")].kind == "entry"
    errors = [e for e in layout.edges if e.kind == "error"]
    assert {e.dst for e in errors} == {"path:compensation"} and len(errors) == 2
    assert {e.src for e in layout.edges} | {e.dst for e in layout.edges} <= {
        n.id for n in layout.nodes
    }


def test_the_drawing_has_one_node_per_step_with_a_slot_for_each_number() -> None:
    flow = checkout()
    svg = render_svg(layout_flow(flow))
    root = ET.fromstring(svg)  # well-formed
    steps = [g for g in root.iter(f"{SVG}g") if "step" in g.get("class", "").split()]
    assert sorted(g.get("data-step") for g in steps) == sorted(s.name for s in flow.steps)
    for g in steps:
        fields = [t.get("data-field") for t in g.iter(f"{SVG}tspan") if t.get("data-field")]
        assert fields == list(NUMBER_FIELDS)
    optional = [g.get("data-step") for g in steps if "optional" in g.get("class", "")]
    assert optional == ["crm_updated"]


def test_names_are_escaped_in_the_drawing(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        FLOW.replace("Placed", "Placed<&>").replace("flow: shop", "flow: shop")
    )
    svg = render_svg(layout_flow(load_registry([tmp_path / "f.yaml"]).newest("shop")))
    ET.fromstring(svg)
    assert "Placed&lt;&amp;&gt;" in svg


# -- numbers ---------------------------------------------------------------------------------------


def test_quantiles_are_interpolated_inside_their_bucket() -> None:
    assert quantile_ms({}, 0.5) is None
    i = LATENCY_BOUNDS_MS.index(1_000)  # (500, 1000]
    assert quantile_ms({i: 10}, 0.5) == 750
    assert quantile_ms({0: 99, i: 1}, 0.99) == LATENCY_BOUNDS_MS[0]
    assert quantile_ms({len(LATENCY_BOUNDS_MS): 3}, 0.5) == LATENCY_BOUNDS_MS[-1]
    counts = latency_counts([("f", "s", 700), ("f", "s", 40), ("f", "s", 10**9)])
    assert counts == {
        ("lat", "f", "s", str(i)): 1,
        ("lat", "f", "s", "0"): 1,
        ("lat", "f", "s", str(len(LATENCY_BOUNDS_MS))): 1,
    }


def test_slo_signals_are_counted_and_the_budget_and_burn_rate_follow() -> None:
    tally: dict[Any, int] = {}
    for detail in ("good", "good", "bad"):
        count_signal(tally, "slo", "shop", None, detail, None, None)
    assert tally == {("slo", "shop", "good", ""): 2, ("slo", "shop", "bad", ""): 1}
    slo = load_registry_text(FLOW).newest("shop").slo
    status = slo_status(slo, "shop", {"good": 995, "bad": 5}, tally)
    assert status["budget_left"] == 0.5  # half of a 1 % budget spent
    assert status["burn_rate_1h"] == pytest.approx(33.33, abs=0.01)  # a third bad / 1 %
    untouched = slo_status(slo, "shop", {}, {})
    assert untouched["budget_left"] == 1.0 and untouched["burn_rate_1h"] is None
    assert (untouched["objective"], untouched["within"], untouched["window"]) == (
        "99 %",
        "30s",
        "7d",
    )


def test_step_and_flow_numbers_of_the_hour() -> None:
    flow = load_registry_text(FLOW).newest("shop")
    counts = {
        ("step", "shop", "paid", "observed"): 7,
        ("step", "shop", "paid", "missing"): 2,
        ("step", "shop", "paid", "late"): 1,
        ("step", "shop", "paid", "out_of_order"): 1,
        ("step", "other", "paid", "observed"): 50,
        ("lat", "shop", "paid", "5"): 7,
        ("flow", "shop", "started", ""): 9,
        ("flow", "shop", "ended", "completed"): 6,
        ("flow", "shop", "ended", "cancelled"): 2,
    }
    paid = step_hour(flow, counts)["paid"]
    assert (paid["observed"], paid["missing"], paid["late"]) == (7, 2, 1)
    assert paid["deviations"] == {"out_of_order": 1}
    assert paid["p50_ms"] is not None and paid["p50"] is not None
    assert flow_hour("shop", counts) == {
        "started": 9,
        "outcomes": {"cancelled": 2, "completed": 6},
        "deviations": {"late": 1, "missing": 2, "out_of_order": 1},
    }


def load_registry_text(text: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "flow.yaml"
        path.write_text(text)
        return load_registry([path])


def test_the_timeline_sorts_times_with_and_without_milliseconds() -> None:
    view = {
        "started_at": "2026-01-01T00:00:00Z",
        "steps": [
            {"step": "placed", "path": "main", "observed_at": "2026-01-01T00:00:00Z"},
            {"step": "paid", "path": "main", "observed_at": None, "deadline": "2026-01-01T00:00:10Z",
             "status": "waiting", "missing": False},
        ],
        "pending": [],
        "deviations": [{"kind": "late", "step": "x", "detected_at": "2026-01-01T00:00:00.500Z"}],
        "actions": [{"at": "2026-01-01T00:00:01Z", "category": "alert", "observer_id": "abc"}],
        "history": [{"at": "2026-01-01T00:00:02Z", "what": "held", "observer_id": "abc"}],
    }  # fmt: skip
    entries = timeline(view)
    assert [e["what"] for e in entries] == [
        "started", "event", "deviation", "published", "held", "deadline",
    ]  # fmt: skip
    assert entries[1]["event_time"] == "2026-01-01T00:00:00Z"
    assert entries[3]["observer_id"] == "abc"


# -- a runtime on in-memory adapters, its console --------------------------------------------------


class FakeFeed:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def recent(self) -> list[dict[str, Any]]:
        return list(self.records)


class Console:
    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "flow.yaml").write_text(FLOW)
        config = ObserverConfig(
            group_id="g", shards=2, idle_grace_ms=0, commit_interval_ms=0, commit_delay_ms=0
        )
        self.world = InMemoryWorld(config)
        for topic in ("orders", "pay", "cmds"):
            self.world.broker.create(topic, 1)
        self.registry = load_registry([tmp_path / "flow.yaml"])
        self.runtime = Runtime(
            config,
            self.registry,
            self.world.ports(),
            metrics=Metrics(CollectorRegistry()),
            health=Health(self.world.clock.monotonic),
        )
        assert self.runtime.open()
        self.store = InMemoryConsoleStore(self.world.store, self.world.tally)
        self.feed = FakeFeed(
            [
                {"flow": "shop", "kind": "missing", "step": "paid", "key": "o-2"},
                {"flow": "shop", "kind": "late", "step": "paid", "key": "o-1"},
                {"flow": "other", "kind": "missing", "step": "paid", "key": "x"},
            ]
        )
        self.data = ConsoleData(
            InstanceQuery(self.registry, self.world.store),
            self.store,
            self.world.clock.now_ms,
            held=self.world.store,
            alerts=self.feed,
            controls=True,
            refresh_ms=1_000,
        )
        app = create_app(
            InstanceQuery(self.registry, self.world.store),
            lambda: {"ready": True},
            CollectorRegistry(),
            token=TOKEN,
            control_routes=action_routes(self.world.store, self.world.clock.now_ms),
            console_routes=console_routes(self.data),
        )
        self.http = TestClient(app)

    def send(self, topic: str, kind: str, key: str, at: int | None = None) -> None:
        at = self.world.clock.now_ms() if at is None else at
        self.world.produce(topic, orjson.dumps({"type": kind, "id": key, "at": at}))

    def turn(self, n: int = 1, seconds: float = 0.05) -> None:
        for _ in range(n):
            self.runtime.cycle()
            self.world.clock.advance(seconds)

    def get(self, path: str, token: str | None = TOKEN) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(path, headers=headers)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    c = Console(tmp_path)
    yield c
    c.runtime.stop()
    c.runtime.close()


def _workload(c: Console) -> None:
    """o-1 paid 2 s after its order and shipped; o-2 and o-3 wait for their payment."""
    c.send("orders", "Placed", "o-1")
    c.send("orders", "Placed", "o-2")
    c.turn(5)
    c.world.clock.advance(2.0)
    c.send("pay", "Paid", "o-1")
    c.send("orders", "Shipped", "o-1")
    c.send("orders", "Placed", "o-3")
    c.turn(5)
    c.turn(1, seconds=5.0)  # the tally is flushed every 5 s
    c.turn(2)


def test_the_numbers_of_each_node_come_from_the_counts_and_the_states(console: Console) -> None:
    _workload(console)
    live = console.data.flow_live("shop")
    paid = live["steps"]["paid"]
    assert (paid["observed"], paid["waiting"], paid["overdue"]) == (1, 2, 0)
    assert paid["p50_ms"] is not None and 1_000 <= paid["p50_ms"] <= 2_500
    assert live["steps"]["placed"]["observed"] == 3
    assert live["open"] == 2
    assert live["hour"]["outcomes"] == {"completed": 1}
    assert live["slo"]["good"] == 1 and live["slo"]["budget_left"] == 1.0
    assert live["guardrails"]["available"] and live["guardrails"]["incidents"] == []
    # o-2's window passes: overdue until its `missing` fires and it moves to `cancelled`
    console.world.clock.advance(4.0)
    console.store.release("shop")
    assert console.data.flow_live("shop")["steps"]["paid"]["overdue"] >= 1
    waiting = console.data.step_instances("shop", "paid", overdue=True)
    assert [i["key"] for i in waiting["instances"]] == ["o-2"]


def test_the_group_counts_a_flow_once_per_interval(console: Console) -> None:
    _workload(console)
    console.data.flow_live("shop")
    console.data.overview()
    assert console.store.counts == 1  # the second answer came from the shared count
    console.world.clock.advance(2.0)  # older than refresh_ms, but another process counts it
    console.data.flow_live("shop")
    assert console.store.counts == 1
    console.store.release("shop")
    console.data.flow_live("shop")
    assert console.store.counts == 2


def test_the_endpoints_need_the_token_but_the_page_does_not(console: Console) -> None:
    _workload(console)
    page = console.get("/console", token=None)
    assert page.status_code == 200 and "console.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert console.get("/console/static/console.js", token=None).status_code == 200
    assert console.get("/console/api/overview", token=None).status_code == 401
    assert console.get("/console/static/other.js", token=None).status_code == 401
    assert console.get("/console/static/other.js").status_code == 404

    overview = console.get("/console/api/overview").json()
    (shop,) = overview["flows"]
    assert shop["open"] == 2 and shop["versions"] == [{"version": 1, "open": 2}]
    assert shop["hour"]["started"] == 3 and shop["slo"]["objective"] == "99 %"
    assert overview["controls"] is True

    svg = console.get("/console/api/flows/shop/graph.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.count('class="node step') == 4
    live = console.get("/console/api/flows/shop/live?version=1").json()
    assert live["steps"]["paid"]["waiting"] == 2
    listed = console.get("/console/api/flows/shop/steps/paid").json()
    assert sorted(i["key"] for i in listed["instances"]) == ["o-2", "o-3"]

    assert console.get("/console/api/flows/nope/live").status_code == 404
    assert console.get("/console/api/flows/shop/live?version=9").status_code == 404
    assert console.get("/console/api/flows/shop/steps/nope").status_code == 404
    assert console.get("/console/api/flows/shop/live?version=x").status_code == 400


def test_an_instance_comes_with_its_timeline(console: Console) -> None:
    _workload(console)
    found = console.get("/console/api/instances/shop/o-1").json()
    assert found["state"] == "ended" and found["outcome"] == "completed"
    events = [e["step"] for e in found["timeline"] if e["what"] == "event"]
    assert events == ["placed", "paid", "shipped"]
    assert any(e["what"] == "published" and e.get("observer_id") for e in found["timeline"])
    missing = console.get("/console/api/instances/shop/o-9")
    assert missing.status_code == 404 and "o-9" in missing.json()["error"]


def test_alerts_are_filtered_by_flow_kind_and_step(console: Console) -> None:
    got = console.get("/console/api/alerts?flow=shop&kind=missing").json()
    assert [a["key"] for a in got["alerts"]] == ["o-2"]
    assert len(console.get("/console/api/alerts?step=paid").json()["alerts"]) == 3
    assert got["guardrails_available"] and got["incidents"] == []
    assert console.get("/console/api/alerts?limit=x").status_code == 400


def test_without_guardrails_or_alerts_the_console_says_so(console: Console) -> None:
    data = ConsoleData(console.data.query, console.store, console.world.clock.now_ms)
    assert data.overview()["flows"][0]["guardrails"] == {"available": False}
    got = data.alerts()
    assert got["alerts_available"] is False and got["guardrails_available"] is False


def test_held_actions_show_on_the_instance_and_go_once_released(console: Console) -> None:
    console.world.store.pause(None, "dry run")  # every action held (OBSERVER_ACTIONS=hold)
    _workload(console)
    console.world.clock.advance(10.0)  # o-2's payment window passes: `cancel` is held
    console.turn(10)
    console.turn(1, seconds=5.0)
    found = console.get("/console/api/instances/shop/o-2").json()
    (held,) = found["held_actions"]
    assert held["action"] == "cancel" and held["reason"] == "paused" and found["controls"]
    assert any(e["what"] == "held" for e in found["timeline"])
    overview = console.get("/console/api/overview").json()
    assert overview["flows"][0]["held"] >= 1 and overview["flows"][0]["guardrails"]["paused"]
    (group,) = console.get("/console/api/flows/shop/live").json()["held_groups"]
    assert group["reason"] == "paused" and held["observer_id"] in group["ids"]  # o-2, o-3
    released = console.http.post(
        "/actions/shop/release",
        json={"ids": [held["observer_id"]]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    assert released["released"] == 1
    after = console.get("/console/api/instances/shop/o-2").json()
    assert "held_actions" not in after and any(e["what"] == "released" for e in after["timeline"])
