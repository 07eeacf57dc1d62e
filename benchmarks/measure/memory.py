"""Redis memory per open instance: orders stopped mid-flight, their deadlines far ahead, read
by one observer; then MEMORY USAGE of its keys by kind and INFO used_memory."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks import workload as wl
from benchmarks.common import (
    CommitWatch,
    DurableWatch,
    end_offsets,
    log,
    now_ms,
    redis_delete_prefix,
)
from benchmarks.harness import FreshFlow, Run, keyed_group
from benchmarks.processes import Launch, measure_processes
from benchmarks.readback import redis_client, redis_used_memory


def measure_memory(run: Run) -> dict[str, Any]:
    """N orders stopped mid-flight (the first half of the main path), their event times
    `--memory-future-s` ahead of the wall clock so no deadline fires while we look; then
    Redis MEMORY USAGE of the observer's keys and INFO used_memory, per open instance."""
    args = run.args
    fresh = run.fresh_flow("mem", "mem")
    n = args.memory_orders
    produced = _produce_mid_flight(run, fresh)
    group = key_prefix = f"{fresh.prefix}-obs"
    env = run.observer_env(fresh.topics)
    cfg = run.observer_settings(group, key_prefix, env)
    ends = end_offsets(run.bs, fresh.files.source_topics.values())
    watch = DurableWatch(
        CommitWatch(run.bs, group, ends), cfg.keyed_topic_name(), keyed_group(group)
    )
    mem_before = redis_used_memory(args.redis_url)
    listpack = _listpack_settings(args.redis_url)
    port = args.http_port_base + 20

    def look() -> dict[str, Any]:
        return {
            "mem_after": redis_used_memory(args.redis_url),
            "usage": redis_key_usage(args.redis_url, key_prefix, args.memory_sample),
        }

    m = measure_processes(
        run,
        watch,
        [
            Launch(
                run.observer_cmd(fresh.files.flow_dir, group, port, key_prefix),
                "memory-observer",
                env,
                port,
            )
        ],
        args.settle,
        look,
    )
    metrics = m.metrics[0] if m.metrics else {}
    mem_after, usage = m.extra["mem_after"], m.extra["usage"]
    why, sampler, codes = m.stopped, m.sampler, m.exit_codes
    open_n = usage["open_instances"] or metrics.get("observer_open_instances") or 0
    res = {
        "orders": n,
        "events": produced,
        "stopped": why,
        "open_instances": open_n,
        "bytes_per_open_instance": usage["total_bytes"] / open_n if open_n else None,
        "bytes_per_open_instance_by_kind": {
            k: v / open_n for k, v in usage["bytes_by_kind"].items()
        }
        if open_n
        else {},
        "used_memory_delta": mem_after - mem_before,
        "used_memory_delta_per_open_instance": (mem_after - mem_before) / open_n
        if open_n
        else None,
        "keys_by_kind": usage["keys_by_kind"],
        "sampled_keys": usage["sampled"],
        "bucket_encodings": usage["bucket_encodings"],
        "fields_per_bucket": usage["fields_per_bucket"],
        "redis_listpack_settings": listpack,
        "key_style": args.key_style,
        **sampler.summary(),
        "rss_mb_per_1k_open": (sampler.summary()["rss_mb"][0] / (open_n / 1000))
        if open_n
        else None,
        "exit_codes": codes,
    }
    if not args.keep:
        redis_delete_prefix(args.redis_url, key_prefix)
    log(
        f"memory: {open_n:,} open, {res['bytes_per_open_instance'] or 0:.0f} B per open instance (MEMORY USAGE), RSS {res['rss_mb']} MB"
    )
    return res


