"""Compact, versioned bytes of a `KeySlot` for the state store.

A flat orjson array: times relative to the start, steps as small integers, no field names.
The flow and key are not stored (they are in the store's key). Format 1:

    [1, version, started_at, path, sla_bits, outcome|null, ended_rel|null,
     [path, entry_rel, ...], [step, time_rel, ...], [step, flags, ...], [step, id_hash, ...],
     [error_id_hash, ...], [kind, step, ...], [[step, {selector: value}], ...], buffer|null]

or `[1, null, ..., buffer]` when only early events are held. A buffered event is
`[source, type, id, time, read_at, seq, {selector: value}]` (its key is the slot's).
"""

from __future__ import annotations

from typing import Any

import orjson

from observer.engine.state import BufferedEvent, Event, InstanceState, KeySlot

__all__ = ["FORMAT", "decode_slot", "encode_slot"]

FORMAT = 1


def _flat(d: dict[int, int], base: int = 0) -> list[int]:
    out: list[int] = []
    for k, v in d.items():
        out.append(k)
        out.append(v - base)
    return out


def _unflat(items: list[int], base: int = 0) -> dict[int, int]:
    return {items[i]: items[i + 1] + base for i in range(0, len(items), 2)}


def encode_slot(slot: KeySlot) -> bytes:
    """Serialise a slot (instance and/or early events) to compact bytes."""
    buf: list[Any] | None = None
    if slot.buffer:
        buf = [
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
    inst = slot.instance
    if inst is None:
        return orjson.dumps([FORMAT, None, buf])
    s = inst.started_at
    devs: list[int] = []
    for kind, step in inst.deviations:
        devs.append(kind)
        devs.append(step)
    return orjson.dumps(
        [
            FORMAT,
            inst.version,
            s,
            inst.path,
            inst.sla,
            inst.outcome,
            None if inst.ended_at is None else inst.ended_at - s,
            _flat(inst.entries, s),
            _flat(inst.observed, s),
            _flat(inst.flags),
            _flat(inst.ids),
            inst.error_ids,
            devs,
            [[k, v] for k, v in inst.captured.items()],
            buf,
        ]
    )


def decode_slot(flow: str, key: str, data: bytes) -> KeySlot:
    """Rebuild a slot from `encode_slot` bytes. Raises ValueError on an unknown format."""
    arr = orjson.loads(data)
    if not isinstance(arr, list) or not arr or arr[0] != FORMAT:
        raise ValueError(f"unknown state format for {flow}/{key}")
    slot = KeySlot(flow, key)
    raw_buf = arr[-1]
    if raw_buf:
        slot.buffer = [
            BufferedEvent(Event(src, typ, key, eid, t, caps or {}), read_at, seq)
            for src, typ, eid, t, read_at, seq, caps in raw_buf
        ]
    if arr[1] is None:
        return slot
    (
        _,
        version,
        s,
        path,
        sla,
        outcome,
        ended_rel,
        entries,
        observed,
        flags,
        ids,
        errs,
        devs,
        caps,
        _b,
    ) = arr
    slot.instance = InstanceState(
        version=version,
        started_at=s,
        path=path,
        entries=_unflat(entries, s),
        observed=_unflat(observed, s),
        ids=_unflat(ids),
        flags=_unflat(flags),
        captured={k: v for k, v in caps},
        error_ids=list(errs),
        sla=sla,
        deviations=[(devs[i], devs[i + 1]) for i in range(0, len(devs), 2)],
        outcome=outcome,
        ended_at=None if ended_rel is None else s + ended_rel,
    )
    return slot
