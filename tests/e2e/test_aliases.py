"""Aliases across processes (contract section 6): two `observer run` processes share 2 shards,
one each, and every order's slot lives in one shard while its tracking number's slot lives in
the other, so every event via the tracking number is read by one process and applied by the
other, after a second hop through the keyed topic. Carrier events come before and after the
booking that registers their tracking number; some never come (their `missing` must fire once)
and some tracking numbers are nobody's (`orphaned`, by alias). Every event via an alias is
applied once, to the right order, and no `missing` is false. `observer status --via` finds an
order by its tracking number."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from observer.flows.aliases import alias_flow
from observer.runtime.shards import shard_of, slot_id
from tests.e2e.conftest import OBSERVER, ObserverProcess, ObserverProcesses, observer_env
from tests.integration.kafka_helpers import Record, consume_all

pytestmark = pytest.mark.timeout(240)

FLOW = """
flow: parcels
version: 1
sources:
  orders: {{topic: {p}-orders, type: value.type, key: value.id, id: value.eid}}
  carrier: {{topic: {p}-carrier, type: value.type, key: value.tn, id: value.eid, via: tracking}}
aliases:
  tracking: {{from: orders.Booked, value: value.tn}}
steps:
  - step: placed
    on: orders.Placed
  - step: booked
    on: orders.Booked
    within: 10s
  - step: delivered
    on: carrier.Delivered
    within: 3s
    if_missing: [chase]
buffer: 2s
retain: 1h
actions:
  chase:
    publish: {{topic: {p}-cmds, key: "{{{{ aliases.tracking }}}}", value: {{tn: "{{{{ aliases.tracking }}}}"}}}}
