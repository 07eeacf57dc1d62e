"""Hops (aliases: correlation by a second id): messages between slots through the keyed topic,
and the hop marks that keep deadlines from firing before the events they carry arrive.

An event via an alias value is routed to the value's shard; its holder's shard learns of it only
through a second hop, a `forward` message. A message is an outbox record (category `hop`): it is
written in the same atomic write as the state that sent it, handed to the keyed topic's
producer once that write returned, and deleted from the outbox once acknowledged; a new owner
of the shard hands over again whatever is left. Its key is the receiving slot's id, which gives
the keyed partition; handling a message twice changes nothing.

The trap is time. The router's marks tell a shard that every source record up to W was routed,
but an event via an alias may still be on its way from the value's shard: a deadline fired then
would be a false `missing`. So each tracker sends, every `mark_interval_ms` and after the hops
of the batches it wrote, a *hop mark* to every shard: for each shard it owns, the source
watermark that shard had when the batches whose hops were handed over were read. The keyed
topic's producer keeps order per partition and never gives a record up (a failed hop stops the
process, like a failed routed event), so a hop mark arrives after every forward it covers, and a
shard's watermark, the minimum of its source marks and of every shard's hop mark, passes a
deadline only once every event up to it is applied where it belongs. An instance that waits for
the answer to a register fires no timer meanwhile (`observer.engine.aliases`): the events the
value's slot had buffered come with the answer. This is on only when a deployed flow has aliases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from observer.config import ObserverConfig
from observer.engine.effects import Hop
from observer.flows.registry import FlowRegistry
from observer.runtime.every import Every
from observer.runtime.keyed import encode_hop, encode_hop_mark
from observer.runtime.outbox import OutboxRecord
from observer.runtime.ports import Clock, RawSink
from observer.runtime.shards import shard_of, slot_id

__all__ = ["HOP_CATEGORY", "HopMarks", "hop_marks", "hop_partition", "hop_record"]

HOP_CATEGORY = "hop"
_RESEND_S = 0.5  # unchanged hop marks are sent again this often (a new owner needs them)


def hop_record(hop: Hop, topic: str, created_at: int, seq: int) -> OutboxRecord:
    """The outbox record of a message: keyed by the receiving slot's id."""
    oid = hop.id()
    key = slot_id(*hop.target()).encode("utf-8", "surrogatepass")
    return OutboxRecord(oid, HOP_CATEGORY, topic, key, encode_hop(hop), (), None, created_at, seq)


def hop_partition(record: OutboxRecord, shards: int) -> int:
    """The keyed partition of a hop record: its receiving slot's shard."""
    return shard_of((record.key or b"").decode("utf-8", "surrogatepass"), shards)


class HopMarks:
    """What this process tells every shard about the shards it owns: their source watermark as
    of the last batch whose hops were handed over. Owned by the loop's thread."""

    def __init__(
        self,
        sink: RawSink,
        topic: str,
        shards: int,
        *,
        interval_s: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.shards = shards
        self._published: dict[int, int] = {}
        self._sent: dict[int, int] = {}
        self._every = Every(interval_s, monotonic)
        self._resend = Every(_RESEND_S, monotonic)

    def handed_over(self, plan: Any) -> None:
        """A batch's records, hops included, were handed to the producer: its `hop_watermarks`
        (shard -> source watermark when it was read) are what the next hop marks say."""
        watermarks: Mapping[int, int] | None = plan.hop_watermarks
        if not watermarks:
            return
        published = self._published
        for shard, wm in watermarks.items():
            if wm > published.get(shard, -(2**62)):
                published[shard] = wm

    def flush(self, timeout_s: float) -> None:
        """Wait for the hops handed to the producer (their acknowledgements clear them from
        the outbox)."""
        self.sink.flush(timeout_s)

    def drop(self, shards: Iterable[int]) -> None:
        """Shards no longer owned: their new owner speaks for them."""
        for s in shards:
            self._published.pop(s, None)
            self._sent.pop(s, None)

    def send(self) -> None:
        """Send hop marks to every shard when due: what moved, every interval; all of them
        again every half second."""
        if not self._published or not self._every.due():
            return
        self._every.restart()
        again = self._resend.due()
        if not again and self._sent == self._published:
            return
        if again:
            self._resend.restart()
        self._sent = dict(self._published)
        value = encode_hop_mark(sorted(self._published.items()))
        self.sink.produce_values(self.topic, [(s, value, None) for s in range(self.shards)])


def hop_marks(
    config: ObserverConfig, registry: FlowRegistry, sink: RawSink, clock: Clock
) -> HopMarks | None:
    """The hop marks of a tracker, when a deployed flow has aliases (else None: off)."""
    if not any(flow.aliases for flow in registry):
        return None
    return HopMarks(
        sink,
        config.keyed_topic_name(),
        config.shards,
        interval_s=config.mark_interval_ms / 1000.0,
        monotonic=clock.monotonic,
    )
