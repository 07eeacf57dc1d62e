"""What the store keeps for the guardrails (contract §7), and its bytes. Pure: no I/O.

- A `HeldAction` is an action record the guardrails hold (an incident, the rate limit, a
  pause): the record itself (outbox bytes: published as is, same `observer-id`, when an
  operator releases it) with what an operator needs to choose (flow, key, action, why, the
  incident, the deviation) and where its instance's history is (shard, slot id).
- A `StoredWaiting` is a deviation waiting for the flow's decider: its records (alert and
  actions, outbox bytes) with their history entries, and where its instance's history is.

Both are one JSON line of metadata, a newline, then length-prefixed binary parts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from observer.engine.effects import DeviationRef

__all__ = ["HeldAction", "StoredWaiting", "held_history", "pack_parts", "unpack_parts"]

_LEN = struct.Struct(">I")


def pack_parts(meta: dict[str, Any], parts: list[bytes]) -> bytes:
    """Metadata (JSON, one line) and binary parts, each prefixed with its length."""
    out = [orjson.dumps(meta), b"\n"]
    for p in parts:
        out += [_LEN.pack(len(p)), p]
    return b"".join(out)


def unpack_parts(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of `pack_parts`. Raises ValueError on bytes it did not write."""
    head, sep, rest = data.partition(b"\n")
    if not sep:
        raise ValueError("not a guardrail entry (no metadata line)")
    meta = orjson.loads(head)
    if not isinstance(meta, dict):
        raise ValueError("not a guardrail entry (metadata is not an object)")
    parts = []
    pos = 0
    while pos < len(rest):
        if pos + 4 > len(rest):
            raise ValueError("truncated guardrail entry")
        (n,) = _LEN.unpack_from(rest, pos)
        pos += 4
        if pos + n > len(rest):
            raise ValueError("truncated guardrail entry")
        parts.append(rest[pos : pos + n])
        pos += n
    return meta, parts


@dataclass(slots=True)
class HeldAction:
    """An action record held by the guardrails. Times in ms: `at` is the deviation's time,
    `held_at` when it was held (the observer's clock)."""

    observer_id: str
    flow: str
    key: str
    action: str
    category: str  # action | webhook
    reason: str  # incident | rate | paused
    incident: str | None
    kind: str
    step: str | None
    version: int
    at: int
    held_at: int
    shard: int  # of its instance (its history)
    sid: str
    record: bytes  # `encode_record` of the OutboxRecord

    def encode(self) -> bytes:
        meta = {
            "observer_id": self.observer_id,
            "flow": self.flow,
            "key": self.key,
            "action": self.action,
            "category": self.category,
            "reason": self.reason,
            "incident": self.incident,
            "kind": self.kind,
            "step": self.step,
            "version": self.version,
            "at": self.at,
            "held_at": self.held_at,
            "shard": self.shard,
            "sid": self.sid,
        }
        return pack_parts(meta, [self.record])

    @classmethod
    def decode(cls, data: bytes) -> HeldAction:
        meta, parts = unpack_parts(data)
        if len(parts) != 1:
            raise ValueError("a held action has one record")
        try:
            return cls(**meta, record=parts[0])
        except TypeError as exc:
            raise ValueError(f"bad held action: {exc}") from None

    def history(self, what: str, at: int) -> bytes:
        """Its instance history entry: `held`, `released` or `dropped`."""
        return held_history(what, at, self.observer_id, self.action, self.reason, self.incident)


def held_history(
    what: str, at: int, oid: str, action: str | None, reason: str | None, incident: str | None
) -> bytes:
    """An instance history entry of the guardrails: held, released, dropped, suppressed."""
    entry: dict[str, Any] = {"at": at, "what": what, "observer_id": oid, "action": action}
    if reason is not None:
        entry["reason"] = reason
    if incident is not None:
        entry["incident"] = incident
    return orjson.dumps(entry)


@dataclass(slots=True)
class StoredWaiting:
    """A deviation waiting for its flow's decider. `records`: (outbox bytes, action name or
    None for the alert, category, the history entry to write if it is published)."""

    flow: str
    key: str
    ref: DeviationRef
    shard: int
    sid: str
    records: list[tuple[bytes, str | None, str, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        ref = self.ref
        meta = {
            "flow": self.flow,
            "key": self.key,
            "kind": ref.kind,
            "step": ref.step,
            "version": ref.version,
            "at": ref.at,
            "id": ref.id,
            "shard": self.shard,
            "sid": self.sid,
            "records": [[action, category] for _r, action, category, _h in self.records],
        }
        parts = [p for r, _a, _c, h in self.records for p in (r, h)]
        return pack_parts(meta, parts)

    @classmethod
    def decode(cls, data: bytes) -> StoredWaiting:
        meta, parts = unpack_parts(data)
        try:
            ref = DeviationRef(meta["kind"], meta["step"], meta["version"], meta["at"], meta["id"])
            kinds = meta["records"]
            if len(parts) != 2 * len(kinds):
                raise ValueError("records and parts do not match")
            records = [(parts[2 * i], a, c, parts[2 * i + 1]) for i, (a, c) in enumerate(kinds)]
            return cls(meta["flow"], meta["key"], ref, meta["shard"], meta["sid"], records)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad waiting deviation: {exc}") from None
