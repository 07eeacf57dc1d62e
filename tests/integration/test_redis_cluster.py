"""The state on a real Redis Cluster (three masters from `ops/stack start redis-cluster`):
the store keeps the in-memory store's contract there (every script on one hash slot, Redis
itself checks it: the scripts carry a shebang on a cluster), and `observer run` tracks a flow
on it end to end, in both routings."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from observer.adapters.memory import InMemoryStateStore
from observer.adapters.redis.cluster import key_slot
from observer.adapters.redis.keys import Keys
from observer.adapters.redis.query import RedisSlotReader
from observer.adapters.redis.store import RedisStateStore
from observer.errors import ConfigError
from observer.runtime.ports import WriteBatch
from observer.runtime.shards import shard_of, slot_id, split_slot_id
from tests.integration.harness import Harness, now_ms, outcome_of
from tests.integration.test_store_contract import BUCKETS, CAP, SHARDS, T0, random_batch

pytestmark = pytest.mark.timeout(180)


def test_key_slots_are_the_clusters(cluster: RedisCluster) -> None:
    keys = Keys("p", 16)
    names = [keys.due(s) for s in range(16)] + [keys.meta(), "a{}b", "{}{x}", "x{y}z", "ü{é}"]
    for name in names:
        assert key_slot(name) == cluster.keyslot(name), name
    # every key of a shard shares its hash slot
    sid = slot_id("shop", "k-1")
    s = keys.shard_of(sid)
    shard_keys = [keys.bucket(s, sid), keys.outbox(s), keys.shard_stats(s), keys.shard_paused(s)]
    assert {key_slot(k) for k in [*shard_keys, keys.history(s, sid)]} == {key_slot(keys.due(s))}
    # what makes the store's check live: with a shebang, Redis refuses a script that reaches a
    # second hash slot, even one served by the same node (as {3} and {7} are in ops/stack's)
    node = cluster.get_redis_connection(cluster.get_node_from_key("{3}"))
    two_slots = "#!lua\nredis.call('GET', ARGV[1]); return redis.call('GET', ARGV[2])"
    with pytest.raises(redis.ResponseError, match=r"same slot|non local key"):
        node.eval(two_slots, 0, "x{3}", "x{7}")


def test_the_store_keeps_the_contract_on_a_cluster(
    cluster_url: str, unique: str, cluster: RedisCluster
) -> None:
    keys = Keys(unique, SHARDS, BUCKETS)
    real = RedisStateStore(cluster_url, keys, history_cap=CAP)
    real.open(SHARDS, {"flows": []})
    reader = RedisSlotReader(cluster_url, unique, shards=SHARDS, buckets=BUCKETS)
    memory = InMemoryStateStore(history_cap=CAP)
    memory.open(SHARDS, {"flows": []})
    rng = random.Random(5)
    ids = [slot_id(rng.choice(["shop", "other"]), f"k-{i}") for i in range(40)]
    every = [(shard_of(sid, SHARDS), sid) for sid in ids]
    try:
        for step in range(20):
            batch = random_batch(rng, ids, step)
            if batch.stats:  # counted by a shard, as the planner does
                batch.shard_stats = {(rng.randrange(SHARDS), k): v for k, v in batch.stats.items()}
            copy = WriteBatch(
                list(batch.puts),
                list(batch.deletes),
                list(batch.stale_due),
                list(batch.outbox_adds),
                list(batch.outbox_dels),
                dict(batch.stats),
            )
            assert real.write(batch).result() == []
            memory.write(copy).result()
            assert real.load(every).result() == memory.load(every).result()
            for sid in ids:
                assert reader.read(*split_slot_id(sid)) == memory.read(*split_slot_id(sid))
            marks = [(s, T0 + rng.randrange(0, 120_000)) for s in range(SHARDS)]
            got, want = real.due(marks, 1_000), memory.due(marks, 1_000)
            assert sorted(got.slots) == sorted(want.slots) and got.overdue_ms == want.overdue_ms
            assert len(real.due(marks, 5).slots) == len(memory.due(marks, 5).slots)
            shards = list(range(SHARDS))
            assert sorted(real.outbox(shards)) == sorted(memory.outbox(shards))
            assert real.stats() == memory.stats()
        # the shards' keys really are spread over the nodes
        used = {cluster.keyslot(keys.due(s)) for s in range(SHARDS)}
        nodes = {cluster.get_node_from_key(keys.due(s)).name for s in range(SHARDS)}
        assert len(used) == SHARDS and len(nodes) >= 2
        with pytest.raises(ConfigError, match="single Redis"):
            real.pause(None, "test")
    finally:
        reader.close()
        real.close()


@pytest.mark.parametrize("routing", ["keyed", "direct"])
def test_observer_run_tracks_a_flow_on_a_cluster(
    routing: str,
    stack: Any,
    cluster_url: str,
    unique: str,
    tmp_path: Path,
    create_topics: Callable[..., list[str]],
    cluster: RedisCluster,
) -> None:
    from tests.integration.harness import FLOW

    h = Harness(
        stack.bootstrap_servers,
        cluster_url,
        unique,
        tmp_path,
        FLOW.replace("PAY_WINDOW", "1500ms"),
        create_topics,
        {"routing": routing},
        1500,
    )
    try:
        h.start()
        t = now_ms()
        h.send("Placed", "c1", t)  # paid and shipped
        h.send("Paid", "c1", t + 100)
        h.send("Shipped", "c1", t + 200)
        h.send("Placed", "c2", t)  # never paid: missing, and the command
        assert outcome_of(h, "c1")["outcome"] == "completed"
        alert = h.wait_for(lambda: h.alerts("missing"), message="missing alert")[0]
        assert alert.key == b"c2" and h.wait_for(lambda: h.out("cmds"), message="command")
        view = h.api("/instances/shop/c2").json()
        assert view["state"] == "open" and [d["kind"] for d in view["deviations"]] == ["missing"]
        # the state is on the cluster, spread over its shards' slots
        assert any(True for _ in cluster.scan_iter(match=f"{h.key_prefix}:{{*}}:b:*"))
        h.stop()
        h.start()  # a restart reads it back: nothing fires twice
        h.clock_passed(now_ms())
        assert [a.key for a in h.alerts()] == [b"c2"] and len(h.out("cmds")) == 1
    finally:
        h.close()


def test_guardrails_are_refused_on_a_cluster_before_anything_runs(
    stack: Any, cluster_url: str, unique: str, tmp_path: Path
) -> None:
    from observer.cli import build_service
    from observer.config import ObserverConfig
    from observer.flows.compiler import load_registry
    from tests.integration.harness import FLOW

    flow = tmp_path / "guarded.yaml"
    text = FLOW.replace("PAY_WINDOW", "2s").replace("P.", f"{unique}.")
    flow.write_text(text + "guardrails:\n  max_actions: {count: 10, per: 1m}\n")
    config = ObserverConfig.load(
        {"bootstrap_servers": stack.bootstrap_servers, "redis_url": cluster_url}, {}
    )
    with pytest.raises(ConfigError, match=r"flow shop: guardrails need a single Redis"):
        build_service(config, load_registry([flow]), (str(flow),))


def test_pausing_actions_is_refused_on_a_cluster(cluster_url: str, unique: str) -> None:
    from observer.adapters.redis.held import RedisHeldActions

    port = RedisHeldActions(cluster_url, unique)
    try:
        with pytest.raises(ConfigError, match="single Redis"):
            port.pause(None, "test")
        assert port.paused() == {}
    finally:
        port.close()


def test_the_console_reads_its_counts_and_slots_on_a_cluster(
    cluster_url: str, unique: str, cluster: RedisCluster
) -> None:
    """The console's reads (`RedisConsoleStore`) follow the slot map: slots of every shard on
    every master, the open instances summed over the shards' own counts, the shared count."""
    from observer.adapters.redis.console import RedisConsoleStore
    from observer.adapters.redis.keys import encode_key, pack_value
    from observer.adapters.redis.tally import RedisTally
    from observer.redis_settings import parse_redis_url

    prefix = f"{unique}:state"
    settings = parse_redis_url(cluster_url)
    keys = Keys(prefix, 16, 8)
    written = {f"o-{i}": f"state {i}".encode() for i in range(40)}
    for key, value in written.items():
        sid = slot_id("shop", key)
        cluster.hset(keys.bucket(keys.shard_of(sid), sid), encode_key(key), pack_value(None, value))
    nodes = {cluster.get_node_from_key(keys.shard_stats(s)).name for s in range(16)}
    assert len(nodes) == 3  # the shards' keys are on every master
    for shard in range(16):
        cluster.hset(keys.shard_stats(shard), "open:shop", 2)
    cluster.hset(keys.stats(), "open:shop", 1)
    store = RedisConsoleStore(settings, prefix, shards=16, buckets=8)
    tally = RedisTally(settings, prefix)
    try:
        assert dict(store.slots("shop", 1000)) == written
        assert store.open_counts() == {"shop": 33}
        minute = 29_000_000
        tally.add(
            {minute: {("slo", "shop", "good", ""): 3}, minute + 1: {("slo", "shop", "bad", ""): 1}}
        )
        assert store.tally(minute, minute + 1) == {
            minute: {("slo", "shop", "good", ""): 3},
            minute + 1: {("slo", "shop", "bad", ""): 1},
        }
        assert store.claim_count("shop", 60_000) and not store.claim_count("shop", 60_000)
        store.store_waiting("shop", b'{"n": 1}', 60_000)
        assert store.cached_waiting("shop") == b'{"n": 1}'
    finally:
        store.close()
        tally.close()
