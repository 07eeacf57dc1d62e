"""The guardrails' requests to Redis (contract §7): their arguments and replies, for
`RedisStateStore` (the loop's store) and `RedisHeldActions` (operators). Key names: `keys.py`."""

from __future__ import annotations

from typing import Any

from observer.adapters.redis.keys import Keys
from observer.errors import StoreError
from observer.runtime.ports import GuardCommit, GuardSnapshot, WriteBatch

__all__ = ["commit_args", "guard_write_args", "parse_snapshot", "read_args"]


def guard_write_args(
    keys: Keys, batch: WriteBatch, cap: int, paused_key: str | None = None
) -> list[Any]:
    """The guardrails' block of `write.lua`'s arguments. `paused_key`: another key than
    `guard_paused` to read pauses from (a Redis Cluster: the shard's, never set)."""
    args: list[Any] = [keys.guard_watermarks(), len(batch.watermarks)]
    for shard, wm in batch.watermarks:
        args += [shard, wm]
    args.append(len(batch.waiting))
    for w in batch.waiting:
        args += [keys.guard(w.flow, "waiting"), keys.guard(w.flow, "wdata"), w.at, w.id, w.data]
    args += [paused_key or keys.guard_paused(), cap, len(batch.gated)]
    for g in batch.gated:
        args += [
            g.flow,
            keys.outbox(g.shard),
            g.observer_id,
            g.record,
            keys.guard(g.flow, "held"),
            keys.guard(g.flow, "heldn"),
            g.action,
            g.held,
            keys.history(g.shard, g.sid),
            g.published,
            g.held_history,
        ]
    args.append(len(batch.floors))
    for flow, sid, due in batch.floors:
        args += [keys.guard(flow, "floor"), sid, "" if due is None else due]
    return args


def read_args(keys: Keys, flow: str, shards: int, limit: int) -> list[Any]:
    g = keys.guard
    return [
        g(flow, "state"),
        keys.guard_watermarks(),
        shards,
        g(flow, "waiting"),
        g(flow, "wdata"),
        g(flow, "released"),
        keys.guard_paused(),
        flow,
        limit,
        g(flow, "heldn"),
        g(flow, "totals"),
        g(flow, "floor"),
    ]


def _pairs(raw: Any) -> list[tuple[bytes, bytes]]:
    return [(raw[j], raw[j + 1]) for j in range(0, len(raw), 2)]


def parse_snapshot(raw: Any) -> GuardSnapshot:
    """`guard_read.lua`'s reply."""
    if not isinstance(raw, list) or len(raw) != 11:
        raise StoreError(f"unexpected reply to a guardrails read: {raw!r}")
    rev, upto, blob, wm, more, paused, _ids, datas, released, heldn, totals = raw
    waiting = [d for d in datas if d is not None]  # an id without data: gone meanwhile
    return GuardSnapshot(
        rev=int(rev),
        state=blob or None,
        upto=None if upto is None else int(upto),
        watermark=None if wm is None else int(wm),
        waiting=waiting,
        more=bool(more),
        released=[(k.decode(), v) for k, v in _pairs(released)],
        paused=bool(paused),
        held={k.decode(): int(v) for k, v in _pairs(heldn)},
        totals={k.decode(): int(v) for k, v in _pairs(totals)},
    )


def commit_args(keys: Keys, flow: str, c: GuardCommit, cap: int) -> list[Any]:
    g = keys.guard
    args: list[Any] = [
        g(flow, "state"),
        str(c.rev),
        "" if c.upto is None else str(c.upto),
        c.state,
        g(flow, "waiting"),
        g(flow, "wdata"),
        g(flow, "released"),
        g(flow, "held"),
        g(flow, "heldn"),
        cap,
        len(c.decided),
        *c.decided,
        len(c.released),
        *c.released,
        len(c.outbox),
    ]
    for shard, oid, rec in c.outbox:
        args += [keys.outbox(shard), oid, rec]
    args.append(len(c.held))
    for oid, action, entry in c.held:
        args += [oid, action, entry]
    args.append(len(c.history))
    for shard, sid, entry in c.history:
        args += [keys.history(shard, sid), entry]
    return args
