"""The checkout check hand-written with Quix Streams, as a user would write it.

One StreamingDataFrame per source topic (JSON values) normalises its records to
`{type, order, t, step, error}` with that source's selectors; the frames are concatenated and
a stateful `apply` keeps per-order state in Quix's State (RocksDB, changelog topic: durable)
keyed by the record key (the order id: the workload keys every topic by it, so no
`group_by` repartition is needed). Quix has no timers: pending deadlines wait per partition
and fire as that partition's event time passes them (see `checkout.Deadlines`); alerts for
any order are returned from the apply (`expand=True`) and sent with
`to_topic(..., key=order)`.
Offsets are committed by Quix (every second here, 5 s by default).

    python benchmarks/peers/quix_peer.py --spec peer-spec.json --group G --alerts-topic T \
        [--bootstrap-servers 127.0.0.1:9092] [--state-dir DIR]

Run by `benchmarks/run.py --only quix`; stop it with SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from quixstreams import Application, State, message_context

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers.checkout import Alert, CheckoutLogic, Deadlines


def build_app(args: argparse.Namespace) -> Application:
    logic = CheckoutLogic.load(args.spec)
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=args.state_dir,
        loglevel=args.log_level.upper(),
    )
    alerts = app.topic(args.alerts_topic, value_serializer="json")
    deadlines = Deadlines(logic.topics)
    awaited: set[tuple[str, str]] = set()  # (order, step) still awaited: State is per key

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
        if event["step"] is not None:
            awaited.discard((key, event["step"]))
        if after["closed"]:
            awaited.difference_update({(key, s) for s in logic.steps})
        ctx = message_context()
        for due, name in schedule:
            deadlines.add(ctx.partition, due, key, name)
            awaited.add((key, name))
        now = deadlines.observe(ctx.topic, ctx.partition, t)
        for due, other, name in deadlines.due(ctx.partition, now):
            if (other, name) in awaited:
                awaited.discard((other, name))
                out.append(logic.alert(other, "missing", name, due, None))
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
    ap.add_argument("--state-dir", default="/tmp/quix-peer")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()
    build_app(args).run()


if __name__ == "__main__":
    main()