def _produce_mid_flight(run: Run, fresh: FreshFlow) -> int:
    """`--memory-orders` orders, the first half of the main path each, event times ahead of
    the wall clock (record times: now). Returns the records produced."""
    args, model, enc, flow = run.args, fresh.model, fresh.enc, fresh.files.flow
    main = flow.paths[0].steps
    first_half = set(main[: max(1, len(main) // 2)])
    n = args.memory_orders
    rng = random.Random(args.seed)
    base = now_ms() + int(args.memory_future_s * 1000)

    def records() -> Iterator[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]]:
        for i in range(n):
            key = wl.order_key(args.key_style, args.seed + 2, i)
            emits = sorted(
                (e for e in model.order(base + i, None, rng) if e.step in first_half),
                key=lambda e: e.at,
            )
            for j, e in enumerate(emits):
                topic, kb, value, headers, _ts = enc.encode(e, key, f"{key}/{j}")
                yield topic, kb, value, headers, 0  # record time: now (the event time is ahead)

    produced = wl.produce_records(run.bs, records())
    log(
        f"memory: {n:,} orders mid-flight ({produced:,} events, steps {sorted(flow.steps[i].name for i in first_half)})"
    )
    return produced


def _listpack_settings(url: str) -> dict[str, int]:
    """Redis' `hash-max-listpack-*`: the bucket hashes are compact only within these (ops/stack
    sets them; a Redis started before that still has the defaults until
    `ops/stack restart-redis`)."""
    r = redis_client(url)
    try:
        listpack = {k: int(v) for k, v in r.config_get("hash-max-listpack-*").items()}
    finally:
        r.close()
    if listpack.get("hash-max-listpack-value", 0) < 1024:
        log(f"memory: Redis has {listpack}: state buckets will not be compact listpacks")
    return listpack


def redis_key_usage(url: str, prefix: str, sample: int) -> dict[str, Any]:
    """MEMORY USAGE of the observer's keys by kind: keys of one instance (`slot` strings of
    store format 1, `hist` lists) sampled and extrapolated to their count; every other key
    measured whole: `bucket` hashes (`P:{s}:b:<flow>:<n>`, the slots of format 2), `bucket_due`
    sets (`P:{s}:d:<n>`, if a layout has them), the shards' `due` indexes, outbox, stats, meta.
    Also how the bucket hashes are encoded (listpack is the compact one) and how full."""
    kinds = {"b": "bucket", "d": "bucket_due"}
    r = redis_client(url)

    def each(ks: list[bytes], command: Callable[[Any, bytes], Any]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(ks), 5000):
            pipe = r.pipeline(transaction=False)
            for k in ks[i : i + 5000]:
                command(pipe, k)
            out += pipe.execute()
        return out

    def usage(pipe: Any, k: bytes) -> Any:
        return pipe.memory_usage(k, samples=0)

    try:
        keys_by_kind: Counter[str] = Counter()
        per_kind_sample: dict[str, list[bytes]] = {}
        whole: dict[str, list[bytes]] = {}
        for k in r.scan_iter(match=f"{prefix}:*", count=5000):
            rest = k.decode()[len(prefix) + 1 :]
            parts = rest.split(":")
            kind = parts[1] if rest.startswith("{") and len(parts) > 1 else parts[0]
            kind = kinds.get(kind, kind)
            keys_by_kind[kind] += 1
            if kind in ("slot", "hist"):
                lst = per_kind_sample.setdefault(kind, [])
                if len(lst) < sample:
                    lst.append(k)
            else:
                whole.setdefault(kind, []).append(k)
        bytes_by_kind: dict[str, float] = {}
        for kind, ks in per_kind_sample.items():
            sizes = [s or 0 for s in each(ks, usage)]
            bytes_by_kind[kind] = sum(sizes) / len(sizes) * keys_by_kind[kind] if sizes else 0.0
        for kind, ks in whole.items():
            bytes_by_kind[kind] = float(sum(s or 0 for s in each(ks, usage)))
        buckets = whole.get("bucket", [])
        encodings = Counter(
            e.decode() if isinstance(e, bytes) else str(e)
            for e in each(buckets, lambda p, k: p.object("encoding", k))
        )
        fields = sum(each(buckets, lambda p, k: p.hlen(k)))
        stats = r.hgetall(f"{prefix}:stats")
        open_n = sum(int(v) for f, v in stats.items() if f.startswith(b"open:"))
        return {
            "keys_by_kind": dict(keys_by_kind),
            "bytes_by_kind": bytes_by_kind,
            "total_bytes": sum(bytes_by_kind.values()),
            "sampled": {k: len(v) for k, v in per_kind_sample.items()},
            "open_instances": open_n,
            "bucket_encodings": dict(encodings),
            "fields_per_bucket": fields / len(buckets) if buckets else None,
        }
    finally:
        r.close()
