"""Every Redis key name the observer uses, built here and nowhere else.

Layout (P = the configured prefix, s = the shard of a slot, 0 <= s < shards):

    P:meta                    HASH   shards, format: checked at start so a restart cannot
                                     silently re-shard
    P:deployed                STRING JSON: the flow files the running observer loaded
    P:stats                   HASH   open:<flow> -> open instances (HINCRBY per batch)
    P:{s}:slot:<flow>:<key>   STRING `encode_slot` bytes of one (flow, key), TTL as safety net
    P:{s}:hist:<flow>:<key>   LIST   the instance history (JSON entries), capped, same TTL
    P:{s}:due                 ZSET   member <flow>:<key>, score = next due time (epoch ms)
    P:{s}:outbox              HASH   observer-id -> record to publish until delivery is acked

`{s}` is a Redis Cluster hash tag: everything of one shard lives in one cluster slot, so a
later owner of a shard can read and write it atomically. Shard s is owned by the process the
consumer group assigns partition s of the keyed topic to (`runtime/keyed.py`). A slot id (`<flow>:<key>`) splits at
the first colon, flow names never contain one.
"""

from __future__ import annotations

from observer.runtime.shards import shard_of, slot_id

__all__ = ["Keys"]


class Keys:
    """Key names under one prefix, for a fixed number of shards."""

    __slots__ = ("_hist_prefix", "_slot_prefix", "prefix", "shards")

    def __init__(self, prefix: str, shards: int) -> None:
        if not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise ValueError(f"bad key prefix {prefix!r} (no braces or whitespace)")
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.prefix = prefix
        self.shards = shards
        self._slot_prefix = [f"{prefix}:{{{s}}}:slot:" for s in range(shards)]
        self._hist_prefix = [f"{prefix}:{{{s}}}:hist:" for s in range(shards)]

    def shard_of(self, sid: str) -> int:
        """The shard of a slot id (stable: crc32 of the id modulo the shard count)."""
        return shard_of(sid, self.shards)

    def slot(self, shard: int, sid: str) -> str:
        return self._slot_prefix[shard] + sid

    def slot_prefix(self, shard: int) -> str:
        """`slot(shard, sid) == slot_prefix(shard) + sid` (the due script joins them)."""
        return self._slot_prefix[shard]

    def slot_of(self, flow: str, key: str) -> str:
        sid = slot_id(flow, key)
        return self.slot(self.shard_of(sid), sid)

    def history_of(self, flow: str, key: str) -> str:
        sid = slot_id(flow, key)
        return self.history(self.shard_of(sid), sid)

    def history(self, shard: int, sid: str) -> str:
        return self._hist_prefix[shard] + sid

    def due(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:due"

    def outbox(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:outbox"

    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def deployed(self) -> str:
        return f"{self.prefix}:deployed"

    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def lease(self) -> str:
        """STRING: the holder of `routing: direct` (one process per prefix)."""
        return f"{self.prefix}:lease"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix (tests and cleanup)."""
        return f"{self.prefix}:*"
