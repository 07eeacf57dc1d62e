"""`observer backtest` against the real broker (contract §8): a workload written to Kafka with
timestamps in the past, whose answer `observer replay` gives over the same records; instances
open when the period starts are rebuilt from the warm-up and not counted; `--against-live`
names the alerts only the live observer raised and those only the backtest would, by key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from observer.replay import run_replay

pytestmark = pytest.mark.timeout(180)

OBSERVER = str(Path(sys.executable).with_name("observer"))
FLOW = """
flow: bt
version: 1
sources:
  orders: {{topic: {p}-orders, type: value.type, key: value.id}}
  pay: {{topic: {p}-pay, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 30s
    warn: 20s
    if_missing: [cancel]
buffer: 1m
actions:
  cancel:
    publish: {{topic: {p}-cmds, key: "{{{{ key }}}}", value: {{type: Cancel, id: "{{{{ key }}}}"}}}}
"""
ORDERS = 60
WARM = 5  # orders placed before the period, never paid: their `missing` falls in it


def workload(p: str, since: int) -> list[dict[str, Any]]:
    """Orders every 7 s from the start of the period, paid after 0..40 s (some late, some not
    at all); and WARM orders a minute before the period. Every timestamp distinct."""
    out = []
    for i in range(WARM):
        out.append(_rec(f"{p}-orders", "Placed", f"w-{i}", since - 60_000 + i * 1000 + 1))
    for i in range(ORDERS):
        t = since + 1000 + i * 7000 + i
        out.append(_rec(f"{p}-orders", "Placed", f"o-{i}", t))
        if i % 6:
            out.append(_rec(f"{p}-pay", "Paid", f"o-{i}", t + (i % 9) * 5000 + 3))
    return sorted(out, key=lambda r: r["timestamp"])


def _rec(topic: str, etype: str, key: str, at: int) -> dict[str, Any]:
    return {"topic": topic, "key": key, "value": {"type": etype, "id": key}, "timestamp": at}


def backtest(env: dict[str, str], flow: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [OBSERVER, "backtest", str(flow), "--format", "json", *args],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"backtest: read" in done.stderr
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def alert_keys(alerts: list[dict[str, Any]]) -> Counter[tuple[str, str, str | None]]:
    return Counter((a["key"], a["kind"], a["step"]) for a in alerts)


def test_backtest_answers_what_replay_answers_and_compares_with_the_live_alerts(
    stack: Any, unique: str, create_topics: Any, tmp_path: Path
) -> None:
    p = unique
    create_topics([f"{p}-orders"], partitions=3)
    create_topics([f"{p}-pay", f"{p}-alerts"], partitions=2)
    flow = tmp_path / "bt.yaml"
    flow.write_text(FLOW.format(p=p))
    now = time.time_ns() // 1_000_000
    since = (now - 3_600_000) // 1000 * 1000  # an hour ago
    until = since + ORDERS * 7000 + 120_000
    records = workload(p, since)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})
    for r in records:
        producer.produce(
            r["topic"], orjson.dumps(r["value"]), r["key"].encode(), timestamp=r["timestamp"]
        )
    assert producer.flush(30) == 0

    # what replay says over the records of the period
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(orjson.dumps(r).decode() + "\n" for r in records if r["timestamp"] >= since)
    )
    lines = [orjson.loads(x) for x in run_replay(str(flow), str(events), until - 1, [])]
    replay_alerts = [x["value"] for x in lines if x["topic"] == "observer.alerts"]
    replay_outcomes = Counter(
        x["value"]["outcome"] for x in lines if x["topic"] == "observer.outcomes"
    )
    assert replay_alerts and replay_outcomes["completed"] == ORDERS - ORDERS // 6

    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update(
        OBSERVER_BOOTSTRAP_SERVERS=stack.bootstrap_servers, OBSERVER_ALERTS_TOPIC=f"{p}-alerts"
    )
    period = ["--since", str(since), "--until", str(until)]
    bare = backtest(env, flow, *period, "--warmup", "0")
    (tally,) = bare["flows"]
    assert tally["instances"] == ORDERS and tally["not_counted"] == 0
    assert tally["outcomes"] == {"completed": replay_outcomes["completed"], "open": ORDERS // 6}
    deviations = {(d["kind"], d["step"]): d["count"] for d in tally["deviations"]}
    assert deviations == Counter((a["kind"], a["step"]) for a in replay_alerts)
    assert bare["published"]["alert"] == len(replay_alerts)
    (paid,) = tally["steps"]
    assert paid["count"] == ORDERS - ORDERS // 6 and paid["max_ms"] == 40_003
    assert paid["within_ms"] == 30_000 and paid["p50_ms"] == 20_003

    # the live observer's alerts: the replay's without two, one it would not raise, and the
    # warm orders' missing payments (decided in the period, for instances started before it)
    removed = [a for a in replay_alerts if a["kind"] == "missing"][:2]
    extra = {**replay_alerts[0], "key": "o-999", "kind": "late"}
    warm = [
        {
            "flow": "bt",
            "key": f"w-{i}",
            "kind": "missing",
            "step": "paid",
            "version": 1,
            "deadline": records[i]["timestamp"] + 30_000,
        }
        for i in range(WARM)
    ]
    live = [a for a in replay_alerts if a not in removed] + [extra] + warm
    for a in live:
        producer.produce(f"{p}-alerts", orjson.dumps(a), a["key"].encode())
    assert producer.flush(30) == 0

    full = backtest(env, flow, *period, "--against-live")
    (tally,) = full["flows"]
    assert tally["instances"] == ORDERS and tally["not_counted"] == WARM
    against = full["against_live"]
    assert against["live_alerts"] == len(replay_alerts) - 2 + 1
    assert against["same"] == len(replay_alerts) - 2
    assert alert_keys(against["live_only"]) == Counter({("o-999", "late", "paid"): 1})
    assert alert_keys(against["backtest_only"]) == alert_keys(removed)

    # suggest: from the same period, the proposed window and what it would have raised
    proposed = tmp_path / "bt-v2.yaml"
    done = subprocess.run(
        [OBSERVER, "suggest", str(flow), *period, "--format", "json", "--write", str(proposed)],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    (suggested,) = orjson.loads(done.stdout)["flows"]
    (step,) = suggested["steps"]
    assert step["within_ms"] == {"now": 30_000, "proposed": 60_000}  # p99 40s x 1.25 -> 1m
    assert step["missing"] == {"now": deviations[("missing", "paid")], "proposed": ORDERS // 6}
    assert step["late"]["now"] > 0 and step["late"]["proposed"] == 0
    text = proposed.read_text()
    assert "version: 2" in text and "within: 1m" in text
    assert (
        text.replace("version: 2", "version: 1")
        .replace("within: 1m", "within: 30s")
        .replace(f"warn: {text.split('warn: ')[1].split()[0]}", "warn: 20s")
        == flow.read_text()
    )
