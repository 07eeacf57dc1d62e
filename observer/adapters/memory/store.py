"""`InMemoryStateStore`: the `StateStore` (and `SlotReader`) port in a few dicts, with the
semantics of `RedisStateStore` and ways to make it fail.

Same contract as the Redis store: a write batch applies entirely or not at all (puts with
their due times and capped history, deletions, dropped due times, outbox deletions then
additions, counters); `due` returns the slots due at or before their shard's watermark with
their states, and how overdue the most overdue shard is; `open` refuses another shard count
under the same store. Not modelled: key TTLs, buckets, memory.

Failures, for tests: `available = False` makes every request (and `reconnect`) raise
StoreError until it is set back, `fail_requests(n)` the next n requests only;
`fail_writes(n, applied=...)` makes the next n write replies fail, the write applied or not (a
connection lost before or after Redis ran it); `sync()` marks what a crash keeps and
`crash(down_for=n)` loses every write since (Redis with AOF `everysec` can lose its last
second), the next n requests failing. Replies sent before a failure fail with it, like a Redis
connection that was reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from observer.adapters.memory.guard import GuardData
from observer.errors import ConfigError, StoreError
from observer.runtime.ports import DueSlots, GuardCommit, GuardSnapshot, WriteBatch
from observer.runtime.shards import shard_of, slot_id

__all__ = ["InMemoryStateStore"]

T = TypeVar("T")


@dataclass(slots=True)
class _Slot:
    shard: int
    state: bytes
    due: int | None
    ttl_ms: int


@dataclass(slots=True)
class _Data:
    """Everything stored: copied by `sync`, restored by `crash`."""

    slots: dict[str, _Slot] = field(default_factory=dict)
    history: dict[str, list[bytes]] = field(default_factory=dict)
    outbox: dict[int, dict[str, bytes]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
    guard: GuardData = field(default_factory=GuardData)  # the guardrails' (contract §7)

    def copy(self) -> _Data:
        return _Data(
            {sid: _Slot(s.shard, s.state, s.due, s.ttl_ms) for sid, s in self.slots.items()},
            {sid: list(h) for sid, h in self.history.items()},
            {shard: dict(box) for shard, box in self.outbox.items()},
            dict(self.stats),
            dict(self.meta),
            self.guard.copy(),
        )


class _Reply(Generic[T]):
    """A reply to read later; it fails if the store failed since it was sent."""

    __slots__ = ("_epoch", "_error", "_store", "_value")

    def __init__(self, store: InMemoryStateStore, value: T, error: StoreError | None) -> None:
        self._store = store
        self._epoch = store._epoch
        self._value = value
        self._error = error

    def result(self) -> T:
        if self._error is None and self._epoch != self._store._epoch:
            self._error = StoreError("the connection to the in-memory store was reset")
        if self._error is not None:
            raise self._error
        return self._value


class InMemoryStateStore:
    """Slot states, due times, histories, outboxes and counters in memory."""

    def __init__(self, *, history_cap: int = 100) -> None:
        self.history_cap = history_cap
        self._available = True
        self._data = _Data()
        self._synced = _Data()
        self._epoch = 0  # bumped by every failure: replies sent before it fail
        self._failing_writes: list[bool] = []  # per write to fail: whether it is applied
        self._failing_requests = 0
        self.shards = 0
        self.writes = 0  # write batches applied

    # -- failures (tests) ---------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False: every request fails (and replies still to be read)."""
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        if not value:
            self._epoch += 1
        self._available = value

    def fail_writes(self, n: int = 1, *, applied: bool = False) -> None:
        """The next `n` write replies fail; `applied`: the writes took effect all the same."""
        self._failing_writes += [applied] * n

    def fail_requests(self, n: int = 1) -> None:
        """The next `n` requests fail (and the replies still to be read)."""
        self._failing_requests += n
        self._epoch += 1

    def sync(self) -> None:
        """What is stored now survives a `crash`."""
        self._synced = self._data.copy()

    def crash(self, *, down_for: int = 1) -> None:
        """Lose every write since the last `sync`; the next `down_for` requests fail."""
        self._data = self._synced.copy()
        self.fail_requests(down_for)

    def _check(self) -> None:
        if not self._available:
            raise StoreError("the in-memory store is unavailable")
        if self._failing_requests:
            self._failing_requests -= 1
            raise StoreError("the in-memory store failed a request")

    # -- the StateStore port ------------------------------------------------------------------------

    def open(self, shards: int, deployed: Mapping[str, object]) -> None:
        self._check()
        meta = self._data.meta
        recorded = meta.setdefault("shards", shards)
        if recorded != shards:
            raise ConfigError(
                f"the store holds state for {recorded} shards, not {shards}: use the same "
                "shard count, or another store"
            )
        meta["deployed"] = dict(deployed)
        self.shards = shards

    def reconnect(self) -> None:
        self._check()
        self._epoch += 1

    def close(self) -> None:
        """Nothing to release."""

    def load(self, slots: Sequence[tuple[int, str]]) -> _Reply[list[bytes | None]]:
        self._check()
        stored = self._data.slots
        out: list[bytes | None] = []
        for _shard, sid in slots:
            s = stored.get(sid)
            out.append(None if s is None else s.state)
        return _Reply(self, out, None)

    def write(self, batch: WriteBatch) -> _Reply[list[str]]:
        self._check()
        if self._failing_writes:
            applied = self._failing_writes.pop(0)
            if applied:
                self._apply(batch)
            self._epoch += 1
            return _Reply(self, [], StoreError("the in-memory store failed a write"))
        return _Reply(self, self._apply(batch), None)

    def _apply(self, batch: WriteBatch) -> list[str]:
        data = self._data
        slots, history, cap = data.slots, data.history, self.history_cap
        for p in batch.puts:
            slots[p.sid] = _Slot(p.shard, p.state, p.due, p.ttl_ms)
            if p.history:
                h = history.setdefault(p.sid, [])
                h += p.history
                del h[:-cap]
        for _shard, sid in batch.deletes:
            slots.pop(sid, None)
            history.pop(sid, None)
        for _shard, sid in batch.stale_due:
            s = slots.get(sid)
            if s is not None:
                s.due = None
        for shard, oid in batch.outbox_dels:
            data.outbox.get(shard, {}).pop(oid, None)
        for shard, oid, rec in batch.outbox_adds:
            data.outbox.setdefault(shard, {})[oid] = rec
        for name, inc in batch.stats.items():
            data.stats[name] = data.stats.get(name, 0) + inc
        self.writes += 1
        return data.guard.write(batch, self._append, self._outbox_put)

    def _append(self, sid: str, entry: bytes) -> None:
        """Append to a history that exists (RPUSHX), capped."""
        h = self._data.history.get(sid)
        if h:
            h.append(entry)
            del h[: -self.history_cap]

    def _outbox_put(self, shard: int, oid: str, record: bytes) -> None:
        self._data.outbox.setdefault(shard, {})[oid] = record

    def due(self, watermarks: Sequence[tuple[int, int]], limit: int) -> DueSlots:
        self._check()
        wanted = dict(watermarks)
        earliest: dict[int, int] = {}
        later: dict[int, int | None] = dict.fromkeys(wanted)  # the earliest after the watermark
        found: list[tuple[int, int, str, bytes]] = []
        for sid, s in self._data.slots.items():
            wm = wanted.get(s.shard)
            if wm is None or s.due is None:
                continue
            if s.due < earliest.get(s.shard, s.due + 1):
                earliest[s.shard] = s.due
            if s.due <= wm:
                found.append((s.due, s.shard, sid, s.state))
            else:
                after = later[s.shard]
                later[s.shard] = s.due if after is None else min(after, s.due)
        found.sort()
        late = [wanted[shard] - due for shard, due in earliest.items() if wanted[shard] >= due]
        if len(found) > limit:  # only the shards of which every due slot is returned
            kept_back = {shard for _due, shard, _sid, _state in found[limit:]}
            later = {shard: t for shard, t in later.items() if shard not in kept_back}
        return DueSlots(
            [(shard, sid, state) for _due, shard, sid, state in found[:limit]],
            max(late) if late else None,
            later,
        )

    def outbox(self, shards: Iterable[int]) -> Iterator[tuple[int, str, bytes]]:
        self._check()
        boxes = self._data.outbox
        entries = [(s, oid, rec) for s in shards for oid, rec in boxes.get(s, {}).items()]
        yield from entries

    def stats(self) -> dict[str, int]:
        self._check()
        return dict(self._data.stats)

    # -- the guardrails (contract §7): the loop's requests, then the operators' (HeldActions) --------

    def guard_read(self, flow: str, shards: int, limit: int) -> GuardSnapshot:
        self._check()
        return self._data.guard.read(flow, shards, limit)

    def guard_commit(self, flow: str, commit: GuardCommit) -> bool:
        self._check()
        return self._data.guard.commit(flow, commit, self._append, self._outbox_put)

    def pause(self, flow: str | None, reason: str) -> None:
        self._check()
        self._data.guard.paused[flow or "*"] = reason

    def resume(self, flow: str | None) -> None:
        self._check()
        self._data.guard.resume(flow)

    def paused(self) -> dict[str, str]:
        self._check()
        return dict(self._data.guard.paused)

    def held(self, flow: str) -> list[bytes]:
        self._check()
        return list(self._data.guard.flow(flow).held.values())

    def release(self, flow: str, ids: Sequence[str], at: int) -> int:
        self._check()
        return self._data.guard.take_held(flow, ids, at, "release", self._append)

    def drop(self, flow: str, ids: Sequence[str], at: int) -> int:
        self._check()
        return self._data.guard.take_held(flow, ids, at, "drop", self._append)

    def guard_state(self, flow: str) -> bytes | None:
        self._check()
        return self._data.guard.flow(flow).blob

    # -- the SlotReader port, and looking inside (tests) --------------------------------------------

    def read(self, flow: str, key: str) -> tuple[bytes | None, list[bytes]]:
        """(state, history oldest first) of a slot."""
        sid = slot_id(flow, key)
        s = self._data.slots.get(sid)
        return (None if s is None else s.state), list(self._data.history.get(sid, []))

    def deployed(self) -> dict[str, object] | None:
        deployed = self._data.meta.get("deployed")
        return dict(deployed) if isinstance(deployed, dict) else None

    def due_time(self, flow: str, key: str) -> int | None:
        s = self._data.slots.get(slot_id(flow, key))
        return None if s is None else s.due

    def slot_ids(self) -> list[str]:
        return sorted(self._data.slots)

    def slot_states(self) -> list[tuple[str, bytes]]:
        """(slot id, state) of every slot (issue 15: instances per flow version)."""
        return [(sid, s.state) for sid, s in self._data.slots.items()]

    def outbox_entries(self) -> dict[str, bytes]:
        """Every observer-id left in any outbox, with its record."""
        return {oid: rec for box in self._data.outbox.values() for oid, rec in box.items()}

    def shard_of(self, flow: str, key: str) -> int:
        return shard_of(slot_id(flow, key), self.shards)
