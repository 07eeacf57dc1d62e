"""What a batch writes beside a slot's state: the TTL of its keys and its history entries."""

from __future__ import annotations

from typing import Any

import orjson

from observer.engine.effects import Publish, Signal
from observer.engine.state import KeySlot
from observer.flows.compiled import CompiledFlow
from observer.masking import mask_webhook_url

__all__ = ["DAY_MS", "history_entry", "safety_ttl_ms"]

DAY_MS = 86_400_000


def safety_ttl_ms(flow: CompiledFlow, slot: KeySlot, now: int, slack_ms: int = DAY_MS) -> int:
    """A TTL for a slot's keys that outlives its logical life (the engine's own retain and
    expire timers delete it first): open until `expire` + `retain`, ended until `retain`,
    early events until `buffer`; plus `slack_ms`. `flow` governs the slot."""
    inst = slot.instance
    if inst is None:
        until = max((b.read_at for b in slot.buffer), default=now) + flow.buffer_ms
    elif inst.open:
        until = inst.started_at + flow.expire_ms + flow.retain_ms
    else:
        until = (inst.ended_at if inst.ended_at is not None else now) + flow.retain_ms
    hold = slot.hold  # an alias value held: as long as its holder may live
    if hold is not None:
        until = max(until, hold.started + flow.expire_ms + flow.retain_ms)
    return max(until - now, 0) + max(slack_ms, 1)


def history_entry(eff: Publish | Signal, now: int) -> bytes:
    """One JSON entry of an instance history (what `/instances` shows)."""
    if isinstance(eff, Signal):
        d: dict[str, Any] = {
            "at": eff.at,
            "what": eff.what,
            "detail": eff.detail,
            "step": eff.step,
            "version": eff.version,
        }
        if eff.value_ms is not None:
            d["value_ms"] = eff.value_ms
        return orjson.dumps(d)
    d = {
        "at": now,
        "what": "published",
        "category": eff.category,
        "topic": eff.topic,
        "key": eff.key,
        "observer_id": eff.observer_id,
    }
    if eff.webhook is not None:  # the URL may carry a credential: never stored whole
        d["webhook"] = mask_webhook_url(eff.webhook)
    if eff.category == "alert" and isinstance(eff.value, dict):
        d["kind"] = eff.value.get("kind")
        d["step"] = eff.value.get("step")
        d["severity"] = eff.value.get("severity")
    if eff.category == "outcome" and isinstance(eff.value, dict):
        d["outcome"] = eff.value.get("outcome")
    return orjson.dumps(d, default=str)
