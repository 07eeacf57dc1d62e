"""The checkout check hand-written with faust-streaming, as a user would write it.

One agent over every source topic (JSON values); per-order state in a faust `Table` (memory
store, changelog topic: durable in Kafka, recovered on rebalance); pending deadlines per
partition, judged as that partition's event time passes them plus a grace of one window (see
`checkout.Deadlines`) and by a timer once the stream is idle; alerts to a topic with `send`.
Offsets are committed by faust (every second here, 2.8 s by default).

    python benchmarks/peers/faust_peer.py --spec peer-spec.json --group G --alerts-topic T \
        [--bootstrap-servers 127.0.0.1:9092] [--data-dir DIR]

Run by `benchmarks/run.py --only faust`; stop it with SIGTERM. Installed with the `bench` extra
(`benchmarks/.venv/bin/pip install -r benchmarks/peers/requirements.txt`, see quix_peer.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.checkout import CheckoutLogic, Deadlines


def build_app(args: argparse.Namespace) -> faust.App:
    logic = CheckoutLogic.load(args.spec)
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap_servers}",
        store="memory://",
        datadir=args.data_dir,
        topic_partitions=args.partitions,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
    )
    sources = app.topic(*logic.topics, key_serializer="raw", value_serializer="json")
    alerts = app.topic(args.alerts_topic, key_serializer="raw", value_serializer="json")
    orders = app.Table("orders", default=None, partitions=args.partitions)
    deadlines = Deadlines(logic)
    last_event = {"at": time.monotonic()}

    async def fire(partition: int, now: int | None) -> None:
        for due, key, step in deadlines.due(partition, now):
            alert = logic.check(orders.get(key), key, step, due)
            if alert is not None:
                await alerts.send(key=key.encode(), value=alert)

    @app.agent(sources)
    async def checkout(stream: Any) -> None:
        async for event in stream.events():
            tp = event.message.tp
            headers = event.headers or {}
            got = logic.read(tp.topic, event.value, headers, event.key)
            if got is None:
                continue
            key, _etype, t, step, is_error = got
            state, out, schedule = logic.on_event(orders.get(key), key, step, is_error, t)
            orders[key] = state
            for alert in out:
                await alerts.send(key=key.encode(), value=alert)
            for due, name in schedule:
                deadlines.add(tp.partition, due, key, name)
            last_event["at"] = time.monotonic()
            await fire(tp.partition, deadlines.observe(tp.topic, tp.partition, t))

    @app.timer(interval=0.5)
    async def idle_deadlines() -> None:
        # nothing read for a second: the stream is caught up, its time is the wall clock
        if time.monotonic() - last_event["at"] > 1.0:
            for partition in deadlines.partitions():
                await fire(partition, time.time_ns() // 1_000_000)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--group", required=True, help="faust app id = consumer group")
    ap.add_argument("--alerts-topic", required=True)
    ap.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--data-dir", default=None, help="(default: a new temporary folder)")
    ap.add_argument("--log-level", default="warn", help="crit|error|warn|info|debug")
    args = ap.parse_args()
    args.data_dir = args.data_dir or tempfile.mkdtemp(prefix="faust-peer-")
    app = build_app(args)
    sys.argv = [sys.argv[0], "worker", "-l", args.log_level]
    app.main()


if __name__ == "__main__":
    main()
