"""`RedisFlowStore`: the flow versions deployed to a group, kept with its state (issue 15).

Versions are a hash under the state's prefix (`keys.py`), written in one MULTI with the
generation counter, under WATCH so that two deployments at once cannot both add a version.
Counting the instances per version (for retirement) is a scan of every bucket of a flow,
version numbers read by `versions.lua` on the server, a few buckets per call so that no call
holds Redis for long. redis-py with its own connection: never on the hot path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import redis

from observer.adapters.redis.keys import Keys
from observer.adapters.redis.store import load_script
from observer.errors import StoreError
from observer.flows.stored import DeployPlan, StoredFlow, plan_deploy
from observer.redis_settings import RedisSettings, parse_redis_url

__all__ = ["RedisFlowStore"]

log = logging.getLogger(__name__)

_BUCKETS_PER_CALL = 8


class RedisFlowStore:
    """The `FlowStore` port over Redis. Thread-safe (redis-py's pool)."""

    def __init__(self, settings: RedisSettings | str, keys: Keys, timeout_s: float = 5.0) -> None:
        if isinstance(settings, str):
            settings = parse_redis_url(settings)
        self._redis = settings.redis_py_client(timeout_s)
        self._keys = keys
        self._count = self._redis.register_script(load_script("versions.lua"))

    def deploy(self, flows: Sequence[StoredFlow]) -> DeployPlan:
        versions, generation = self._keys.flow_versions(), self._keys.flow_generation()
        fields = [f.field for f in flows]
        if not fields:
            return DeployPlan()
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(versions)
                        stored = pipe.hmget(versions, fields)
                        current = self._parse(dict(zip(fields, stored, strict=True)))
                        plan = plan_deploy(flows, current)
                        if plan.refused or not plan.added:
                            pipe.unwatch()
                            return plan
                        now = _ms(self._redis.time())  # (a cluster pipeline has no TIME)
                        added = [dataclasses.replace(sf, deployed_at=now) for sf in plan.added]
                        pipe.multi()
                        for sf in added:
                            pipe.hset(versions, sf.field, sf.to_json())
                        pipe.incr(generation)
                        pipe.execute()
                        plan.added = added
                        return plan
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise StoreError(f"cannot deploy flows to Redis: {exc}") from exc

    def generation(self) -> int:
        try:
            raw = self._redis.get(self._keys.flow_generation())
        except redis.RedisError as exc:
            raise StoreError(f"cannot read from Redis: {exc}") from exc
        return 0 if raw is None else int(raw)

    def stored(self) -> dict[str, StoredFlow]:
        try:
            raw = self._redis.hgetall(self._keys.flow_versions())
        except redis.RedisError as exc:
            raise StoreError(f"cannot read from Redis: {exc}") from exc
        return self._parse({_text(k): v for k, v in raw.items()})

    @staticmethod
    def _parse(raw: dict[str, bytes | str | None]) -> dict[str, StoredFlow]:
        out = {}
        for field, value in raw.items():
            if value is None:
                continue
            try:
                out[field] = StoredFlow.from_json(value)
            except ValueError as exc:
                log.error("stored flow version %s cannot be read (%s); it is ignored", field, exc)
        return out

    def instances(self, flow: str) -> dict[int, int]:
        k = self._keys
        members = [f"{flow}:{n}" for n in range(k.buckets)]
        counts: dict[int, int] = {}
        try:
            pipe = self._redis.pipeline(transaction=False)
            for shard in range(k.shards):
                prefix = k.bucket_prefix(shard)
                for i in range(0, len(members), _BUCKETS_PER_CALL):
                    chunk = [prefix + m for m in members[i : i + _BUCKETS_PER_CALL]]
                    self._count(keys=chunk, client=pipe)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot count instances in Redis: {exc}") from exc
        for reply in replies:
            for j in range(0, len(reply), 2):
                version = int(reply[j])
                counts[version] = counts.get(version, 0) + int(reply[j + 1])
        return counts

    def retire(self, flow: str, version: int, digest: str) -> bool:
        versions, field = self._keys.flow_versions(), f"{flow}:{version}"
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(versions)
                        raw = pipe.hget(versions, field)
                        if raw is None or StoredFlow.from_json(raw).digest != digest:
                            pipe.unwatch()
                            return False
                        pipe.multi()
                        pipe.hdel(versions, field)
                        pipe.incr(self._keys.flow_generation())
                        pipe.execute()
                        return True
                    except redis.WatchError:
                        continue
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot retire {field} in Redis: {exc}") from exc

    def now_ms(self) -> int:
        try:
            return _ms(self._redis.time())
        except redis.RedisError as exc:
            raise StoreError(f"cannot read from Redis: {exc}") from exc

    def report(self, process: str, generation: int) -> None:
        try:
            now = _ms(self._redis.time())
            self._redis.hset(self._keys.flow_processes(), process, f"{generation}:{now}")
        except redis.RedisError as exc:
            raise StoreError(f"cannot write to Redis: {exc}") from exc

    def processes(self) -> dict[str, tuple[int, int]]:
        try:
            raw = self._redis.hgetall(self._keys.flow_processes())
        except redis.RedisError as exc:
            raise StoreError(f"cannot read from Redis: {exc}") from exc
        out = {}
        for name, value in raw.items():
            generation, _, at = _text(value).partition(":")
            if generation.isdigit() and at.isdigit():
                out[_text(name)] = (int(generation), int(at))
        return out

    def forget(self, process: str) -> None:
        try:
            self._redis.hdel(self._keys.flow_processes(), process)
        except redis.RedisError as exc:
            raise StoreError(f"cannot write to Redis: {exc}") from exc

    @classmethod
    def for_prefix(cls, settings: RedisSettings | str, prefix: str) -> RedisFlowStore:
        """For a command line tool: the shard and bucket counts are read from the state's
        meta hash (none recorded: nothing has run, there is no state to scan)."""
        store = cls(settings, Keys(prefix, 1))
        try:
            shards, buckets = store._redis.hmget(store._keys.meta(), ["shards", "buckets"])
        except redis.RedisError as exc:
            store.close()
            raise StoreError(f"cannot read from Redis: {exc}") from exc
        if shards is not None and buckets is not None:
            store._keys = Keys(prefix, int(shards), int(buckets))
        return store

    def close(self) -> None:
        self._redis.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(time: tuple[int, int]) -> int:
    seconds, micros = time
    return int(seconds) * 1000 + int(micros) // 1000
