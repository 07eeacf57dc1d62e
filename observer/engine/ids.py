"""Deterministic ids: `observer-id` of published records and compact hashes of event ids."""

from __future__ import annotations

import hashlib
import zlib

__all__ = ["event_hash", "observer_id"]


def observer_id(
    flow: str, version: int, key: str, trigger: str, step: str | None, action: str
) -> str:
    """Id of a published record, from (flow, version, key, trigger, step, action).

    `trigger` is the triggering event's id or the deadline that fired; `action` names what is
    published (`alert:missing`, `action:missing:0:release_stock`, `outcome`, ...). The same
    inputs always give the same id, so a record published again after a crash can be dropped.
    """
    text = "\x1f".join((flow, str(version), key, trigger, step or "", action))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def event_hash(event_id: str) -> int:
    """A 32-bit hash of an event id, to remember which events an instance already applied."""
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass"))
