"""Redis memory per open checkout instance, layout by layout, measured on a private
redis-server (unix socket, no persistence, the listpack settings of `ops/stack`) started and
stopped by this script.

States are the open instances in the middle of the `benchmarks/pipeline.py` workload, written
under `--instances` distinct UUID keys. Layouts:
  - a string key per slot + a due member per slot (store format 1), state format 1 and 2,
    history on (the entries the workload gives) or off, and with shorter key names;
  - slots as fields of bucket hashes with a due sorted set per bucket (member = field), with
    text fields and with 16-byte UUID fields;
  - what `RedisStateStore` writes now (format 2: bucket hashes, due time in the value, one due
    index member per bucket), through the store itself.
Not a test: `python benchmarks/redis_memory.py [--instances N]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from benchmarks.pipeline import Pipeline, build_records
from observer.adapters.redis.keys import Keys
from observer.adapters.redis.store import LISTPACK_SETTINGS, RedisStateStore
from observer.engine.codec import decode_slot
from observer.engine.state import KeySlot
from observer.flows.compiler import load_registry
from observer.runtime.ports import SlotPut, WriteBatch
from observer.runtime.shards import shard_of

REPO = Path(__file__).resolve().parents[1]
SHARDS = 16


def format_1(slot: KeySlot, registry: Any) -> bytes:
    """The bytes the previous codec (format 1) wrote for the same slot."""
    import orjson

    inst = slot.instance
    assert inst is not None
    flow = registry.get(slot.flow, inst.version)
    s = inst.started_at

    def flat(d: dict[int, int], base: int = 0) -> list[int]:
        return [x for k, v in d.items() for x in (k, v - base)]

    caps = [
        [k, dict(zip(flow.steps[k].capture_names, v, strict=False)) if isinstance(v, list) else v]
        for k, v in inst.captured.items()
    ]
    devs = [x for d in inst.deviations for x in d]
    return orjson.dumps(
        [
            1,
            inst.version,
            s,
            inst.path,
            inst.sla,
            inst.outcome,
            None if inst.ended_at is None else inst.ended_at - s,
            flat(inst.entries, s),
            flat(inst.observed, s),
            flat(inst.flags),
            flat(inst.ids),
            inst.error_ids,
            devs,
            caps,
            None,
        ]
    )


def measure(
    r: redis.Redis,
    rows: list[tuple[str, bytes, list[bytes]]],
    prefix: str,
    slot_tag: str,
    hist_tag: str,
    history: bool,
) -> float:
    r.flushall()
    time.sleep(0.05)
    base = int(r.info("memory")["used_memory"])
    pipe = r.pipeline(transaction=False)
    for i, (sid, state, hist) in enumerate(rows):
        s = shard_of(sid, SHARDS)
        pipe.set(f"{prefix}:{{{s}}}:{slot_tag}:{sid}", state, px=3_600_000)
        pipe.zadd(f"{prefix}:{{{s}}}:due", {sid: 1_767_225_600_000 + i})
        if history and hist:
            hkey = f"{prefix}:{{{s}}}:{hist_tag}:{sid}"
            pipe.rpush(hkey, *hist)
            pipe.pexpire(hkey, 3_600_000)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    used = int(r.info("memory")["used_memory"])
    return (used - base) / len(rows)


def measure_bucket_zsets(
    r: redis.Redis, rows: list[tuple[str, bytes, list[bytes]]], compact: bool
) -> float:
    """Slots as fields of bucket hashes (`Keys` buckets), a due sorted set per bucket with the
    field as member, an index of buckets per shard; TTLs on the bucket keys."""
    keys = Keys("observer", SHARDS)
    r.flushall()
    time.sleep(0.05)
    base = int(r.info("memory")["used_memory"])
    pipe = r.pipeline(transaction=False)
    earliest: dict[tuple[int, str], int] = {}
    for i, (sid, state, _) in enumerate(rows):
        s = keys.shard_of(sid)
        m = keys.member(sid)
        field = keys.field(sid) if compact else sid.encode()
        due = 1_767_225_600_000 + i
        pipe.hset(f"observer:{{{s}}}:b:{m}", field, state)
        pipe.zadd(f"observer:{{{s}}}:d:{m}", {field: due})
        earliest[(s, m)] = min(earliest.get((s, m), due), due)
        if i % 1000 == 999:
            pipe.execute()
    for (s, m), due in earliest.items():
        pipe.zadd(f"observer:{{{s}}}:due", {m: due})
        pipe.pexpire(f"observer:{{{s}}}:b:{m}", 3_600_000)
        pipe.pexpire(f"observer:{{{s}}}:d:{m}", 3_600_000)
    pipe.execute()
    used = int(r.info("memory")["used_memory"])
    return (used - base) / len(rows)


def measure_store(
    r: redis.Redis, url: str, rows: list[tuple[str, bytes, list[bytes]]], history: bool
) -> float:
    """What `RedisStateStore` writes (through its own write path, batches of 1000)."""
    keys = Keys("observer", SHARDS)
    r.flushall()
    time.sleep(0.05)
    base = int(r.info("memory")["used_memory"])
    store = RedisStateStore(url, keys)
    store.open(SHARDS, {})
    try:
        for start in range(0, len(rows), 1000):
            puts = [
                SlotPut(
                    keys.shard_of(sid),
                    sid,
                    state,
                    3_600_000,
                    1_767_225_600_000 + start + j,
                    hist if history else [],
                )
                for j, (sid, state, hist) in enumerate(rows[start : start + 1000])
            ]
            store.write(WriteBatch(puts=puts)).result()
    finally:
        store.close()
    used = int(r.info("memory")["used_memory"])
    return (used - base) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--instances", type=int, default=50_000)
    ap.add_argument("--orders", type=int, default=10_000)
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found")

    files, records = build_records(args.orders, 200.0, 7, REPO / "flows" / "checkout.yaml")
    registry = load_registry([files.flow_dir])
    p = Pipeline(registry, 1000, 100)
    ingest = p.ingest
    half = records[: len(records) // 2]
    for i in range(0, len(half), 1000):
        rb = half[i : i + 1000]
        p.run_batch([(r, ingest.decode(r).events) for r in rb], rb[-1].timestamp)
    samples = []
    for sid, data in p.stored.items():
        flow, key = sid.split(":", 1)
        slot = decode_slot(flow, key, data)
        if slot.instance is not None and slot.instance.open:
            samples.append((slot, data, p.history.get(sid, [])))
    rows_2 = []
    rows_1 = []
    for i in range(args.instances):
        slot, data, hist = samples[i % len(samples)]
        sid = f"{slot.flow}:{uuid.UUID(int=i * 7919 + 1, version=4)}"
        rows_2.append((sid, data, hist))
        rows_1.append((sid, format_1(slot, registry), hist))

    tmp = Path(tempfile.mkdtemp(prefix="obs-redis-mem-"))
    sock = tmp / "redis.sock"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--save",
            "",
            "--appendonly",
            "no",
            *[x for name, v in LISTPACK_SETTINGS.items() for x in (f"--{name}", str(v))],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(unix_socket_path=str(sock))
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)

        def avg(rows: list[tuple[str, bytes, list[bytes]]], i: int) -> float:
            total = sum(len(x[1]) if i == 1 else sum(map(len, x[2])) for x in rows)
            return total / len(rows)

        print(
            f"{args.instances} open checkout instances (from {len(samples)} mid-run states); "
            f"payload per instance: state f1 {avg(rows_1, 1):.0f} B, f2 {avg(rows_2, 1):.0f} B, "
            f"history {avg(rows_2, 2):.0f} B, slot id {sum(len(x[0]) for x in rows_2) / len(rows_2):.0f} B"
        )
        print("Redis used_memory per instance:")
        print("  string per slot + due member per slot (store format 1):")
        for label, rows, prefix, st, ht, hist in (
            ("state format 1, history on", rows_1, "observer", "slot", "hist", True),
            ("state format 2, history on", rows_2, "observer", "slot", "hist", True),
            ("state format 2, history off", rows_2, "observer", "slot", "hist", False),
            ("  same, keys o:{s}:s:", rows_2, "o", "s", "h", False),
        ):
            print(f"    {label:<42} {measure(r, rows, prefix, st, ht, hist):6.0f} B")
        print("  bucket hashes + due zset per bucket (history off):")
        for label, compact in (("text fields", False), ("16-byte UUID fields", True)):
            print(f"    {label:<42} {measure_bucket_zsets(r, rows_2, compact):6.0f} B")
        url = f"unix://{sock}"
        print("  RedisStateStore (format 2: buckets, due time in the value):")
        for label, hist in (("history on", True), ("history off", False)):
            print(f"    {label:<42} {measure_store(r, url, rows_2, hist):6.0f} B")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
