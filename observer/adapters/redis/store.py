"""`RedisStateStore`: slot state, deadlines, outbox and history in Redis.

A batch is written atomically in one round trip: one EVALSHA of `write.lua` with the batch
packed into its arguments. Slots are loaded with one EVALSHA of `load.lua` (an HGET per slot
from its bucket, see `keys.py`). Two raw connections (`RedisWire`): writes and everything else
are pipelined on one, so the loop can send a batch's write, plan the next batch, and only then
read the reply; loads have their own, so a load is not queued behind that write (and does not
see it: the tracker waits for a write before loading a slot it touches).

On a Redis Cluster (`redis+cluster://`) each request goes to the node of its hash slot
(`cluster.py`): a batch is one script call per shard it touches (a shard's keys share one hash
tag), sent together and confirmed together; loads and due reads likewise per shard. The
scripts run with a `#!lua` shebang there, so Redis itself refuses one that reaches a second
slot. The guardrails' scripts span flows and shards: on a cluster they are refused (`open`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, Generic, TypeVar

import hiredis
import orjson

from observer.adapters.redis.cluster import Nodes, split_batch
from observer.adapters.redis.guard import (
    commit_args,
    guard_write_args,
    parse_snapshot,
    read_args,
)
from observer.adapters.redis.keys import DUE_BYTES, Keys, pack_value
from observer.adapters.redis.wire import RedisWire
from observer.errors import ConfigError, StoreError
from observer.redis_settings import RedisSettings, parse_redis_url
from observer.runtime.ports import DueSlots, GuardCommit, GuardSnapshot, WriteBatch

__all__ = ["RedisStateStore", "load_script"]

T = TypeVar("T")
log = logging.getLogger(__name__)

# 2: slots as fields of bucket hashes with their due time in the value, a due index of buckets
# (1: a string key per slot and a due member per slot)
STORE_FORMAT = 2

# Bucket hashes stay listpacks (a few bytes per field instead of ~45) only within these
# limits; below them the store works the same and costs more memory. ops/stack sets them.
LISTPACK_SETTINGS = {"hash-max-listpack-value": 1024, "hash-max-listpack-entries": 512}


def load_script(name: str, *, values: bool = False) -> bytes:
    """A Lua script of this package; `values`: after value.lua (how a bucket value holds its
    due time), which the scripts reading due times share."""
    files = resources.files("observer.adapters.redis")
    script = files.joinpath(name).read_bytes()
    return files.joinpath("value.lua").read_bytes() + script if values else script


class _Reply(Generic[T]):
    """The reply of a request; of `parts` requests (one per node or shard, a cluster), their
    raw replies in a list, parsed once all came."""

    __slots__ = ("_done", "_error", "_parse", "_parts", "_raws", "_store", "_value")

    def __init__(self, store: RedisStateStore, parse: Callable[[Any], T], parts: int = 0) -> None:
        self._store = store
        self._parse = parse
        self._done = False
        self._value: T | None = None
        self._error: StoreError | None = None
        self._parts = parts  # 0: one request, its raw reply parsed as it is
        self._raws: list[Any] = []

    def _set(self, raw: Any) -> None:
        if isinstance(raw, hiredis.ReplyError) and self._error is None:
            self._error = StoreError(f"Redis replied with an error: {raw}")
        if self._parts > 1:
            self._parts -= 1
            self._raws.append(raw)
            return
        self._done = True
        if self._error is not None:
            return
        try:
            self._value = self._parse([*self._raws, raw] if self._parts else raw)
        except StoreError as exc:
            self._error = exc

    def _fail(self, exc: StoreError) -> None:
        self._done = True
        self._error = exc

    def result(self) -> T:
        while not self._done:
            self._store._read_one()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class RedisStateStore:
    """The state store over two raw connections: one for writes and everything else, one for
    loads, so a load is not queued behind the write before it (the runtime loads no slot
    that an unconfirmed write touches). Owned by the consumer loop's thread."""

    def __init__(
        self,
        redis: RedisSettings | str,
        keys: Keys,
        *,
        history_cap: int = 100,
        timeout_s: float = 10.0,
    ) -> None:
        """`redis`: the settings of `parse_redis_url` (or a URL, parsed here)."""
        settings = parse_redis_url(redis) if isinstance(redis, str) else redis
        self.keys = keys
        self.history_cap = history_cap
        self._nodes = Nodes(settings, timeout_s)
        self._wire: RedisWire = self._nodes.default  # requests without keys
        self._reads = Nodes(settings, timeout_s)
        self.cluster = settings.cluster
        # on a cluster Redis checks that a script with a shebang stays in one hash slot
        shebang = b"#!lua\n" if self.cluster else b""
        self._write_src = shebang + load_script("write.lua", values=True)
        self._due_src = shebang + load_script("due.lua", values=True)
        self._load_src = shebang + load_script("load.lua")
        self._guard_read_src = load_script("guard_read.lua")
        self._guard_commit_src = load_script("guard_commit.lua")
        self._write_sha = hashlib.sha1(self._write_src).hexdigest()
        self._due_sha = hashlib.sha1(self._due_src).hexdigest()
        self._load_sha = hashlib.sha1(self._load_src).hexdigest()
        self._guard_read_sha = hashlib.sha1(self._guard_read_src).hexdigest()
        self._guard_commit_sha = hashlib.sha1(self._guard_commit_src).hexdigest()
        self._queue: deque[tuple[_Reply[Any], RedisWire]] = deque()
        # (bucket key, due index, member, field) of a slot: a crc32 and a UUID parse once per
        # slot rather than once per write (bounded: ~150 B an entry)
        self._place = lru_cache(maxsize=1 << 17)(self._place_of)

    def _place_of(self, shard: int, sid: str) -> tuple[str, str, str, bytes]:
        m, f = self.keys.locate(sid)
        return self.keys.bucket_prefix(shard) + m, self.keys.due(shard), m, f

    @property
    def where(self) -> str:
        return self._wire.where

    # -- connection -------------------------------------------------------------------------------

    def open(self, shards: int, deployed: Mapping[str, object]) -> None:
        """Connect, load the scripts, check the format, shard count and bucket count recorded
        under the prefix (recorded by the first process to open it)."""
        self.reconnect()
        meta, prefix = self.keys.meta(), self.keys.prefix
        at = self._nodes.for_key(meta)
        at.call("HSETNX", meta, "format", STORE_FORMAT)
        stored = at.call("HGET", meta, "format")
        if int(stored) != STORE_FORMAT:
            raise ConfigError(
                f"Redis prefix '{prefix}' holds state format {stored.decode()}, this version writes "
                f"format {STORE_FORMAT}: use a new key prefix (the old state is not converted)"
            )
        at.call("HSETNX", meta, "shards", shards)
        at.call("HSETNX", meta, "buckets", self.keys.buckets)
        got_shards, got_buckets = (int(v) for v in at.call("HMGET", meta, "shards", "buckets"))
        if got_shards != shards:
            raise ConfigError(
                f"Redis prefix '{prefix}' holds state for {got_shards} shards, not {shards}: "
                "use the same shard count, or another key prefix"
            )
        if got_buckets != self.keys.buckets:
            raise ConfigError(
                f"Redis prefix '{prefix}' holds state in {got_buckets} buckets per shard, not "
                f"{self.keys.buckets}: use the same bucket count, or another key prefix"
            )
        self._check_listpack_settings()
        deployed_key = self.keys.deployed()
        self._nodes.for_key(deployed_key).call("SET", deployed_key, orjson.dumps(dict(deployed)))

    def _check_listpack_settings(self) -> None:
        """Warn (once per open) when Redis would store buckets as hashtables: correct, but
        ~20 % more memory per slot. A managed Redis may refuse CONFIG: then nothing is said."""
        low = []
        for name, wanted in LISTPACK_SETTINGS.items():
            try:
                reply = self._wire.call("CONFIG", "GET", name)
            except StoreError:
                return
            if len(reply) == 2 and int(reply[1]) < wanted:
                low.append(f"{name} {int(reply[1])} (recommended >= {wanted})")
        if low:
            log.warning(
                "Redis at %s: %s; state buckets bigger than that are hashtables, ~20 %% more "
                "memory (docs/running.md, What lives in Redis)",
                self.where,
                ", ".join(low),
            )

    def reconnect(self) -> None:
        """(Re)connect and load the scripts; pending replies are failed."""
        err = StoreError("the Redis connection was reset")
        while self._queue:
            self._queue.popleft()[0]._fail(err)
        self._nodes.connect()  # a cluster: its slot map learnt again
        self._reads.connect()
        for node in self._nodes.all():
            node.call("SCRIPT", "LOAD", self._write_src)
            node.call("SCRIPT", "LOAD", self._due_src)
            node.call("SCRIPT", "LOAD", self._load_src)
            node.call("SCRIPT", "LOAD", self._guard_read_src)
            node.call("SCRIPT", "LOAD", self._guard_commit_src)

    def close(self) -> None:
        self._nodes.close()
        self._reads.close()

    # -- pipelined requests -----------------------------------------------------------------------

    def _read_one(self) -> None:
        reply, wire = self._queue[0]
        try:
            raw = wire.read()
        except StoreError as exc:
            while self._queue:
                self._queue.popleft()[0]._fail(exc)
            raise
        self._queue.popleft()
        reply._set(raw)

    def _drain(self) -> None:
        while self._queue:
            self._read_one()

    def _send(self, payload: bytes, parse: Callable[[Any], T]) -> _Reply[T]:
        return self._send_parts([(self._wire, payload)], parse, parts=0)

    def _send_parts(
        self, requests: Sequence[tuple[RedisWire, bytes]], parse: Callable[[Any], T], parts: int
    ) -> _Reply[T]:
        """Send requests (to their nodes) answered as one reply: `parse` gets the list of
        their raw replies (`parts` = len(requests); 0: one request, its raw reply)."""
        reply = _Reply(self, parse, parts)
        try:
            for wire, payload in requests:
                wire.send(payload)
                self._queue.append((reply, wire))
        except StoreError as exc:
            while self._queue:
                self._queue.popleft()[0]._fail(exc)
            raise
        return reply

    def load(self, slots: Sequence[tuple[int, str]]) -> _Reply[list[bytes | None]]:
        """State bytes of each (shard, slot id), in order; None where nothing is stored."""
        if not slots:
            done: _Reply[list[bytes | None]] = _Reply(self, list)
            done._set([])
            return done
        if self.cluster:
            return self._load_by_shard(slots)
        place = self._place
        args: list[Any] = []
        for s, sid in slots:
            b, _idx, _m, f = place(s, sid)
            args += (b, f)
        reply: _Reply[list[bytes | None]] = _Reply(self, _states)
        reads = self._reads.default
        reads.send(_pack(("EVALSHA", self._load_sha, 0, *args)))
        reply._set(reads.read())
        return reply

    def _load_by_shard(self, slots: Sequence[tuple[int, str]]) -> _Reply[list[bytes | None]]:
        """`load` on a cluster: one script call per shard, sent to every node before the
        replies are read; the values put back in the order asked."""
        place = self._place
        by_shard: dict[int, list[int]] = {}
        args: dict[int, list[Any]] = {}
        for i, (s, sid) in enumerate(slots):
            b, _idx, _m, f = place(s, sid)
            by_shard.setdefault(s, []).append(i)
            args.setdefault(s, []).extend((b, f))
        sent = []
        for s, shard_args in args.items():
            wire = self._reads.for_key(self.keys.due(s))
            wire.send(_pack(("EVALSHA", self._load_sha, 0, *shard_args)))
            sent.append((s, wire))
        out: list[bytes | None] = [None] * len(slots)
        error: StoreError | None = None
        for s, wire in sent:
            raw = wire.read()
            if isinstance(raw, hiredis.ReplyError):
                error = error or StoreError(f"Redis replied with an error: {raw}")
                continue
            for i, value in zip(by_shard[s], _states(raw), strict=True):
                out[i] = value
        if error is not None:
            raise error
        done: _Reply[list[bytes | None]] = _Reply(self, list)
        done._set(out)
        return done

    def write(self, batch: WriteBatch) -> _Reply[list[str]]:
        """Apply a batch atomically (one EVALSHA); the reply confirms it, with the observer-ids
        of the gated records it held."""
        if self.cluster:
            return self._write_by_shard(batch)
        args = self._write_args(batch, self.keys.stats(), batch.stats)
        args += guard_write_args(self.keys, batch, self.history_cap)
        return self._send(_pack(("EVALSHA", self._write_sha, 0, *args)), _held_ids)

    def _write_by_shard(self, batch: WriteBatch) -> _Reply[list[str]]:
        """`write` on a cluster: one atomic script call per shard the batch touches, all sent
        before any reply is read; confirmed once every one is."""
        requests = []
        keys = self.keys
        parts = split_batch(batch)
        if not parts:
            done: _Reply[list[str]] = _Reply(self, _held_ids)
            done._set([])
            return done
        for shard, part in parts.items():
            stats = {name: inc for (s, name), inc in batch.shard_stats.items() if s == shard}
            args = self._write_args(part, keys.shard_stats(shard), stats)
            args += guard_write_args(keys, part, self.history_cap, keys.shard_paused(shard))
            wire = self._nodes.for_key(keys.due(shard))
            requests.append((wire, _pack(("EVALSHA", self._write_sha, 0, *args))))
        return self._send_parts(requests, _held_ids_of_parts, parts=len(requests))

    def _write_args(self, batch: WriteBatch, stats_key: str, stats: Mapping[str, int]) -> list[Any]:
        k = self.keys
        place, history = self._place, k.history
        cap = self.history_cap
        args: list[Any] = [len(batch.puts)]
        extend = args.extend
        for p in batch.puts:
            b, idx, m, f = place(p.shard, p.sid)
            if p.history:  # (the history key is read only when there are entries)
                extend((b, idx, m, f, pack_value(p.due, p.state), p.ttl_ms))
                extend((history(p.shard, p.sid), cap, len(p.history), *p.history))
            else:
                extend((b, idx, m, f, pack_value(p.due, p.state), p.ttl_ms, b"", cap, 0))
        args.append(len(batch.deletes))
        for shard, sid in batch.deletes:
            args += [*place(shard, sid), history(shard, sid)]
        args.append(len(batch.stale_due))
        for shard, sid in batch.stale_due:
            args += place(shard, sid)
        args.append(len(batch.outbox_dels))
        for shard, oid in batch.outbox_dels:
            args += [k.outbox(shard), oid]
        args.append(len(batch.outbox_adds))
        for shard, oid, rec in batch.outbox_adds:
            args += [k.outbox(shard), oid, rec]
        args += [stats_key, len(stats)]
        for name, inc in stats.items():
            args += [name, inc]
        return args

    # -- synchronous requests ---------------------------------------------------------------------

    def due(self, watermarks: Sequence[tuple[int, int]], limit: int) -> DueSlots:
        """Slots due at or before their shard's watermark (at most `limit`), with their state.
        Slots come bucket by bucket (earliest bucket first), not strictly in due order."""
        self._drain()
        k = self.keys
        requests: list[tuple[RedisWire, bytes]] = []
        args: list[Any] = []
        for shard, wm in watermarks:
            shard_args = [shard, k.due(shard), k.bucket_prefix(shard), wm]
            if self.cluster:  # one call per shard, on its node
                payload = _pack(("EVALSHA", self._due_sha, 0, limit, 1, *shard_args))
                requests.append((self._nodes.for_key(k.due(shard)), payload))
            args += shard_args
        if not self.cluster:
            payload = _pack(("EVALSHA", self._due_sha, 0, limit, len(watermarks), *args))
            requests.append((self._wire, payload))
        raws = self._send_parts(requests, _as_lists, len(requests)).result() if requests else []
        lates = [int(raw[0]) for raw in raws if raw[0] is not None]
        sid_of = k.sid_of
        slots: list[tuple[int, str, bytes | None]] = [
            (int(raw[i]), sid_of(raw[i + 1], raw[i + 2]), raw[i + 3][DUE_BYTES:])
            for raw in raws
            for i in range(2, len(raw), 4)
        ]
        nexts = [v for raw in raws for v in raw[1]]  # one per shard, in the order asked
        later: dict[int, int | None] = {}
        if len(slots) <= limit:  # (a cluster's shards are limited one by one, then together)
            for (shard, _wm), v in zip(watermarks, nexts, strict=True):
                if v is not None:
                    later[shard] = None if v == b"inf" else int(v)
        return DueSlots(slots[:limit], max(lates) if lates else None, later)

    def outbox(self, shards: Iterable[int]) -> Iterator[tuple[int, str, bytes]]:
        """Every entry left in the outbox of these shards."""
        self._drain()
        for shard in shards:
            cursor = b"0"
            while True:
                key = self.keys.outbox(shard)
                cursor, items = self._nodes.for_key(key).call("HSCAN", key, cursor, "COUNT", 500)
                for i in range(0, len(items), 2):
                    yield shard, items[i].decode(), items[i + 1]
                if cursor == b"0":
                    break

    def stats(self) -> dict[str, int]:
        self._drain()
        k = self.keys
        names = [k.stats()]
        if self.cluster:  # each shard counts its own (`Keys.shard_stats`)
            names += [k.shard_stats(s) for s in range(k.shards)]
        out: dict[str, int] = {}
        for key in names:
            raw = self._nodes.for_key(key).call("HGETALL", key)
            for i in range(0, len(raw), 2):
                name = raw[i].decode()
                out[name] = out.get(name, 0) + int(raw[i + 1])
        return out

    # -- guardrails (contract §7; the scripts' arguments and replies: guard.py) --------------------

    def _no_guardrails_on_a_cluster(self) -> None:
        if self.cluster:
            raise ConfigError(
                "guardrails, held actions and OBSERVER_ACTIONS=hold need a single Redis: their "
                "keys span flows and shards, which a Redis Cluster cannot change atomically "
                "(docs/running.md, Redis Cluster)"
            )

    def guard_read(self, flow: str, shards: int, limit: int) -> GuardSnapshot:
        if self.cluster:  # nothing can wait there (`split_batch`, `pause` refuse it)
            return GuardSnapshot(0, None, None, None, [], False, [], False, {}, {})
        self._drain()
        args = read_args(self.keys, flow, shards, limit)
        raw = self._send(_pack(("EVALSHA", self._guard_read_sha, 0, *args)), _as_list).result()
        return parse_snapshot(raw)

    def guard_commit(self, flow: str, commit: GuardCommit) -> bool:
        self._no_guardrails_on_a_cluster()
        self._drain()
        args = commit_args(self.keys, flow, commit, self.history_cap)
        reply = self._send(_pack(("EVALSHA", self._guard_commit_sha, 0, *args)), _int).result()
        return reply == 1

    def pause(self, flow: str | None, reason: str) -> None:
        self._no_guardrails_on_a_cluster()
        self._drain()
        self._wire.call("HSET", self.keys.guard_paused(), flow or "*", reason)


def _pack(args: tuple[Any, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(args)
    return packed


def _as_list(raw: Any) -> Any:
    if not isinstance(raw, list):
        raise StoreError(f"unexpected Redis reply {raw!r}")
    return raw


def _states(raw: Any) -> list[bytes | None]:
    """Bucket values (due time + state) to states."""
    return [None if v is None else v[DUE_BYTES:] for v in _as_list(raw)]


def _held_ids(raw: Any) -> list[str]:
    return [v.decode() for v in _as_list(raw)]


def _held_ids_of_parts(raws: list[Any]) -> list[str]:
    return [v for raw in raws for v in _held_ids(raw)]


def _as_lists(raws: list[Any]) -> list[Any]:
    """The list replies of `_send_parts`' requests."""
    return [_as_list(raw) for raw in raws]


def _int(raw: Any) -> int:
    if not isinstance(raw, int):
        raise StoreError(f"unexpected Redis reply {raw!r}")
    return raw
