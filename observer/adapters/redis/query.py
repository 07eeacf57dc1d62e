"""`RedisSlotReader`: read-only access to slots and histories for the ops API and
`observer status` (redis-py with its own connection pool, thread-safe; off the hot path).
Layout: `keys.py` (a slot is a field of its bucket hash, its history a list)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from observer.adapters.redis.keys import Keys, unpack_value
from observer.errors import StoreError
from observer.redis_settings import RedisSettings, parse_redis_url
from observer.runtime.shards import slot_id

__all__ = ["RedisSlotReader"]


class RedisSlotReader:
    """Reads what the runtime wrote under a prefix. The shard and bucket counts are read from
    the store's meta hash (so `observer status` needs only the URL and the prefix); `shards`
    (and `buckets`, else the default) given skip that read."""

    def __init__(
        self,
        settings: RedisSettings | str,
        prefix: str,
        *,
        shards: int | None = None,
        buckets: int | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if isinstance(settings, str):
            settings = parse_redis_url(settings)
        self._redis = settings.redis_py_client(timeout_s)
        self._prefix = prefix
        self._keys: Keys | None = None
        if shards:
            self._keys = Keys(prefix, shards, buckets) if buckets else Keys(prefix, shards)

    def _k(self) -> Keys:
        if self._keys is None:
            try:
                shards, buckets = self._redis.hmget(
                    Keys(self._prefix, 1).meta(), ["shards", "buckets"]
                )
            except redis.RedisError as exc:
                raise StoreError(f"cannot read from Redis: {exc}") from exc
            if shards is None:
                raise StoreError(
                    f"no observer state under prefix '{self._prefix}' (nothing has run with it)"
                )
            if buckets is None:
                raise StoreError(
                    f"the state under prefix '{self._prefix}' has an older format that this "
                    "version does not read"
                )
            self._keys = Keys(self._prefix, int(shards), int(buckets))
        return self._keys

    def read(self, flow: str, key: str) -> tuple[bytes | None, list[bytes]]:
        keys = self._k()
        sid = slot_id(flow, key)
        shard = keys.shard_of(sid)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hget(keys.bucket(shard, sid), keys.field(sid))
            pipe.lrange(keys.history(shard, sid), 0, -1)
            value, history = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot read from Redis: {exc}") from exc
        return None if value is None else unpack_value(value)[1], list(history)

    def deployed(self) -> dict[str, Any] | None:
        try:
            raw = self._redis.get(Keys(self._prefix, 1).deployed())
        except redis.RedisError as exc:
            raise StoreError(f"cannot read from Redis: {exc}") from exc
        if raw is None:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        self._redis.close()
