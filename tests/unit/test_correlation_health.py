"""Correlation health: what the runtime counts for each event (in memory, manual clock), and
the report `observer health` makes of counts (pure: counts in, sentences out)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.adapters.memory import InMemoryWorld
from observer.adapters.redis.keys import tally_count, tally_field
from observer.config import ObserverConfig
from observer.correlation import signal_kind
from observer.flows.compiler import load_registry
from observer.health_report import SourceInfo, Thresholds, assess, render_text
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.loop import Runtime
from observer.runtime.tally import MinuteTally

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id, time: value.at}
  pay: {topic: pay, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 1h
buffer: 20s
"""


class Observer:
    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "flow.yaml").write_text(FLOW)
        config = ObserverConfig(
            group_id="g", shards=2, idle_grace_ms=0, commit_interval_ms=0, commit_delay_ms=0
        )
        self.world = InMemoryWorld(config)
        self.world.broker.create("orders", 1)
        self.world.broker.create("pay", 1)
        self.metrics = Metrics(CollectorRegistry())
        self.runtime = Runtime(
            config,
            load_registry([tmp_path / "flow.yaml"]),
            self.world.ports(),
            metrics=self.metrics,
            health=Health(self.world.clock.monotonic),
        )
        assert self.runtime.open()

    def send(self, topic: str, value: Any) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        self.world.produce(topic, raw)

    def turn(self, n: int = 1, seconds: float = 0.05) -> None:
        for _ in range(n):
            self.runtime.cycle()
            self.world.clock.advance(seconds)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def obs(tmp_path: Path) -> Iterator[Observer]:
    o = Observer(tmp_path)
    yield o
    o.runtime.stop()
    o.runtime.close()


def test_every_event_is_counted_by_what_became_of_it(obs: Observer) -> None:
    now = obs.world.clock.now_ms()
    obs.send("orders", {"type": "Placed", "id": "o-1", "at": now})
    obs.send("pay", {"type": "Paid", "id": "o-1"})  # matched
    obs.send("pay", {"type": "Paid", "id": "o-2"})  # no instance: buffered, later orphaned
    obs.send("pay", {"type": "Paid"})  # no key
    obs.send("orders", {"type": "Placed", "id": "o-3"})  # no time
    obs.send("orders", {"type": "Shipped", "id": "o-1", "at": now})  # a type no flow wants
    obs.send("orders", b"{not json")  # undecodable
    obs.turn(10)
    obs.turn(1, seconds=25.0)  # past the buffer: o-2's payment is orphaned
    obs.turn(10)
    obs.turn(1, seconds=5.0)  # the tally is flushed every 5 s
    obs.turn(2)
    totals = obs.world.tally.totals()
    assert {c: n for c, n in totals.items() if c[0] == "src"} == {
        ("src", "shop", "orders", "started"): 1,
        ("src", "shop", "pay", "matched"): 1,
        ("src", "shop", "pay", "buffered"): 1,
        ("src", "shop", "pay", "orphaned"): 1,
        ("src", "shop", "pay", "no_key"): 1,
        ("src", "shop", "orders", "no_time"): 1,
    }
    assert totals[("topic", "orders", "read", "")] == 4
    assert totals[("topic", "orders", "ignored", "")] == 1
    assert totals[("topic", "orders", "dead_letter", "undecodable")] == 1
    assert totals[("topic", "orders", "dead_letter", "no_time")] == 1
    assert totals[("topic", "pay", "dead_letter", "no_key")] == 1
    assert totals[("step", "shop", "placed", "observed")] == 1
    assert totals[("step", "shop", "paid", "observed")] == 1
    assert totals[("step", "shop", "paid", "orphaned")] == 1
    assert totals[("flow", "shop", "started", "")] == 1
    # the same as Prometheus metrics
    assert (
        obs.metric("observer_source_events_total", flow="shop", source="pay", kind="orphaned") == 1
    )
    assert obs.metric("observer_source_events_total", flow="shop", source="pay", kind="no_key") == 1
    assert (
        obs.metric("observer_dead_letter_reasons_total", topic="orders", reason="undecodable") == 1
    )


def test_counts_are_kept_while_the_store_is_down_and_flushed_once_it_answers(
    obs: Observer,
) -> None:
    obs.world.tally.fail = True
    obs.send("orders", {"type": "Placed", "id": "o-1", "at": obs.world.clock.now_ms()})
    obs.turn(5)
    obs.turn(1, seconds=6.0)
    obs.turn(2)
    assert obs.world.tally.minutes == {} and obs.runtime.tally
    obs.world.tally.fail = False
    obs.turn(1, seconds=6.0)
    obs.turn(2)
    assert obs.world.tally.totals()[("src", "shop", "orders", "started")] == 1


def test_a_tally_bounds_what_it_holds_and_counts_per_minute() -> None:
    now = [0]
    tally = MinuteTally(lambda: now[0])
    for minute in range(130):
        now[0] = minute * 60_000
        tally.add({("topic", "t", "read", ""): 1})
    taken = tally.take()
    assert len(taken) == 120 and min(taken) == 10 and tally.dropped == 10
    tally.restore(taken)
    assert len(tally.take()) == 120


def test_a_count_is_one_redis_field_and_back() -> None:
    count = ("flow", "shop", "ended", "compensated:late")
    assert tally_count(tally_field(count)) == count
    assert tally_count(b"src:shop:pay:no_key") == ("src", "shop", "pay", "no_key")
    assert tally_count(b"garbage") is None


