"""`RedisConsoleStore`: what the web console reads from Redis (the `ConsoleStore` port of
`observer/console/ports.py`), with redis-py on its own small connection pool (the HTTP
thread's; never the loop's connections); on a Redis Cluster redis-py's `RedisCluster`, which
sends each read to the node of its key's slot.

- the per-minute counts and the SLO's per-day counts (`tally.py`'s layout: `P:tally:<minute>`,
  `P:slo-day:<day>`), `P:stats` for the open instances (on a cluster also the shards' own
  `P:{s}:stats`, summed);
- a flow's slots, for counting where its instances wait: every bucket of the flow in every
  shard (`P:{s}:b:<flow>:<n>`, shards x buckets hashes, 1,024 by default), read with HGETALL
  in pipelines of `_CHUNK` buckets, stopping once `limit` slots were read;
- the shared count (`P:console:waiting:<flow>`) and who makes it (`P:console:scan:<flow>`,
  SET NX PX), so the group counts a flow at most once per interval whoever asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from observer.adapters.redis.keys import Keys, decode_key, unpack_value
from observer.adapters.redis.tally import RedisTally
from observer.errors import StoreError
from observer.redis_settings import RedisSettings

__all__ = ["RedisConsoleStore"]

Count = tuple[str, str, str, str]
_CHUNK = 128  # buckets per round trip


class RedisConsoleStore:
    def __init__(
        self,
        settings: RedisSettings,
        prefix: str,
        shards: int,
        buckets: int,
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self._redis = settings.redis_py_client(timeout_s)
        self._cluster = settings.cluster
        self._keys = Keys(prefix, shards, buckets)
        self._tally = RedisTally(settings, prefix, timeout_s=timeout_s)

    def tally(self, first: int, last: int) -> dict[int, dict[Count, int]]:
        return self._tally.read(first, last)

    def slo_days(self, first: int, last: int) -> dict[str, dict[str, int]]:
        return self._tally.read_slo_days(first, last)

    def open_counts(self) -> dict[str, int]:
        keys = self._keys
        names = [keys.stats()]
        if self._cluster:  # each shard counts its own there (`Keys.shard_stats`)
            names += [keys.shard_stats(s) for s in range(keys.shards)]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            replies: list[dict[Any, Any]] = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot read the open instances from Redis: {exc}") from exc
        out: dict[str, int] = {}
        for raw in replies:
            for field, value in raw.items():
                name = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
                if name.startswith("open:"):
                    out[name[5:]] = out.get(name[5:], 0) + int(value)
        return {flow: max(0, n) for flow, n in out.items()}

    def slots(self, flow: str, limit: int) -> Iterator[tuple[str, bytes]]:
        keys = self._keys
        names = [
            keys.bucket_prefix(s) + f"{flow}:{n}"
            for s in range(keys.shards)
            for n in range(keys.buckets)
        ]
        given = 0
        for i in range(0, len(names), _CHUNK):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for name in names[i : i + _CHUNK]:
                    pipe.hgetall(name)
                replies: list[dict[bytes, bytes]] = pipe.execute()
            except redis.RedisError as exc:
                raise StoreError(f"cannot read the slots of {flow} from Redis: {exc}") from exc
            for raw in replies:
                for field, value in raw.items():
                    if given >= limit:
                        return
                    given += 1
                    yield decode_key(field), unpack_value(value)[1]

    def cached_waiting(self, flow: str) -> bytes | None:
        try:
            got = self._redis.get(self._keys.console_waiting(flow))
        except redis.RedisError as exc:
            raise StoreError(f"cannot read the waiting count from Redis: {exc}") from exc
        return got if isinstance(got, bytes) else None

    def store_waiting(self, flow: str, data: bytes, ttl_ms: int) -> None:
        try:
            self._redis.set(self._keys.console_waiting(flow), data, px=ttl_ms)
        except redis.RedisError as exc:
            raise StoreError(f"cannot store the waiting count in Redis: {exc}") from exc

    def claim_count(self, flow: str, ttl_ms: int) -> bool:
        try:
            return bool(self._redis.set(self._keys.console_scan(flow), b"1", px=ttl_ms, nx=True))
        except redis.RedisError as exc:
            raise StoreError(f"cannot claim the waiting count in Redis: {exc}") from exc

    def close(self) -> None:
        self._redis.close()
        self._tally.close()
