"""What the web console's count of waiting instances costs (docs/console.md).

Builds N open checkout instances spread over the main path (each stopped after a random number
of its steps), then measures (1) `count_waiting` over their states (CPU of the process that
counts: decode + which steps wait) and, with `--redis URL`, (2) reading them back from Redis
buckets the way `RedisConsoleStore.slots` does (shards x buckets HGETALLs). Not a test:
`python benchmarks/console.py [--orders 20000] [--redis redis://127.0.0.1:6379/0]`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from observer.console.waiting import count_waiting
from observer.engine.codec import encode_slot
from observer.engine.core import Engine
from observer.engine.state import Event, KeySlot
from observer.flows.compiler import load_registry

T0 = 1_767_225_600_000
REPO = Path(__file__).resolve().parents[1]


def states(orders: int) -> tuple[Engine, list[tuple[str, bytes]]]:
    registry = load_registry([REPO / "flows" / "checkout.yaml"])
    flow = registry.newest("checkout")
    engine = Engine(registry)
    rng = random.Random(7)
    main = list(flow.paths[0].steps)
    out = []
    for i in range(orders):
        key = f"o-{i:07d}"
        slot = KeySlot("checkout", key)
        t = T0 + i
        for n, idx in enumerate(main[: 1 + rng.randrange(len(main) - 1)]):
            src, etype = sorted(flow.steps[idx].on)[0]
            event = Event(src, etype, key, f"{key}-{n}", t + 100 * n, {})
            engine.apply(slot, event, t + 100 * n)
        out.append((key, encode_slot(slot)))
    return engine, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    engine, slots = states(args.orders)
    size = sum(len(s) for _, s in slots)
    started = time.process_time()
    result = count_waiting(engine, "checkout", slots, T0 + 60_000)
    cpu = time.process_time() - started
    waiting = sum(c["waiting"] for c in result["versions"]["1"]["steps"].values())
    print(f"{args.orders} open instances ({size / args.orders:.0f} B of state each)")
    print(f"count_waiting: {cpu * 1000:.0f} ms CPU ({cpu / args.orders * 1e6:.1f} µs each), "
          f"{waiting} waits, result {len(str(result)) // 1024} KiB")  # fmt: skip
    if args.redis:
        redis_read(args.redis, slots)


def redis_read(url: str, slots: list[tuple[str, bytes]]) -> None:
    import redis

    from observer.adapters.redis.console import RedisConsoleStore
    from observer.adapters.redis.keys import Keys, encode_key, pack_value
    from observer.redis_settings import parse_redis_url

    prefix = f"bench-console-{time.time_ns()}"
    keys = Keys(prefix, 16, 64)
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for key, state in slots:
        sid = f"checkout:{key}"
        pipe.hset(keys.bucket(keys.shard_of(sid), sid), encode_key(key), pack_value(None, state))
    pipe.execute()
    store = RedisConsoleStore(parse_redis_url(url), prefix, 16, 64)
    try:
        started, cpu0 = time.perf_counter(), time.process_time()
        n = sum(1 for _ in store.slots("checkout", 10**9))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        print(
            f"reading {n} slots from 16 x 64 buckets: {wall * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU)"
        )
    finally:
        store.close()
        doomed = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(doomed), 500):
            client.delete(*doomed[i : i + 500])
        client.close()


if __name__ == "__main__":
    main()
