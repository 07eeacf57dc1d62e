"""Where a key lives: one Redis, or the node of a Redis Cluster that serves its hash slot.

The hot path's raw connections (`wire.py`) do not follow redirections: `Nodes` learns the
cluster's slot map (`CLUSTER SLOTS`) when it connects and sends each request to the node of
its keys' slot. Every request the store sends touches the keys of one slot only: a shard's
keys share the hash tag `{s}` (`keys.py`), so a batch is written with one script call per
shard. A `MOVED` or `ASK` reply (the cluster was resharded, a node failed over) is an error
like any other: the runtime reconnects, which learns the slot map again, and reads again from
its committed offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from observer.adapters.redis.wire import RedisWire
from observer.errors import ConfigError, StoreError
from observer.redis_settings import RedisSettings
from observer.runtime.ports import WriteBatch

__all__ = ["SLOTS", "Nodes", "key_slot", "split_batch"]

SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the cluster's key hash."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The cluster hash slot of a key: of its hash tag (the first non-empty `{...}`) if any."""
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return _crc16(data) % SLOTS


class Nodes:
    """The connections of one role (writes, or loads) to one Redis or to every master of a
    cluster. Not thread-safe: owned by the loop's thread, like the wires."""

    def __init__(self, settings: RedisSettings, timeout_s: float) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self._timeout = timeout_s
        self._seed = RedisWire(settings, timeout_s)
        self._by_node: dict[tuple[str, int], RedisWire] = {}
        self._slots: list[RedisWire] = []  # slot -> node (cluster only)

    def connect(self) -> None:
        """Connect (a cluster: to every master, after reading the slot map from a node)."""
        self.close()
        self._seed.connect()
        if not self.cluster:
            return
        ranges = self._seed.call("CLUSTER", "SLOTS")
        table: list[RedisWire | None] = [None] * SLOTS
        for entry in ranges:
            low, high, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() or self.settings.host
            where = (host, int(master[1]))
            wire = self._by_node.get(where)
            if wire is None:
                wire = RedisWire(_at(self.settings, *where), self._timeout)
                wire.connect()
                self._by_node[where] = wire
            for slot in range(low, high + 1):
                table[slot] = wire
        missing = sum(1 for w in table if w is None)
        if missing:
            self.close()
            raise StoreError(
                f"the Redis Cluster at {self.settings.where} serves {SLOTS - missing} of "
                f"{SLOTS} hash slots: it is not ready (CLUSTER INFO says why)"
            )
        self._slots = [w for w in table if w is not None]

    def close(self) -> None:
        self._seed.close()
        for wire in self._by_node.values():
            wire.close()
        self._by_node.clear()
        self._slots = []

    @property
    def where(self) -> str:
        return self.settings.where

    def for_key(self, key: str | bytes) -> RedisWire:
        """The connection of the node serving `key` (the one Redis without a cluster)."""
        if not self.cluster:
            return self._seed
        if not self._slots:
            self.connect()
        return self._slots[key_slot(key)]

    def all(self) -> Iterator[RedisWire]:
        """One connection per node (scripts are loaded on each)."""
        if not self.cluster:
            yield self._seed
            return
        if not self._slots:
            self.connect()
        yield from self._by_node.values()

    @property
    def default(self) -> RedisWire:
        """The connection for requests without keys (the seed node of a cluster)."""
        return self._seed


def _at(settings: RedisSettings, host: str, port: int) -> RedisSettings:
    return replace(settings, host=host, port=port, cluster=False)


def split_batch(batch: WriteBatch) -> dict[int, WriteBatch]:
    """A batch as one batch per shard it touches (a Redis Cluster writes each atomically in
    the shard's hash slot). Gated action records go with their shard; `stats` are left to the
    caller (`WriteBatch.shard_stats`). The guardrails' deviations and floors span shards: a
    batch that has them cannot be split (ConfigError). The shards' watermarks are left out:
    only flows with guardrails read them."""
    if batch.waiting or batch.floors:
        raise ConfigError(
            "guardrails need a single Redis: their keys span flows and shards, which a Redis "
            "Cluster cannot change atomically (docs/running.md, Redis Cluster)"
        )
    parts: dict[int, WriteBatch] = {}

    def part(shard: int) -> WriteBatch:
        got = parts.get(shard)
        if got is None:
            got = parts[shard] = WriteBatch()
        return got

    for put in batch.puts:
        part(put.shard).puts.append(put)
    for shard, sid in batch.deletes:
        part(shard).deletes.append((shard, sid))
    for shard, sid in batch.stale_due:
        part(shard).stale_due.append((shard, sid))
    for shard, oid, rec in batch.outbox_adds:
        part(shard).outbox_adds.append((shard, oid, rec))
    for shard, oid in batch.outbox_dels:
        part(shard).outbox_dels.append((shard, oid))
    for gated in batch.gated:
        part(gated.shard).gated.append(gated)
    for shard, _name in batch.shard_stats:
        part(shard)
    return parts
