"""`RedisStateStore` and `RedisSlotReader` on the real Redis: slots as fields of bucket hashes,
due times in the values, one due index per shard scored by each bucket's earliest due time."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from observer.adapters.redis.keys import Keys, pack_value, unpack_value
from observer.adapters.redis.query import RedisSlotReader
from observer.adapters.redis.store import STORE_FORMAT, RedisStateStore
from observer.errors import ConfigError, StoreError
from observer.runtime.ports import SlotPut, WriteBatch
from observer.runtime.shards import slot_id
from tests.integration.test_runtime_outage import PrivateRedis

SHARDS, BUCKETS = 2, 4
T0 = 1_767_225_600_000


@pytest.fixture
def keys(unique: str) -> Keys:
    return Keys(unique, SHARDS, BUCKETS)


@pytest.fixture
def store(stack: Any, keys: Keys, redis_client: redis.Redis) -> Iterator[RedisStateStore]:
    s = RedisStateStore(stack.redis_url, keys, history_cap=3)
    s.open(SHARDS, {"flows": []})
    yield s
    s.close()


def sids(n: int, flow: str = "shop") -> list[str]:
    return [slot_id(flow, str(uuid.UUID(int=i * 7919 + 1, version=4))) for i in range(n)]


def put(keys: Keys, sid: str, due: int | None, state: bytes = b"", ttl: int = 60_000) -> SlotPut:
    return SlotPut(keys.shard_of(sid), sid, state or sid.encode("utf-8", "surrogatepass"), ttl, due)


def index(r: redis.Redis, keys: Keys) -> dict[tuple[int, str], int]:
    """(shard, bucket member) -> score of every due index entry."""
    return {
        (s, m.decode()): int(score)
        for s in range(keys.shards)
        for m, score in r.zrange(keys.due(s), 0, -1, withscores=True)
    }


def earliest(
    r: redis.Redis, keys: Keys, flows: tuple[str, ...] = ("shop", "other")
) -> dict[tuple[int, str], int]:
    """What the index must hold: the earliest due time of each bucket, read from the buckets."""
    out: dict[tuple[int, str], int] = {}
    for s in range(keys.shards):
        for m in (f"{flow}:{n}" for flow in flows for n in range(keys.buckets)):
            dues = [unpack_value(v)[0] for v in r.hvals(keys.bucket_prefix(s) + m)]
            low = min((d for d in dues if d is not None), default=None)
            if low is not None:
                out[(s, m)] = low
    return out


def test_puts_loads_deletes_and_history(
    store: RedisStateStore, keys: Keys, redis_client: redis.Redis
) -> None:
    ids = [*sids(80), "shop:o-1", "other:\x00odd key", "shop:\udcffraw"]
    batch = WriteBatch(puts=[put(keys, sid, T0 + i) for i, sid in enumerate(ids)])
    batch.puts[0].history = [b"h1", b"h2", b"h3", b"h4"]
    store.write(batch).result()
    where = [(keys.shard_of(sid), sid) for sid in ids]
    assert store.load([*where, (0, "shop:nothing")]).result() == [
        *[sid.encode("utf-8", "surrogatepass") for sid in ids],
        None,
    ]
    assert store.load([]).result() == []
    hist = keys.history(keys.shard_of(ids[0]), ids[0])
    assert redis_client.lrange(hist, 0, -1) == [b"h2", b"h3", b"h4"]  # capped at 3
    shop = {(s, m) for s, m in index(redis_client, keys) if m.startswith("shop:")}
    assert len(shop) == SHARDS * BUCKETS  # spread over every bucket of both shards
    assert index(redis_client, keys) == earliest(redis_client, keys)

    store.write(WriteBatch(deletes=[(keys.shard_of(ids[0]), ids[0])])).result()
    assert store.load(where[:2]).result() == [None, ids[1].encode()]
    assert not redis_client.exists(hist)
    assert index(redis_client, keys) == earliest(redis_client, keys)

    store.write(WriteBatch(deletes=where)).result()
    assert index(redis_client, keys) == {}
    assert earliest(redis_client, keys) == {}
    assert not any(redis_client.exists(keys.bucket(keys.shard_of(sid), sid)) for sid in ids)


def test_uuid_keys_are_stored_as_16_bytes(
    store: RedisStateStore, keys: Keys, redis_client: redis.Redis
) -> None:
    (sid,) = sids(1)
    store.write(WriteBatch(puts=[put(keys, sid, T0, b"state")])).result()
    bucket = keys.bucket(keys.shard_of(sid), sid)
    assert redis_client.hgetall(bucket) == {
        b"\x00" + uuid.UUID(sid[5:]).bytes: pack_value(T0, b"state")
    }


def test_due_across_buckets_and_shards_with_limit_and_overdue(
    store: RedisStateStore, keys: Keys
) -> None:
    ids = sids(40)
    store.write(
        WriteBatch(puts=[put(keys, sid, T0 + 10 * i) for i, sid in enumerate(ids)])
    ).result()
    due_at = {sid: T0 + 10 * i for i, sid in enumerate(ids)}
    marks = [(0, T0 + 195), (1, T0 + 95)]
    wm = dict(marks)
    expected = {sid for sid in ids if due_at[sid] <= wm[keys.shard_of(sid)]}

    got = store.due(marks, 1000)
    assert {sid for _s, sid, _st in got.slots} == expected
    assert all(s == keys.shard_of(sid) and st == sid.encode() for s, sid, st in got.slots)
    first = {s: min(d for sid, d in due_at.items() if keys.shard_of(sid) == s) for s in wm}
    assert got.overdue_ms == max(wm[s] - first[s] for s in wm)

    few = store.due(marks, 3)
    assert len(few.slots) == 3 and {sid for _s, sid, _st in few.slots} <= expected
    assert few.overdue_ms == got.overdue_ms
    assert store.due(marks, 0).slots == []

    nothing = store.due([(0, T0 - 1), (1, T0 - 1)], 1000)
    assert nothing.slots == [] and nothing.overdue_ms is None
    assert nothing.later == first  # the earliest due time of each shard, after its watermark
    assert store.due([], 10).slots == []


def test_the_earliest_due_time_after_the_watermark(store: RedisStateStore, keys: Keys) -> None:
    """The ticker's due bounds: per shard, the earliest due time after its watermark, also
    where it shares a bucket with a slot that is due (the bucket's score is then the due one);
    none for a shard whose due slots the limit kept back."""
    ids = sids(200)
    due_at = {sid: T0 + 1_000 * i for i, sid in enumerate(ids)}
    store.write(WriteBatch(puts=[put(keys, sid, t) for sid, t in due_at.items()])).result()
    bucket = {sid: keys.bucket(keys.shard_of(sid), sid) for sid in ids}
    for cut in (T0 - 1, T0, T0 + 7_500, T0 + 150_000, T0 + 199_000, T0 + 300_000):
        marks = [(0, cut), (1, cut)]
        got = store.due(marks, 1000)
        want = {
            s: min(
                (t for sid, t in due_at.items() if keys.shard_of(sid) == s and t > cut),
                default=None,
            )
            for s in range(SHARDS)
        }
        assert got.later == want, cut
    # at T0 + 7_500 some shard's next due time shares a bucket with one of its due slots
    cut = T0 + 7_500
    due = [sid for sid, t in due_at.items() if t <= cut]
    assert any(
        bucket[a] == bucket[b] and due_at[b] > cut and keys.shard_of(a) == keys.shard_of(b)
        for a in due
        for b in ids
    )
    limited = store.due([(0, T0 + 100_000), (1, T0 + 100_000)], 3)
    assert len(limited.slots) == 3
    assert set(limited.later) <= {s for s in range(SHARDS)} - {s for s, _x, _y in limited.slots}


def test_any_due_time_is_kept_exactly(store: RedisStateStore, keys: Keys) -> None:
    """Event times come from the data: before 1970, 0, far ahead (the scripts read them back
    to the millisecond, the index holds them as scores)."""
    times = [-14_179_340_000, -1, 0, 1, T0, (1 << 53) - 1, -(1 << 50) + 1]
    ids = sids(len(times))
    store.write(
        WriteBatch(puts=[put(keys, sid, t) for sid, t in zip(ids, times, strict=True)])
    ).result()
    for sid, t in zip(ids, times, strict=True):
        marks = [(s, t - 1) for s in range(SHARDS)]
        assert sid not in {x for _s, x, _st in store.due(marks, 100).slots}
        marks = [(s, t) for s in range(SHARDS)]
        assert sid in {x for _s, x, _st in store.due(marks, 100).slots}
    assert store.due([(0, T0), (1, T0)], 100).overdue_ms == T0 - times[-1]


def test_the_index_follows_every_change(
    store: RedisStateStore, keys: Keys, redis_client: redis.Redis
) -> None:
    """Random batches of puts (due moved earlier, later, or dropped), deletes and dropped
    timers: after each, the due index holds exactly each bucket's earliest due time."""
    rnd = random.Random(7)
    ids = sids(60)
    alive: set[str] = set()
    for _ in range(40):
        batch = WriteBatch()
        for sid in rnd.sample(ids, 12):
            what = rnd.random()
            if what < 0.6:
                due = None if rnd.random() < 0.2 else T0 + rnd.randrange(0, 10_000)
                batch.puts.append(put(keys, sid, due))
                alive.add(sid)
            elif what < 0.8:
                batch.deletes.append((keys.shard_of(sid), sid))
                alive.discard(sid)
            else:
                batch.stale_due.append((keys.shard_of(sid), sid))
        store.write(batch).result()
        assert index(redis_client, keys) == earliest(redis_client, keys)
    where = [(keys.shard_of(sid), sid) for sid in ids]
    assert [v is not None for v in store.load(where).result()] == [sid in alive for sid in ids]


def test_dropped_timers_keep_the_state(store: RedisStateStore, keys: Keys) -> None:
    a, b = sids(2)
    store.write(WriteBatch(puts=[put(keys, a, T0), put(keys, b, T0 + 5)])).result()
    store.write(WriteBatch(stale_due=[(keys.shard_of(a), a), (0, "shop:gone")])).result()
    marks = [(0, T0 + 10), (1, T0 + 10)]
    assert [sid for _s, sid, _st in store.due(marks, 10).slots] == [b]
    assert store.load([(keys.shard_of(a), a)]).result() == [a.encode()]


def test_a_bucket_lost_outside_the_scripts_leaves_the_index(
    store: RedisStateStore, keys: Keys, redis_client: redis.Redis
) -> None:
    """A bucket that expired (or was deleted) keeps no due member for ever: the due read drops
    it, and the shard is not reported overdue."""
    a, b = sids(2)
    store.write(WriteBatch(puts=[put(keys, a, T0), put(keys, b, T0 + 5)])).result()
    sa = keys.shard_of(a)
    redis_client.delete(keys.bucket(sa, a))
    redis_client.hdel(keys.bucket(keys.shard_of(b), b), keys.field(b))
    got = store.due([(0, T0 + 10), (1, T0 + 10)], 10)
    assert got.slots == [] and got.overdue_ms is None
    assert index(redis_client, keys) == {}


def test_buckets_keep_the_longest_slot_ttl(
    store: RedisStateStore, keys: Keys, redis_client: redis.Redis
) -> None:
    ids = sids(40)
    a = ids[0]
    bucket = keys.bucket(keys.shard_of(a), a)
    mates = [sid for sid in ids[1:] if keys.bucket(keys.shard_of(sid), sid) == bucket]
    assert mates, "no two slots in one bucket"
    store.write(WriteBatch(puts=[put(keys, a, T0, ttl=600_000)])).result()
    assert 590_000 < redis_client.pttl(bucket) <= 600_000
    store.write(WriteBatch(puts=[put(keys, mates[0], T0, ttl=60_000)])).result()
    assert redis_client.pttl(bucket) > 590_000  # never lowered
    store.write(WriteBatch(puts=[put(keys, mates[0], T0, ttl=900_000)])).result()
    assert redis_client.pttl(bucket) > 890_000  # raised
    redis_client.persist(bucket)
    store.write(WriteBatch(puts=[put(keys, a, T0, ttl=60_000)])).result()
    assert 50_000 < redis_client.pttl(bucket) <= 60_000  # a bucket without a TTL gets one
    hist = keys.history(keys.shard_of(a), a)
    store.write(WriteBatch(puts=[SlotPut(keys.shard_of(a), a, b"s", 70_000, T0, [b"e"])])).result()
    assert 60_000 < redis_client.pttl(hist) <= 70_000


def test_a_prefix_keeps_its_bucket_count_and_format(
    stack: Any, keys: Keys, store: RedisStateStore, redis_client: redis.Redis
) -> None:
    other = RedisStateStore(stack.redis_url, Keys(keys.prefix, SHARDS, BUCKETS * 2))
    with pytest.raises(ConfigError, match=f"holds state in {BUCKETS} buckets per shard, not 8"):
        other.open(SHARDS, {})
    other.close()
    again = RedisStateStore(stack.redis_url, Keys(keys.prefix, SHARDS, BUCKETS))
    again.open(SHARDS, {})  # the same counts open
    again.close()

    old = f"{keys.prefix}:old"  # under the prefix the fixture cleans
    redis_client.hset(f"{old}:meta", mapping={"shards": SHARDS, "format": 1})
    former = RedisStateStore(stack.redis_url, Keys(old, SHARDS, BUCKETS))
    with pytest.raises(
        ConfigError,
        match=f"format 1, this version writes format {STORE_FORMAT}: use a new key prefix",
    ):
        former.open(SHARDS, {})
    former.close()
    assert redis_client.hget(f"{old}:meta", "buckets") is None  # nothing added to it
    with pytest.raises(StoreError, match="older format"):
        RedisSlotReader(stack.redis_url, old).read("shop", "o1")


def test_the_ops_read_path(stack: Any, unique: str, redis_client: redis.Redis) -> None:
    """`observer status` knows only the URL and prefix: counts come from the meta hash."""
    keys = Keys(unique, 3, 5)
    store = RedisStateStore(stack.redis_url, keys)
    store.open(3, {"flows": []})
    u = str(uuid.uuid4())
    done = [(slot_id("shop", u), b"open one"), (slot_id("shop", "o-2"), b"other")]
    store.write(
        WriteBatch(
            puts=[
                SlotPut(
                    keys.shard_of(sid), sid, st, 60_000, T0, [b'{"what":"x"}'] if i == 0 else []
                )
                for i, (sid, st) in enumerate(done)
            ]
        )
    ).result()
    store.close()
    reader = RedisSlotReader(stack.redis_url, unique)
    try:
        assert reader.read("shop", u) == (b"open one", [b'{"what":"x"}'])
        assert reader.read("shop", "o-2") == (b"other", [])
        assert reader.read("shop", "o-3") == (None, [])
        assert reader.deployed() == {"flows": []}
    finally:
        reader.close()
    with pytest.raises(StoreError, match="no observer state"):
        RedisSlotReader(stack.redis_url, f"{unique}-none").read("shop", u)


def test_small_listpack_settings_are_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis with the default hash-max-listpack-value (64) works, with ~20 % more memory:
    opening says so, naming the setting; with the recommended settings it says nothing."""
    private = PrivateRedis(tmp_path)
    private.start()
    try:
        store = RedisStateStore(private.url, Keys("t", 1, 2))
        with caplog.at_level(logging.WARNING, logger="observer.adapters.redis.store"):
            store.open(1, {})
        (warning,) = caplog.records
        assert "hash-max-listpack-value 64 (recommended >= 1024)" in warning.getMessage()
        assert "hash-max-listpack-entries" not in warning.getMessage()
        caplog.clear()
        client = redis.Redis(port=private.port)
        client.config_set("hash-max-listpack-value", 1024)
        client.close()
        with caplog.at_level(logging.WARNING, logger="observer.adapters.redis.store"):
            store.open(1, {})
        assert caplog.records == []
        store.close()
    finally:
        private.kill()
