"""`RedisFlowStore` on the real Redis (issue 15): deployed flow versions kept under the state's
prefix, deployed atomically (one refused version stores none), a generation that moves with
them, instances counted per version by a scan of the state, retirement."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from observer.adapters.redis.flows import RedisFlowStore
from observer.adapters.redis.keys import Keys
from observer.adapters.redis.store import RedisStateStore
from observer.engine.codec import encode_slot
from observer.engine.state import BufferedEvent, Event, InstanceState, KeySlot
from observer.flows.loader import load_flow_text
from observer.flows.stored import StoredFlow, stored_flow
from observer.runtime.ports import SlotPut, WriteBatch
from observer.runtime.shards import slot_id
from tests.unit.replay_harness import BASE_FLOW, T0

SHARDS, BUCKETS = 3, 4


def version(n: int, window: str = "10s") -> StoredFlow:
    text = BASE_FLOW.replace("version: 1", f"version: {n}").replace(
        "within: 10s", f"within: {window}"
    )
    (lf,), _ = load_flow_text(text, f"shop-v{n}.yaml")
    sf, _ = stored_flow(lf)
    assert sf is not None
    return sf


@pytest.fixture
def keys(unique: str) -> Keys:
    return Keys(unique, SHARDS, BUCKETS)


@pytest.fixture
def flows(stack: Any, keys: Keys, redis_client: redis.Redis) -> Iterator[RedisFlowStore]:
    store = RedisFlowStore(stack.redis_url, keys)
    yield store
    store.close()


def test_versions_are_deployed_all_or_none_and_the_generation_moves_with_them(
    flows: RedisFlowStore, redis_client: redis.Redis, keys: Keys
) -> None:
    assert flows.generation() == 0 and flows.stored() == {}
    before = flows.now_ms()
    plan = flows.deploy([version(1)])
    assert [sf.field for sf in plan.added] == ["shop:1"]
    assert flows.generation() == 1
    stored = flows.stored()["shop:1"]
    assert stored.digest == version(1).digest and stored.text == version(1).text
    assert stored.deployed_at is not None and before <= stored.deployed_at <= flows.now_ms()
    # the same again: nothing to add, the generation stays
    plan = flows.deploy([version(1)])
    assert plan.added == [] and len(plan.unchanged) == 1 and flows.generation() == 1
    # a changed v1 with a new v2: refused, and v2 is not stored either
    plan = flows.deploy([version(2), version(1, "20s")])
    assert "a changed flow needs a new version" in str(plan.refused[0])
    assert sorted(flows.stored()) == ["shop:1"] and flows.generation() == 1
    flows.deploy([version(2)])
    assert sorted(flows.stored()) == ["shop:1", "shop:2"] and flows.generation() == 2
    assert redis_client.type(keys.flow_versions()) == b"hash"


def test_a_second_store_sees_what_the_first_deployed_and_cannot_change_it(
    stack: Any, flows: RedisFlowStore, keys: Keys
) -> None:
    other = RedisFlowStore(stack.redis_url, keys)
    try:
        flows.deploy([version(1)])
        assert other.generation() == 1 and sorted(other.stored()) == ["shop:1"]
        assert other.deploy([version(1, "1m")]).refused
    finally:
        other.close()


def _write(store: RedisStateStore, keys: Keys, slots: list[KeySlot]) -> None:
    batch = WriteBatch()
    for slot in slots:
        sid = slot_id(slot.flow, slot.key)
        batch.puts.append(SlotPut(keys.shard_of(sid), sid, encode_slot(slot), 60_000, None))
    store.write(batch).result()


def test_instances_are_counted_per_version_across_every_shard_and_bucket(
    stack: Any, flows: RedisFlowStore, keys: Keys
) -> None:
    state = RedisStateStore(stack.redis_url, keys)
    state.open(SHARDS, {})
    slots = []
    for i in range(60):
        slot = KeySlot("shop", str(uuid.UUID(int=i + 1, version=4)))
        slot.instance = InstanceState(version=1 if i < 40 else 2, started_at=T0)
        if i % 3 == 0:
            slot.instance.outcome, slot.instance.ended_at = "completed", T0 + 5  # retained
        slots.append(slot)
    early = KeySlot("shop", "only-early-events")  # no instance: not counted
    early.buffer.append(BufferedEvent(Event("pay", "Paid", "e", "x", T0, {}), T0, 0))
    other = KeySlot("other", "k")
    other.instance = InstanceState(version=1, started_at=T0)
    _write(state, keys, [*slots, early, other])
    state.close()
    assert flows.instances("shop") == {1: 40, 2: 20}
    assert flows.instances("other") == {1: 1}
    assert flows.instances("none") == {}


def test_a_version_retires_only_with_the_digest_it_was_checked_with(
    flows: RedisFlowStore,
) -> None:
    flows.deploy([version(1)])
    flows.deploy([version(2)])
    assert not flows.retire("shop", 1, "another digest")
    assert flows.generation() == 2
    assert flows.retire("shop", 1, version(1).digest)
    assert sorted(flows.stored()) == ["shop:2"] and flows.generation() == 3
    assert not flows.retire("shop", 1, version(1).digest)
