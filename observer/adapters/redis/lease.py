"""`RedisLease`: one holder per key prefix, for `routing: direct` (one process per group).

A plain `SET NX PX` with the holder's id; renewing and releasing check the holder first (one
Lua call each), so a process that lost the lease cannot extend or delete someone else's.
It keeps a second process from running beside the first; it does not fence a process frozen
for longer than the TTL (see docs/running.md, Limits). Off the hot path: redis-py, its own
connection, a call every few seconds.
"""

from __future__ import annotations

import redis

from observer.errors import StoreError
from observer.redis_settings import RedisSettings, parse_redis_url

__all__ = ["RedisLease"]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """The lease `key`, held as `owner` for `ttl_ms` at a time."""

    def __init__(
        self,
        settings: RedisSettings | str,
        key: str,
        owner: str,
        ttl_ms: int,
        *,
        timeout_s: float = 5.0,
    ) -> None:
        """`settings`: those of the hot path's connection (`parse_redis_url`), or a URL."""
        if isinstance(settings, str):
            settings = parse_redis_url(settings)
        self.key = key
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._redis = settings.redis_py_client(timeout_s)

    def acquire(self) -> str | None:
        try:
            if self._redis.set(self.key, self.owner, nx=True, px=self.ttl_ms):
                return None
            if self.renew():
                return None
            holder = self._redis.get(self.key)
        except redis.RedisError as exc:
            raise StoreError(f"cannot take the lease {self.key}: {exc}") from exc
        if holder is None:  # expired in between: try again next time
            return "nobody (it just expired)"
        return holder.decode("utf-8", "replace") if isinstance(holder, bytes) else str(holder)

    def renew(self) -> bool:
        try:
            return bool(self._redis.eval(_RENEW, 1, self.key, self.owner, self.ttl_ms))
        except redis.RedisError as exc:
            raise StoreError(f"cannot renew the lease {self.key}: {exc}") from exc

    def release(self) -> None:
        try:
            self._redis.eval(_RELEASE, 1, self.key, self.owner)
        except redis.RedisError as exc:
            raise StoreError(f"cannot release the lease {self.key}: {exc}") from exc

    def close(self) -> None:
        self._redis.close()
