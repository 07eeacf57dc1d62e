"""The pure parts of the store on a Redis Cluster: hash slots as the cluster computes them, and a
batch split into one batch per shard (each written atomically in its shard's slot)."""

from __future__ import annotations

import pytest

from observer.adapters.redis.cluster import key_slot, split_batch
from observer.adapters.redis.keys import Keys
from observer.errors import ConfigError
from observer.runtime.guard_ports import GatedAction, WaitingAdd
from observer.runtime.ports import SlotPut, WriteBatch


def test_key_slots_follow_the_hash_tag() -> None:
    assert key_slot("123456789") == 12739  # the CRC16/XMODEM check value, mod 16384
    # (CLUSTER KEYSLOT on redis-server 7.0)
    assert key_slot("{3}") == key_slot("p:{3}:due") == key_slot(b"x{3}y") == 1584
    assert key_slot("{0}") == 13907
    assert key_slot("a{}b") != key_slot("a{}c")  # an empty tag is no tag
    keys = Keys("p", 16)
    sid = "shop:k-1"
    s = keys.shard_of(sid)
    tagged = [keys.bucket(s, sid), keys.history(s, sid), keys.outbox(s), keys.shard_stats(s)]
    assert {key_slot(k) for k in tagged} == {key_slot(keys.due(s))}
    assert key_slot(keys.flow_versions()) == key_slot(keys.flow_generation())


def test_a_batch_splits_by_shard() -> None:
    batch = WriteBatch(
        puts=[SlotPut(1, "f:a", b"s", 10, None), SlotPut(2, "f:b", b"s", 10, 5)],
        deletes=[(2, "f:c")],
        stale_due=[(3, "f:d")],
        outbox_adds=[(1, "o1", b"r")],
        outbox_dels=[(4, "o2")],
        stats={"open:f": 2},
        watermarks=[(1, 100)],
        shard_stats={(1, "open:f"): 1, (5, "open:f"): 1},
    )
    batch.gated.append(GatedAction("f", "act", 6, "f:k", "oid", b"rec", b"held", b"p", b"h"))
    parts = split_batch(batch)
    assert sorted(parts) == [1, 2, 3, 4, 5, 6]
    assert [p.sid for p in parts[2].puts] == ["f:b"] and parts[2].deletes == [(2, "f:c")]
    assert parts[1].outbox_adds == [(1, "o1", b"r")] and parts[4].outbox_dels == [(4, "o2")]
    assert parts[3].stale_due == [(3, "f:d")] and parts[6].gated[0].shard == 6
    assert parts[5].empty  # only counts: written with the shard's stats
    assert all(not p.watermarks for p in parts.values())  # only guardrails read them


def test_guardrails_cannot_be_split() -> None:
    batch = WriteBatch(waiting=[WaitingAdd("f", 1, "id", b"d")])
    with pytest.raises(ConfigError, match="single Redis"):
        split_batch(batch)