"""
SHARDS = 2
ORDERS = 60  # of each kind below
KINDS = ("early", "late", "never")  # Delivered read before Booked, after it, or never


def metric(p: ObserverProcess, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{p.port}/metrics", timeout=5).text
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def split_pairs(n: int) -> list[tuple[str, str]]:
    """(order key, tracking number) pairs whose slots are in different shards."""
    out: list[tuple[str, str]] = []
    i = 0
    while len(out) < n:
        key, tn = f"o-{i}", f"tn-{i}"
        if shard_of(slot_id("parcels", key), SHARDS) != shard_of(
            slot_id(alias_flow("parcels", "tracking"), tn), SHARDS
        ):
            out.append((key, tn))
        i += 1
    return out


def values(records: list[Record]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value or b"{}") for r in records]


def test_events_via_an_alias_cross_processes_once_and_to_the_right_order(
    stack: Any,
    unique: str,
    create_topics: Any,
    observer_procs: ObserverProcesses,
    tmp_path: Path,
    figures: list[str],
) -> None:
    create_topics([f"{unique}-orders", f"{unique}-carrier"], partitions=2)
    create_topics([f"{unique}-{t}" for t in ("alerts", "outcomes", "dlq", "cmds")], 1)
    flow = tmp_path / "parcels.yaml"
    flow.write_text(FLOW.format(p=unique))
    env = observer_env(
        stack,
        unique,
        OBSERVER_SHARDS=str(SHARDS),
        OBSERVER_IDLE_GRACE_MS="300",
        OBSERVER_COMMIT_INTERVAL_MS="50",
        OBSERVER_KAFKA_SESSION_TIMEOUT_MS="6000",
    )
    a, b = observer_procs.start_all(["a", "b"], flow, env)
    until = time.monotonic() + 60
    while (metric(a, "observer_owned_shards"), metric(b, "observer_owned_shards")) != (1.0, 1.0):
        assert time.monotonic() < until, f"the shards were never split: a {a.tail(5)}"
        time.sleep(0.2)

    pairs = split_pairs(len(KINDS) * ORDERS)
    kind_of = {key: KINDS[i % len(KINDS)] for i, (key, _tn) in enumerate(pairs)}
    prod = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})

    def send(topic: str, etype: str, at: int, **value: Any) -> None:
        body = orjson.dumps({"type": etype, "eid": f"{etype}-{value}", **value})
        prod.produce(f"{unique}-{topic}", body, os.urandom(4), timestamp=at)

    for key, tn in pairs:
        t = int(time.time() * 1000)
        if kind_of[key] == "early":
            send("carrier", "Delivered", t + 200, tn=tn)
        send("orders", "Placed", t, id=key)
        send("orders", "Booked", t + 100, id=key, tn=tn)
        if kind_of[key] == "late":
            send("carrier", "Delivered", t + 300, tn=tn)
        prod.poll(0)
        time.sleep(0.01)
    orphans = [f"nobody-{i}" for i in range(5)]
    for tn in orphans:
        send("carrier", "Delivered", int(time.time() * 1000), tn=tn)
    assert prod.flush(30) == 0

    delivered = {k for k, kind in kind_of.items() if kind != "never"}
    never = {k for k, kind in kind_of.items() if kind == "never"}
    outcomes = consume_all(
        stack.bootstrap_servers,
        f"{unique}-outcomes",
        timeout=90,
        until=lambda rs: {v["key"] for v in values(rs)} >= delivered,
    )
    alerts = consume_all(
        stack.bootstrap_servers,
        f"{unique}-alerts",
        timeout=60,
        until=lambda rs: len(values(rs)) >= len(never) + len(orphans),
    )
    # one more order that never delivers, after all the others: once its `missing` is out, a
    # false or repeated `missing` of the others would be too
    key, tn = split_pairs(len(pairs) + 1)[-1]
    t = int(time.time() * 1000)
    send("orders", "Placed", t, id=key)
    send("orders", "Booked", t + 100, id=key, tn=tn)
    assert prod.flush(30) == 0
    last = consume_all(
        stack.bootstrap_servers,
        f"{unique}-alerts",
        timeout=60,
        until=lambda rs: any(v["key"] == key for v in values(rs)),
    )
    alerts = [v for v in values(last) if v["key"] != key]

    done = {v["key"]: v for v in values(outcomes)}
    assert set(done) == delivered, sorted(set(done) ^ delivered)[:5]
    assert all(done[k]["deviations"] in ([], ["out_of_order"]) for k in delivered)
    assert all(done[k]["aliases"] == {"tracking": dict(pairs)[k]} for k in delivered)
    missing = [v["key"] for v in alerts if v["kind"] == "missing"]
    assert sorted(missing) == sorted(never), "false or repeated `missing` alerts"
    orphaned = [v for v in alerts if v["kind"] == "orphaned"]
    assert sorted(v["key"] for v in orphaned) == orphans
    assert all(v["alias"] == "tracking" for v in orphaned)
    assert len(alerts) == len(never) + len(orphans), [v["kind"] for v in alerts]
    cmds = values(consume_all(stack.bootstrap_servers, f"{unique}-cmds"))
    assert sorted(c["tn"] for c in cmds) == sorted([*(dict(pairs)[k] for k in never), tn])

    # "where is my parcel?": found by its tracking number, whichever process is asked
    some_key, some_tn = next((k, t) for k, t in pairs if k in delivered)
    status = subprocess.run(
        [OBSERVER, "status", "parcels", some_tn, "--via", "tracking", "--flows", str(flow)],
        env={**env, "OBSERVER_KEY_PREFIX": f"{unique}:state"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert f"via tracking {some_tn}" in status.stdout
    assert f"parcels {some_key}: ended" in status.stdout
    for p in (a, b):
        view = httpx.get(
            f"http://127.0.0.1:{p.port}/instances/parcels/{some_tn}?via=tracking", timeout=5
        ).json()
        assert view["key"] == some_key and view["aliases"] == {"tracking": some_tn}
    figures.append(
        f"orders {len(pairs)} (delivered before booking {ORDERS}, after {ORDERS}, never "
        f"{ORDERS}), orphans {len(orphans)}; every order slot and its tracking number's in "
        f"different shards of different processes; outcomes {len(done)}, missing "
        f"{len(missing)}, orphaned {len(orphaned)}"
    )
    assert "Traceback" not in a.log + b.log
