"""Correlation health on the real broker and Redis: events that match nothing, events without a
key and events of a type no flow wants are counted in Prometheus and in the per-minute hashes,
and `observer health` (another process's view: it reads Redis only) says so in words."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from click.testing import CliRunner

from observer.cli import main
from tests.integration.harness import Harness, make, now_ms

__all__ = ["make"]

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: P.orders, type: value.type, key: value.id, id: header.eid}
  pay: {topic: P.pay, type: value.type, key: value.id, id: header.eid}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 1h
buffer: 1s
"""


def health(h: Harness, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["health", *args, "--redis-url", h.redis_url, "--key-prefix", h.key_prefix],
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def test_unmatched_keyless_and_ignored_events_are_counted_and_reported(
    make: Callable[..., Harness],
) -> None:
    h = make(FLOW)
    h.start()
    t = now_ms()
    for key in ("a1", "a2", "a3"):
        h.send("Placed", key, t)
    h.processed()  # the instances are open: their payments match them
    for key in ("a1", "a2", "a3"):
        h.send("Paid", key, t + 10)
    h.send("Paid", "nobody", t)  # no instance ever starts: buffered, orphaned after 1s
    h.send("Paid", "x", t, raw=orjson.dumps({"type": "Paid"}))  # no key
    h.send("Refunded", "a1", t)  # a type no flow wants

    def report() -> Any:
        code, out = health(h, "--format", "json")
        doc = orjson.loads(out)
        pay = doc["flows"].get("shop", {}).get("sources", {}).get("pay", {})
        return (code, doc) if pay.get("orphaned") and pay.get("matched") == 3 else None

    code, doc = h.wait_for(report, timeout=40, message="observer health to see the orphan")
    assert code == 1 and doc["healthy"] is False
    pay = doc["flows"]["shop"]["sources"]["pay"]
    assert (pay["matched"], pay["buffered"], pay["orphaned"], pay["no_key"]) == (3, 1, 1, 1)
    assert doc["flows"]["shop"]["sources"]["orders"] == {"started": 3}
    assert doc["topics"][h.t("pay")]["ignored"] == 1
    assert doc["topics"][h.t("pay")]["dead_letters"] == {"no_key": 1}
    unmatched = next(f for f in doc["findings"] if f["kind"] == "unmatched")
    assert unmatched["message"] == (
        f"25 % of {h.t('pay')} events (source pay) match no instance in the last 1h: "
        "1 orphaned (no instance started within 1s)"
    )

    code, text = health(h, "shop", "--since", "30m")
    assert code == 1
    assert text.startswith(f"observer health shop, key prefix {h.key_prefix}, ")
    assert "shop: 7 events from 2 sources; 3 instances started" in text
    assert f"problem: 25 % of {h.t('pay')} events (source pay) match no instance" in text
    assert (
        f"problem: 20 % of {h.t('pay')} records for source pay had no correlation key at "
        "value.id in the last 30m (1 dead-lettered)" in text
    )

    metrics = h.api("/metrics").text
    for kind, n in (("matched", 3), ("orphaned", 1), ("no_key", 1)):
        line = f'observer_source_events_total{{flow="shop",kind="{kind}",source="pay"}} {n}.0'
        assert re.search("^" + re.escape(line) + "$", metrics, re.M), line
    assert f'observer_dead_letter_reasons_total{{reason="no_key",topic="{h.t("pay")}"}} 1.0' in (
        metrics
    )


def test_a_flow_whose_events_all_match_is_healthy(make: Callable[..., Harness]) -> None:
    h = make(FLOW)
    h.start()
    t = now_ms()
    h.send("Placed", "b1", t)
    h.send("Paid", "b1", t + 10)

    def counted() -> Any:
        code, out = health(h)
        return (code, out) if "2 events from 2 sources" in out else None

    code, out = h.wait_for(counted, timeout=30, message="the counts in Redis")
    assert code == 0 and ": looks healthy\n" in out.splitlines()[0] + "\n"
