"""`RedisTally`: the per-minute correlation-health counts in Redis (`P:tally:<minute>`, one
hash per epoch minute, layout in `keys.py`), added to by every process of a group and read by
`observer health` (and later a web console) from any machine.

redis-py with its own connection and short timeouts: the loop's thread flushes every few
seconds and must never wait long for a store that is down (the counts are then kept and sent
with the next flush)."""

from __future__ import annotations

from collections.abc import Mapping

import redis

from observer.adapters.redis.keys import Keys, tally_count, tally_field
from observer.errors import StoreError
from observer.redis_settings import RedisSettings, parse_redis_url

__all__ = ["SLO_DAY_TTL_S", "TALLY_TTL_S", "RedisTally"]

TALLY_TTL_S = 86_400 + 3_600  # a day of minutes, and the hour `observer health` reads at most
_MAX_READ_MINUTES = 24 * 60 + 60
_MINUTES_A_DAY = 24 * 60
SLO_DAY_TTL_S = 366 * 86_400  # the SLO counts per day: windows up to a year

Count = tuple[str, str, str, str]


class RedisTally:
    """Adds per-minute counts (the runtime's `TallySink`) and reads them back."""

    def __init__(
        self, settings: RedisSettings | str, prefix: str, *, timeout_s: float = 1.0
    ) -> None:
        if isinstance(settings, str):
            settings = parse_redis_url(settings)
        self._redis = settings.redis_py_client(timeout_s)
        self._keys = Keys(prefix, 1)

    def add(self, counts: Mapping[int, Mapping[Count, int]]) -> None:
        """HINCRBY every count into its minute's hash (one round trip); each hash touched
        keeps a TTL of a day."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for minute, per in counts.items():
                key = self._keys.tally(minute)
                day_key = None
                for count, n in per.items():
                    if n:
                        pipe.hincrby(key, tally_field(count), n)
                        if count[0] == "slo":  # the web console's error budget, per day
                            day_key = self._keys.slo_day(minute // _MINUTES_A_DAY)
                            pipe.hincrby(day_key, f"{count[1]}:{count[2]}", n)
                pipe.expire(key, TALLY_TTL_S)
                if day_key is not None:
                    pipe.expire(day_key, SLO_DAY_TTL_S)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot write correlation counts to Redis: {exc}") from exc

    def read(self, first: int, last: int) -> dict[int, dict[Count, int]]:
        """The counts of the minutes first..last (epoch minutes, both included), minutes
        with none left out."""
        if last - first + 1 > _MAX_READ_MINUTES:
            raise ValueError(f"at most {_MAX_READ_MINUTES} minutes are kept")
        minutes = list(range(first, last + 1))
        try:
            pipe = self._redis.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(self._keys.tally(minute))
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot read correlation counts from Redis: {exc}") from exc
        out: dict[int, dict[Count, int]] = {}
        for minute, raw in zip(minutes, replies, strict=True):
            per: dict[Count, int] = {}
            for field, value in raw.items():
                count = tally_count(field)
                if count is not None:
                    per[count] = per.get(count, 0) + int(value)
            if per:
                out[minute] = per
        return out

    def read_slo_days(self, first: int, last: int) -> dict[str, dict[str, int]]:
        """flow -> {"good": n, "bad": n} added up over the UTC days first..last (epoch days,
        both included; at most a year)."""
        days = list(range(max(first, last - 366), last + 1))
        try:
            pipe = self._redis.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self._keys.slo_day(day))
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"cannot read SLO counts from Redis: {exc}") from exc
        out: dict[str, dict[str, int]] = {}
        for raw in replies:
            for field, value in raw.items():
                flow, _, result = field.decode("utf-8", "replace").rpartition(":")
                per = out.setdefault(flow, {"good": 0, "bad": 0})
                per[result] = per.get(result, 0) + int(value)
        return out

    def close(self) -> None:
        self._redis.close()
