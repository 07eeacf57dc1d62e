"""`InMemoryStateStore` keeps the contract of `RedisStateStore`: the same random write batches
applied to both (on the real Redis) leave the same states, histories, due slots, overdue
figure, outboxes and counters."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from observer.adapters.memory import InMemoryStateStore
from observer.adapters.redis.keys import Keys
from observer.adapters.redis.query import RedisSlotReader
from observer.adapters.redis.store import RedisStateStore
from observer.runtime.ports import SlotPut, WriteBatch
from observer.runtime.shards import shard_of, slot_id, split_slot_id

SHARDS, BUCKETS, CAP = 3, 4, 3
T0 = 1_767_225_600_000


@pytest.fixture
def both(
    stack: Any, unique: str, redis_client: redis.Redis
) -> Iterator[tuple[RedisStateStore, RedisSlotReader, InMemoryStateStore]]:
    keys = Keys(unique, SHARDS, BUCKETS)
    real = RedisStateStore(stack.redis_url, keys, history_cap=CAP)
    real.open(SHARDS, {"flows": []})
    reader = RedisSlotReader(stack.redis_url, unique, shards=SHARDS, buckets=BUCKETS)
    memory = InMemoryStateStore(history_cap=CAP)
    memory.open(SHARDS, {"flows": []})
    yield real, reader, memory
    reader.close()
    real.close()


def random_batch(rng: random.Random, ids: list[str], step: int) -> WriteBatch:
    def where(sid: str) -> tuple[int, str]:
        return shard_of(sid, SHARDS), sid

    batch = WriteBatch()
    for sid in rng.sample(ids, 12):
        kind = rng.random()
        if kind < 0.6:
            due = None if rng.random() < 0.2 else T0 + rng.randrange(0, 100_000)
            history = [f"{sid}/{step}/{i}".encode() for i in range(rng.randrange(0, 3))]
            state = f"{sid}@{step}".encode()
            batch.puts.append(SlotPut(shard_of(sid, SHARDS), sid, state, 60_000, due, history))
        elif kind < 0.8:
            batch.deletes.append(where(sid))
        else:
            batch.stale_due.append(where(sid))
    for n in range(rng.randrange(0, 4)):
        shard = rng.randrange(SHARDS)
        batch.outbox_adds.append((shard, f"oid-{rng.randrange(20)}", f"rec {step} {n}".encode()))
    for _ in range(rng.randrange(0, 3)):
        batch.outbox_dels.append((rng.randrange(SHARDS), f"oid-{rng.randrange(20)}"))
    if rng.random() < 0.5:
        batch.stats = {f"open:{rng.choice(['shop', 'other'])}": rng.choice([-1, 1, 2])}
    return batch


def test_the_same_batches_leave_the_same_store(
    both: tuple[RedisStateStore, RedisSlotReader, InMemoryStateStore],
) -> None:
    real, reader, memory = both
    rng = random.Random(11)
    ids = [slot_id(rng.choice(["shop", "other"]), f"k-{i}") for i in range(40)]
    every = [(shard_of(sid, SHARDS), sid) for sid in ids]
    seen = {"due": 0, "overdue": 0, "history": 0, "outbox": 0, "absent": 0, "later": 0}
    for step in range(30):
        batch = random_batch(rng, ids, step)
        copy = WriteBatch(
            list(batch.puts),
            list(batch.deletes),
            list(batch.stale_due),
            list(batch.outbox_adds),
            list(batch.outbox_dels),
            dict(batch.stats),
        )
        real.write(batch).result()
        memory.write(copy).result()
        assert real.load(every).result() == memory.load(every).result()
        states = memory.load(every).result()
        seen["absent"] += states.count(None)
        for sid in ids:
            view = memory.read(*split_slot_id(sid))
            assert reader.read(*split_slot_id(sid)) == view, sid
            seen["history"] += len(view[1])
        wm = T0 + rng.randrange(0, 120_000)
        marks = [(s, wm) for s in range(SHARDS)]
        got, want = real.due(marks, 1_000), memory.due(marks, 1_000)
        assert sorted(got.slots) == sorted(want.slots) and got.overdue_ms == want.overdue_ms
        # the earliest due time after the watermark, per shard (the ticker's due bounds)
        assert got.later == want.later and set(want.later) == set(range(SHARDS))
        seen["due"] += len(want.slots)
        seen["overdue"] += want.overdue_ms is not None
        seen["later"] += sum(t is not None for t in want.later.values())
        limited = real.due(marks, 5)
        assert len(limited.slots) == len(memory.due(marks, 5).slots)
        assert set(limited.slots) <= set(got.slots)
        if len(got.slots) > 5:  # a shard whose due slots were kept back has no bound
            kept_back = {s for s, _sid, _st in got.slots} - {s for s, _x, _y in limited.slots}
            assert not kept_back & set(limited.later)
            for s, t in limited.later.items():
                assert t == want.later[s]
        shards = list(range(SHARDS))
        outbox = sorted(memory.outbox(shards))
        assert sorted(real.outbox(shards)) == outbox
        seen["outbox"] += len(outbox)
        assert real.stats() == memory.stats()
    assert all(n > 0 for n in seen.values()), seen  # every part of the contract was exercised
