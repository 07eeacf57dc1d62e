"""The Redis layout without Redis: field names, values, buckets, and the listpack settings the
stack configures (the store's memory per instance depends on them)."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from observer.adapters.redis.keys import (
    DEFAULT_BUCKETS,
    Keys,
    decode_key,
    encode_key,
    pack_value,
    unpack_value,
)
from observer.adapters.redis.store import LISTPACK_SETTINGS
from observer.runtime.shards import shard_of, slot_id

ROOT = Path(__file__).resolve().parents[2]

# every code point, lone surrogates included (keys can hold them)
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None))


@given(any_text)
def test_every_key_round_trips(key: str) -> None:
    assert decode_key(encode_key(key)) == key


@given(st.uuids())
def test_canonical_uuids_take_17_bytes(u: uuid.UUID) -> None:
    field = encode_key(str(u))
    assert field == b"\x00" + u.bytes
    assert decode_key(field) == str(u)


@pytest.mark.parametrize(
    "key",
    [
        "0B5E2C1A-3F4D-4E5F-8A9B-0C1D2E3F4A5B",  # uppercase
        "{0b5e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b}",
        "0b5e2c1a3f4d4e5f8a9b0c1d2e3f4a5b",
        "0b5e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5 ",
        "0b5e2c1a-3f4d-4e5f-8a9b-0c1d2e 3f4a5b",  # fromhex would skip the space
        "\x00b5e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b",
        "\x01",
        "\x00",
        "",
    ],
)
def test_other_keys_stay_text(key: str) -> None:
    field = encode_key(key)
    assert field[:1] != b"\x00" and decode_key(field) == key


@given(st.one_of(st.none(), st.integers(-(1 << 63) + 1, (1 << 63) - 1)), st.binary())
def test_values_carry_the_due_time(due: int | None, state: bytes) -> None:
    """Any time: event times come from the data (before 1970, far ahead)."""
    assert unpack_value(pack_value(due, state)) == (due, state)


def test_due_times_beyond_int64_are_clamped() -> None:
    assert unpack_value(pack_value(1 << 70, b""))[0] == (1 << 63) - 1
    assert unpack_value(pack_value(-(1 << 70), b""))[0] == -(1 << 63) + 1
    assert len(pack_value(1_795_664_023_399, b"")) == 8


def test_buckets_spread_each_shard_independently_of_the_shard_choice() -> None:
    """16 shards and 64 buckets share factors: the bucket must not be crc32 % 64, or a shard
    would only ever use 4 of its buckets."""
    keys = Keys("p", 16, 64)
    per_shard: dict[int, Counter[str]] = {}
    for i in range(40_000):
        sid = slot_id("checkout", str(uuid.UUID(int=i * 0x9E3779B97F4A7C15 + 1, version=4)))
        assert keys.shard_of(sid) == shard_of(sid, 16)
        per_shard.setdefault(keys.shard_of(sid), Counter())[keys.member(sid)] += 1
    assert len(per_shard) == 16
    for counts in per_shard.values():
        assert len(counts) == 64
        assert max(counts.values()) < 3 * min(counts.values())


@given(st.sampled_from(["shop", "a", "checkout-v2_x"]), any_text)
def test_a_slot_id_comes_back_from_its_member_and_field(flow: str, key: str) -> None:
    keys = Keys("p", 3, 5)
    sid = slot_id(flow, key)
    member = keys.member(sid)
    assert keys.bucket(keys.shard_of(sid), sid) == keys.bucket_prefix(keys.shard_of(sid)) + member
    assert re.fullmatch(rf"{flow}:[0-4]", member)
    assert keys.sid_of(member.encode(), keys.field(sid)) == sid


def test_keys_refuse_bad_counts() -> None:
    assert Keys("p", 1).buckets == DEFAULT_BUCKETS
    with pytest.raises(ValueError, match="buckets"):
        Keys("p", 1, 0)


def test_the_stack_and_compose_configure_listpack_buckets() -> None:
    """ops/stack's redis.conf and docker-compose's redis command allow what the store wants."""
    conf = (ROOT / "ops" / "stack").read_text()
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"][
        "command"
    ]
    for name, wanted in LISTPACK_SETTINGS.items():
        found = re.search(rf"^{name} (\d+)$", conf, re.M)
        assert found and int(found.group(1)) >= wanted, name
        assert int(command[command.index(f"--{name}") + 1]) >= wanted, name
