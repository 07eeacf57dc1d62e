"""Slot ids and shards: how (flow, key) slots are split into a fixed number of shards.

A slot receives events from several topics whose partitions follow their own record keys,
so slots cannot be tied to a source partition; they are tied to a shard instead, a stable
hash of the slot id. State, deadlines and outbox are stored per shard, and a shard is what the
group hands to one process: shard s is partition s of the keyed topic (`keyed.py`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

__all__ = ["fmt_shards", "shard_of", "slot_id", "split_slot_id"]


def slot_id(flow: str, key: str) -> str:
    """The id of a (flow, key) slot (also its member in the due set)."""
    return f"{flow}:{key}"


def split_slot_id(sid: str) -> tuple[str, str]:
    """(flow, key) of a slot id; flow names never contain a colon."""
    flow, _, key = sid.partition(":")
    return flow, key


def shard_of(sid: str, shards: int) -> int:
    """The shard of a slot id: crc32 of its UTF-8 bytes modulo the shard count."""
    return zlib.crc32(sid.encode("utf-8", "surrogatepass")) % shards


def fmt_shards(shards: Sequence[int]) -> str:
    """Shard numbers for a log line, in order."""
    return ", ".join(str(s) for s in sorted(shards))