def test_signals_map_to_correlation_kinds() -> None:
    assert signal_kind("deviation", "orphaned") == "orphaned"
    assert signal_kind("recorded", "buffer full: dropped Paid e-1") == "buffer_full"
    assert signal_kind("deviation", "missing") is None
    assert signal_kind("recorded", "duplicate") is None


# -- the report: counts in, sentences out ---------------------------------------------------------

CARRIER = SourceInfo(
    "delivery", "carrier", "carrier.events", key="value.tracking_no", via="tracking"
)
SHIPPING = SourceInfo("delivery", "shipping", "shop.shipping", key="value.order_id")


def src(kind: str, n: int, source: str = "carrier", flow: str = "delivery") -> dict[Any, int]:
    return {("src", flow, source, kind): n}


def report(counts: dict[Any, int], **kw: Any) -> Any:
    return assess(counts, [CARRIER, SHIPPING], period="in the last 1h", **kw)


def messages(r: Any, severity: str = "problem") -> list[str]:
    return [f.message for f in r.findings if f.severity == severity]


def test_events_that_match_nothing_are_said_in_words_with_their_share() -> None:
    counts = {
        **src("matched", 80),
        **src("buffered", 20),
        **src("orphaned", 12),
        **src("started", 50, "shipping"),
        ("topic", "carrier.events", "read", ""): 100,
        ("topic", "shop.shipping", "read", ""): 50,
    }
    r = report(counts)
    assert not r.healthy
    assert messages(r) == [
        "12 % of carrier.events events (source carrier) match no tracking registered in the "
        "last 1h: 12 orphaned (no instance started within 5m)"
    ]
    assert any(
        "20 % of carrier.events events" in m and "buffered" in m for m in messages(r, "note")
    )


def test_a_small_share_of_unmatched_events_is_only_a_note() -> None:
    r = report({**src("matched", 1000), **src("orphaned", 5), **src("buffer_full", 2)})
    assert r.healthy
    (note,) = [m for m in messages(r, "note") if "match no" in m]
    assert note.startswith("0.7 % of carrier.events") and "2 dropped because the buffer" in note


def test_events_without_a_key_name_their_selector() -> None:
    r = report({**src("started", 990, "shipping"), **src("no_key", 10, "shipping")})
    assert messages(r) == [
        "1.0 % of shop.shipping records for source shipping had no correlation key at "
        "value.order_id in the last 1h (10 dead-lettered)"
    ]


def test_dead_letters_by_reason_and_ignored_topics() -> None:
    counts = {
        **src("matched", 100),
        ("topic", "carrier.events", "read", ""): 1000,
        ("topic", "carrier.events", "dead_letter", "undecodable"): 3,
        ("topic", "carrier.events", "dead_letter", "schema"): 2,
        ("topic", "shop.shipping", "read", ""): 40,
        ("topic", "shop.shipping", "ignored", ""): 40,
    }
    r = report(counts)
    assert messages(r) == [
        "0.5 % of carrier.events records went to the dead-letter topic in the last 1h: "
        "2 schema registry: unknown, unreadable or refused schema id, 3 cannot be decoded",
        "every one of the 40 shop.shipping records in the last 1h had a type no flow wants: "
        "check the sources' type selectors and the event types in `on:`",
    ]


def test_alias_conflicts_are_always_wrong() -> None:
    r = report({**src("matched", 100), **src("alias_conflict", 1, "shipping")})
    assert [f.kind for f in r.findings if f.severity == "problem"] == ["alias_conflict"]


def test_nothing_counted_at_all_is_wrong_and_a_healthy_flow_says_so() -> None:
    empty = report({})
    assert not empty.healthy and "nothing was counted" in messages(empty)[0]
    healthy = report(
        {
            **src("matched", 100),
            **src("started", 100, "shipping"),
            ("flow", "delivery", "started", ""): 100,
            ("flow", "delivery", "ended", "completed"): 98,
            ("step", "delivery", "picked_up", "missing"): 2,
        }
    )
    assert healthy.healthy and messages(healthy) == []
    text = render_text(healthy, "observer health delivery")
    assert text.startswith("observer health delivery: looks healthy\n")
    assert (
        "delivery: 200 events from 2 sources; 100 instances started, 98 ended (98 completed); "
        "deviations: 2 missing" in text
    )
    assert "thresholds: events matching no instance >= 1.0 %" in text


def test_a_flow_filter_keeps_its_sources_and_topics_only() -> None:
    other = SourceInfo("billing", "invoices", "billing.invoices")
    counts = {
        **src("matched", 10),
        **src("orphaned", 10, "invoices", "billing"),
        ("topic", "billing.invoices", "read", ""): 10,
        ("topic", "billing.invoices", "dead_letter", "undecodable"): 10,
    }
    r = assess(counts, [CARRIER, other], period="in the last 1h", flow="delivery")
    assert r.healthy and set(r.flows) == {"delivery"} and r.topics == {}
    assert not assess(counts, [CARRIER, other], period="in the last 1h").healthy


def test_thresholds_can_be_set() -> None:
    counts = {**src("matched", 100), **src("orphaned", 5)}
    assert not report(counts).healthy
    assert report(counts, thresholds=Thresholds(unmatched=0.1)).healthy
    assert report(counts).as_json()["findings"][0]["kind"] == "unmatched"
