"""Compact, versioned bytes of a `KeySlot` for the state store.

A flat orjson array: times relative to the start, steps as small integers, no field names.
The flow and key are not stored (they are in the store's key). Format 2 (written):

    [2, version, started_at, [step, time_rel, ...], [step, [value, ...], ...],
     [step, flags, ...], [kind, step, ...], path, sla_bits, outcome|null, ended_rel|null,
     entries, [step, id_hash, ...], [error_id_hash, ...], buffer|null,
     [alias, value, status, ...]]

with trailing fields left out while they hold their default (empty, 0, null). Captured values
are positional, in the order of the step's `capture` list (a flow that changes what a step
captures needs a new version anyway). `entries` is `[path, entry_rel, ...]`, or null for the
usual {main path: started_at}. `[2, null, buffer]` holds only early events; an alias slot
(aliases: correlation by a second id) is `[2, null, buffer|null, [holder key, holder started_at,
open 1|0]]` when a holder is known. A buffered event is `[source, type, id, time, read_at, seq,
{selector: value}]` (its key is the slot's).

Format 1 is not read: only Redis stores of format 1 held it, and those refuse to open
(`observer.adapters.redis.store`).
"""

from __future__ import annotations

from typing import Any

import orjson

from observer.engine.state import AliasHold, BufferedEvent, Event, InstanceState, KeySlot

__all__ = ["FORMAT", "decode_slot", "encode_slot"]

FORMAT = 2
_dumps = orjson.dumps
_loads = orjson.loads


# what a trailing field holds when it is left out
_DEFAULTS: list[Any] = [None, None, 0, [], [], [], [], 0, 0, None, None, None, [], [], None, []]
_FIELDS = len(_DEFAULTS)


def _flat(d: dict[int, int], base: int = 0) -> list[int]:
    """{k: v} -> [k, v - base, ...] (slice assignment: fewer bytecodes than a loop)."""
    out = [0] * (2 * len(d))
    out[0::2] = d
    out[1::2] = [v - base for v in d.values()] if base else d.values()
    return out


def _pairs(pairs: list[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for a, b in pairs:
        out.append(a)
        out.append(b)
    return out


def _unflat(items: list[int], base: int = 0) -> dict[int, int]:
    return {items[i]: items[i + 1] + base for i in range(0, len(items), 2)}


def _buffer(slot: KeySlot) -> list[Any] | None:
    if not slot.buffer:
        return None
    return [
        [
            b.event.source,
            b.event.type,
            b.event.id,
            b.event.time,
            b.read_at,
            b.seq,
            dict(b.event.captures),
        ]
        for b in slot.buffer
    ]


def _aliases(aliases: dict[int, tuple[str, int]]) -> list[Any]:
    out: list[Any] = []
    for idx, (value, status) in aliases.items():
        out += (idx, value, status)
    return out


def encode_slot(slot: KeySlot) -> bytes:
    """Serialise a slot (instance and/or early events) to compact bytes (format 2)."""
    inst = slot.instance
    if inst is None:
        hold = slot.hold
        if hold is None:
            return _dumps([FORMAT, None, _buffer(slot)])
        return _dumps([FORMAT, None, _buffer(slot), [hold.key, hold.started, int(hold.open)]])
    s = inst.started_at
    # [step, values, ...] and [step, time - s, ...]: plain loops and list.append cost the fewest
    # instructions on CPython 3.11 (fewer than chain/slice assignment; once per slot write)
    caps: list[Any] = []
    for k, v in inst.captured.items():
        caps.append(k)
        caps.append(v)
    obs: list[int] = []
    for k, t in inst.observed.items():
        obs.append(k)
        obs.append(t - s)
    if (
        inst.outcome is None
        and not inst.flags
        and not inst.deviations
        and not inst.path
        and not inst.sla
        and inst.ended_at is None
        and not inst.ids
        and not inst.error_ids
        and not slot.buffer
        and not inst.aliases
        and _main_entry(inst.entries, s)
    ):  # an open instance on its main path with no deviation yet: the usual slot
        return _dumps([FORMAT, inst.version, s, obs, caps])
    return _encode_full(slot, inst, obs, caps)


def _main_entry(entries: dict[int, int], s: int) -> bool:
    """The usual entries: only the main path, entered at the start."""
    return len(entries) == 1 and entries.get(0) == s


def _encode_full(slot: KeySlot, inst: InstanceState, obs: list[int], caps: list[Any]) -> bytes:
    s = inst.started_at
    entries = inst.entries
    arr: list[Any] = [
        FORMAT,
        inst.version,
        s,
        obs,
        caps,
        _flat(inst.flags),
        _pairs(inst.deviations),
        inst.path,
        inst.sla,
        inst.outcome,
        None if inst.ended_at is None else inst.ended_at - s,
        None if _main_entry(entries, s) else _flat(entries, s),
        _flat(inst.ids),
        inst.error_ids,
        _buffer(slot),
        _aliases(inst.aliases),
    ]
    n = len(arr)
    defaults = _DEFAULTS
    while n > 4 and arr[n - 1] == defaults[n - 1]:
        n -= 1
    return _dumps(arr if n == len(arr) else arr[:n])


def decode_slot(flow: str, key: str, data: bytes) -> KeySlot:
    """Rebuild a slot from `encode_slot` bytes. Raises ValueError on an unknown format."""
    arr = _loads(data)
    if not isinstance(arr, list) or not arr:
        raise ValueError(f"unknown state format for {flow}/{key}")
    if arr[0] == FORMAT:
        return _decode(flow, key, arr)
    raise ValueError(f"unknown state format for {flow}/{key}")


def _events(key: str, raw_buf: list[Any]) -> list[BufferedEvent]:
    return [
        BufferedEvent(Event(src, typ, key, eid, t, caps or {}), read_at, seq)
        for src, typ, eid, t, read_at, seq, caps in raw_buf
    ]


def _decode(flow: str, key: str, arr: list[Any]) -> KeySlot:
    slot = KeySlot(flow, key)
    if arr[1] is None:
        if len(arr) > 2 and arr[2]:
            slot.buffer = _events(key, arr[2])
        if len(arr) > 3 and arr[3]:
            holder, started, open_ = arr[3]
            slot.hold = AliasHold(holder, started, bool(open_))
        return slot
    n = len(arr)
    if n < _FIELDS:
        arr = arr + _DEFAULTS[n:]
    (
        _,
        version,
        s,
        observed,
        caps,
        flags,
        devs,
        path,
        sla,
        outcome,
        ended_rel,
        entries,
        ids,
        errs,
        raw_buf,
        aliases,
    ) = arr
    slot.instance = InstanceState(
        version=version,
        started_at=s,
        path=path,
        entries={0: s} if entries is None else _unflat(entries, s),
        observed=_unflat(observed, s),
        ids=_unflat(ids) if ids else {},
        flags=_unflat(flags) if flags else {},
        captured={caps[i]: caps[i + 1] for i in range(0, len(caps), 2)},
        error_ids=list(errs),
        sla=sla,
        deviations=[(devs[i], devs[i + 1]) for i in range(0, len(devs), 2)],
        outcome=outcome,
        ended_at=None if ended_rel is None else s + ended_rel,
        aliases=(
            {aliases[i]: (aliases[i + 1], aliases[i + 2]) for i in range(0, len(aliases), 3)}
            if aliases
            else None
        ),
    )
    if raw_buf:
        slot.buffer = _events(key, raw_buf)
    return slot
