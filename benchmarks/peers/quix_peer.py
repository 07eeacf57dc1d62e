"""The checkout check hand-written with Quix Streams, as a user would write it.

One StreamingDataFrame per source topic (JSON values) normalises its records to
`{type, order, t, step, error}` with that source's selectors; the frames are concatenated (Quix
then reads the topics aligned by timestamp) and a stateful `apply` keeps per-order state in
Quix's State (RocksDB, changelog topic: durable) keyed by the record key (the order id: the
workload keys every topic by it, so no `group_by` repartition is needed). Pending deadlines wait
per partition and are judged as that partition's event time passes them plus a grace of one
window (see `checkout.Deadlines`: without it a late step, read in timestamp order, is nearly
always `missing` too, which is not what is due on the benchmark's workload); alerts for any
order are returned from the apply (`expand=True`) and sent with `to_topic(..., key=order)`.
Quix has no timers: a thread (`CaughtUpJudge`) judges the deadlines of a partition whose
source partitions are all read to their end against the wall clock (less half a second, for
records produced a moment ago), as the observer does with a fully read partition; it sends
those alerts with a producer of its own.
Offsets are committed by Quix (every second here, 5 s by default).

    python benchmarks/peers/quix_peer.py --spec peer-spec.json --group G --alerts-topic T \
        [--bootstrap-servers 127.0.0.1:9092] [--state-dir DIR]

Run by `benchmarks/run.py --only quix`; stop it with SIGTERM. Installed with the `bench` extra
in its own environment (quixstreams pins older confluent-kafka and pydantic):
`python -m venv benchmarks/.venv && benchmarks/.venv/bin/pip install -r benchmarks/peers/requirements.txt`
(the peers import nothing of the observer, so the project is not installed there).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from quixstreams import Application, State, message_context

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.checkout import Alert, CheckoutLogic, Deadlines

CAUGHT_UP_GRACE_MS = 500  # a fully read partition is at the wall clock less this


class Pending:
    """The deadlines to judge, the (order, step) pairs still awaited and how far each source
    partition was read: shared by the processing loop and `CaughtUpJudge` (Quix's State is per
    key: another order's state cannot be read when its deadline comes, so what is awaited is
    kept here)."""

    def __init__(self, logic: CheckoutLogic) -> None:
        self.logic = logic
        self.deadlines = Deadlines(logic)
        self.awaited: set[tuple[str, str]] = set()
        self.read_to: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self.lock = threading.Lock()

    def processed(self, topic: str, partition: int, offset: int) -> None:
        """Quix's `on_message_processed`: every record, those of no interest included."""
        self.read_to[(topic, partition)] = offset + 1

    def judge(self, partition: int, now: int | None) -> list[Alert]:
        """`missing` alerts of the partition's deadlines that event time `now` has passed
        (the caller holds the lock)."""
        out = []
        for due, key, name in self.deadlines.due(partition, now):
            if (key, name) in self.awaited:
                self.awaited.discard((key, name))
                out.append(self.logic.alert(key, "missing", name, due, None))
        return out


class CaughtUpJudge(threading.Thread):
    """Every half second: the partitions read to the end of every source topic have their
    deadlines judged against the wall clock, and the alerts are sent."""

    def __init__(self, app: Application, pending: Pending, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="caught-up-judge")
        self.app, self.pending, self.topic = app, pending, topic
        self.ends = Consumer({"bootstrap.servers": bootstrap, "group.id": "quix-peer-ends"})

    def caught_up(self) -> list[int]:
        """Partition numbers whose source partitions are all read to their end offsets."""
        topics = self.pending.logic.topics
        meta = self.ends.list_topics(timeout=5).topics
        counts = {t: len(meta[t].partitions) for t in topics if t in meta}
        done = []
        for part in range(max(counts.values(), default=0)):
            for t in topics:
                if part >= counts.get(t, 0):
                    continue
                low, high = self.ends.get_watermark_offsets(TopicPartition(t, part), timeout=5)
                with self.pending.lock:
                    at = self.pending.read_to.get((t, part), low)
                if at < high:
                    break
            else:
                done.append(part)
        return done

    def run(self) -> None:
        with self.app.get_producer() as producer:
            while True:
                time.sleep(0.5)
                try:
                    parts = self.caught_up()
                except KafkaException:
                    continue  # the broker away: try again
                now = time.time_ns() // 1_000_000 - CAUGHT_UP_GRACE_MS
                with self.pending.lock:
                    alerts = [a for part in parts for a in self.pending.judge(part, now)]
                for alert in alerts:
                    producer.produce(self.topic, json.dumps(alert).encode(), alert["key"].encode())
                if alerts:
                    producer.flush()


def build_app(args: argparse.Namespace) -> Application:
    logic = CheckoutLogic.load(args.spec)
    pending = Pending(logic)
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=args.state_dir,
        loglevel=args.log_level.upper(),
        on_message_processed=pending.processed,
    )
    alerts = app.topic(args.alerts_topic, value_serializer="json")
    CaughtUpJudge(app, pending, args.bootstrap_servers, args.alerts_topic).start()

    def normaliser(topic: str) -> Any:
        def normalise(value: Any, key: Any, timestamp: int, headers: Any) -> dict[str, Any]:
            h = dict(headers) if headers else {}
            got = logic.read(topic, value, h, key)
            if got is None:
                return {"skip": True}
            order, _etype, t, step, is_error = got
            return {"order": order, "t": t, "step": step, "error": is_error}

        return normalise

    def check_order(event: dict[str, Any], state: State) -> list[Alert]:
        if event.get("skip"):
            return []
        key, t = event["order"], event["t"]
        after, out, schedule = logic.on_event(
            state.get("order"), key, event["step"], event["error"], t
        )
        state.set("order", after)
        ctx = message_context()
        with pending.lock:
            awaited = pending.awaited
            if event["step"] is not None:
                awaited.discard((key, event["step"]))
            if after["closed"]:
                awaited.difference_update({(key, s) for s in logic.steps})
            for due, name in schedule:
                pending.deadlines.add(ctx.partition, due, key, name)
                awaited.add((key, name))
            now = pending.deadlines.observe(ctx.topic, ctx.partition, t)
            out += pending.judge(ctx.partition, now)
        return out

    frames = []
    for topic_name in logic.topics:
        sdf = app.dataframe(app.topic(topic_name, value_deserializer="json"))
        frames.append(sdf.apply(normaliser(topic_name), metadata=True))
    sdf = frames[0]
    for other in frames[1:]:
        sdf = sdf.concat(other)
    sdf = sdf.apply(check_order, stateful=True, expand=True)
    sdf.to_topic(alerts, key=lambda alert: alert["key"])
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--alerts-topic", required=True)
    ap.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    ap.add_argument("--state-dir", default=None, help="(default: a new temporary folder)")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()
    args.state_dir = args.state_dir or tempfile.mkdtemp(prefix="quix-peer-")
    build_app(args).run()


if __name__ == "__main__":
    main()
