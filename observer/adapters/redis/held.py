"""`RedisHeldActions`: the held actions and the pause switch for operators (`observer actions`,
the ops API's control endpoints). redis-py with its own connection pool, thread-safe, off the
hot path. Releasing or dropping is one `held.lua` call: an entry is taken from the held set
exactly once, so two operators (or a retry) never release the same record twice. A released
record is published by the flow's decider from its guard shard's outbox, same observer-id.
Key names: `keys.py` (`Keys.guard`, `guard_paused`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from observer.adapters.redis.keys import Keys
from observer.adapters.redis.store import load_script
from observer.errors import ConfigError, StoreError
from observer.redis_settings import RedisSettings, parse_redis_url
from observer.runtime.held import HeldAction

__all__ = ["RedisHeldActions"]


class RedisHeldActions:
    """The `HeldActions` port on Redis, for a key prefix. `history_cap`: the instance
    histories' cap (the runtime's `OBSERVER_HISTORY_LIMIT`)."""

    def __init__(
        self,
        settings: RedisSettings | str,
        prefix: str,
        *,
        history_cap: int = 200,
        timeout_s: float = 5.0,
    ) -> None:
        if isinstance(settings, str):
            settings = parse_redis_url(settings)
        self._redis = settings.redis_py_client(timeout_s)
        self._cluster = settings.cluster
        self.keys = Keys(prefix, 1)  # guard keys and histories do not depend on the shards
        self.history_cap = history_cap
        self._script = self._redis.register_script(load_script("held.lua"))

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StoreError(f"cannot reach Redis: {exc}") from exc

    def held(self, flow: str) -> list[bytes]:
        return list(self._call(self._redis.hvals, self.keys.guard(flow, "held")))

    def release(self, flow: str, ids: Sequence[str], at: int) -> int:
        return self._take("release", flow, ids, at)

    def drop(self, flow: str, ids: Sequence[str], at: int) -> int:
        return self._take("drop", flow, ids, at)

    def _take(self, mode: str, flow: str, ids: Sequence[str], at: int) -> int:
        g = self.keys.guard
        held_key = g(flow, "held")
        total = 0
        for start in range(0, len(ids), 500):  # bounded scripts: other clients wait for each
            chunk = list(ids[start : start + 500])
            raw = self._call(self._redis.hmget, held_key, chunk)
            args: list[Any] = [mode, held_key, g(flow, "heldn"), g(flow, "released")]
            args += [g(flow, "totals"), self.history_cap]
            for oid, data in zip(chunk, raw, strict=True):
                if data is None:
                    continue
                try:
                    h = HeldAction.decode(data)
                except ValueError:
                    continue
                what = "released" if mode == "release" else "dropped"
                hist = Keys(self.keys.prefix, h.shard + 1).history(h.shard, h.sid)
                args += [oid, h.action, hist, h.history(what, at)]
            if len(args) > 6:
                total += int(self._call(self._script, [], args))
        return total

    def pause(self, flow: str | None, reason: str) -> None:
        if self._cluster:  # the writes there would not see it (`RedisStateStore`)
            raise ConfigError(
                "pausing actions needs a single Redis, not a Redis Cluster (docs/running.md, "
                "Redis Cluster)"
            )
        self._call(self._redis.hset, self.keys.guard_paused(), flow or "*", reason)

    def resume(self, flow: str | None) -> None:
        key = self.keys.guard_paused()
        if flow is None:
            self._call(self._redis.delete, key)
        else:
            self._call(self._redis.hdel, key, flow)

    def paused(self) -> dict[str, str]:
        raw = self._call(self._redis.hgetall, self.keys.guard_paused())
        return {k.decode(): v.decode() for k, v in raw.items()}

    def guard_state(self, flow: str) -> bytes | None:
        blob = self._call(self._redis.hget, self.keys.guard(flow, "state"), "blob")
        return None if blob is None else bytes(blob)

    def close(self) -> None:
        self._redis.close()
