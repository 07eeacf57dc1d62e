"""Every Redis key name the observer uses, and the bytes of a slot's hash field, built here
and nowhere else.

Layout (P = the configured prefix, s = the shard of a slot, 0 <= s < shards, n = the bucket of
a slot within its shard and flow, 0 <= n < buckets):

    P:meta                    HASH   shards, buckets, format: checked at start so a restart
                                     cannot silently re-shard or re-bucket
    P:deployed                STRING JSON: the flow files the running observer loaded
    P:stats                   HASH   open:<flow> -> open instances (HINCRBY per batch)
    P:lease                   STRING the holder of `routing: direct` (`lease.py`), with a TTL
    P:{s}:b:<flow>:<n>        HASH   field `encode_key(<key>)` -> `pack_value(due, state)`:
                                     the slot's next due time (8 bytes) then its `encode_slot`
                                     bytes; TTL of the longest-lived slot written into it
    P:{s}:due                 ZSET   member <flow>:<n> (a bucket), score = the earliest due time
                                     (epoch ms) of the bucket's slots; no member: none is due
    P:{s}:hist:<flow>:<key>   LIST   the instance history (JSON entries), capped, slot's TTL
    P:{s}:outbox              HASH   observer-id -> record to publish until delivery is acked
    P:{flows}:versions        HASH   `<flow>:<version>` -> a deployed flow version, JSON
                                     (`flows/stored.py`): what rebuilds it exactly (issue 15)
    P:{flows}:generation      STRING a counter every deployment that changes them moves on
    P:{flows}:running         HASH   process -> "<generation>:<epoch ms>": what each process
                                     runs, said every few seconds (`observer deploy --wait`)
    P:tally:<minute>          HASH   correlation health (issue 16), one hash per epoch minute
                                     (epoch ms // 60000) that every process adds to (HINCRBY),
                                     TTL a day: field `tally_field(count)` -> n, the counts of
                                     `observer/correlation.py` ("src:<flow>:<source>:<kind>",
                                     "step:<flow>:<step>:<kind>", "flow:<flow>:started:",
                                     "flow:<flow>:ended:<outcome>", "topic:<topic>:read:",
                                     "topic:<topic>:ignored:", "topic:<topic>:dead_letter:<reason>")
    P:guard:<flow>:<part>     the guardrails of a flow (contract §7): its decider's state, the
                              deviations waiting for it, held actions (`guard()`)
    P:guard-watermarks        HASH   shard -> watermark its timers all fired up to
    P:guard-paused            HASH   flow or `*` -> why its actions are held
    P:{s}:stats               HASH   on a Redis Cluster only: `stats` of shard s's writes
                                     (every multi-key script touches one hash slot there)
    P:slo-day:<day>           HASH   web console (issue 17): `<flow>:good|bad` -> instances
                                     judged against the flow's SLO that UTC day, TTL a year
    P:console:waiting:<flow>  STRING web console: the last count of instances waiting per step
    P:console:scan:<flow>     STRING web console: who counts them now (SET NX PX)

Why buckets: a string key per slot costs ~140 B beyond its state (key name, object, TTL), and
a member of a big sorted set ~155 B (skiplist). A small hash is one listpack, so a slot costs
its field and value plus a few bytes. The due time rides in the value because a due set per
bucket would store every field name a second time (~40 B a slot); the index has one member per
bucket, kept exact by `write.lua`. The flow is in the bucket's name so that fields hold only
the key, and a canonical UUID key is stored as 16 raw bytes (`encode_key`). A bucket has a TTL,
its fields cannot (Redis 7.0): a bucket lives as long as its longest-lived slot, and the
engine's own retain and expire timers are what delete slots.

`{s}` is a Redis Cluster hash tag: everything of one shard lives in one cluster slot, so a
later owner of a shard can read and write it atomically. Shard s is owned by the process the
consumer group assigns partition s of the keyed topic to (`runtime/keyed.py`). A slot id
(`<flow>:<key>`) splits at the first colon, flow names never contain one.
"""

from __future__ import annotations

import zlib

from observer.runtime.shards import shard_of, split_slot_id

__all__ = [
    "DEFAULT_BUCKETS",
    "DUE_BYTES",
    "Keys",
    "decode_key",
    "encode_key",
    "pack_value",
    "tally_count",
    "tally_field",
    "unpack_value",
]

# Buckets per shard and flow. With the default 16 shards a flow's buckets stay listpacks
# (`hash-max-listpack-entries` 512) up to ~500k open instances and hold ~20 each at 20k.
DEFAULT_BUCKETS = 64

DUE_BYTES = 8  # big-endian two's complement epoch ms, the lowest value for "not due"
_NOT_DUE = (-(1 << 63)).to_bytes(DUE_BYTES, "big", signed=True)
_LATEST = (1 << 63) - 1
_UUID = b"\x00"  # field = _UUID + 16 raw bytes: a canonical (lowercase, hyphenated) UUID key
_ESCAPE = b"\x01"  # field = _ESCAPE + key bytes: a key whose bytes start with a marker


def pack_value(due: int | None, state: bytes) -> bytes:
    """A slot's value in its bucket: its next due time (ms, None: not due), then its state."""
    if due is None:
        return _NOT_DUE + state
    # any time is valid (event times come from the data); beyond int64 nothing will be due
    return max(-_LATEST, min(due, _LATEST)).to_bytes(DUE_BYTES, "big", signed=True) + state


def unpack_value(value: bytes) -> tuple[int | None, bytes]:
    """(due ms or None, state) of a bucket value (`pack_value`'s inverse)."""
    due = value[:DUE_BYTES]
    return None if due == _NOT_DUE else int.from_bytes(due, "big", signed=True), value[DUE_BYTES:]


def encode_key(key: str) -> bytes:
    """The hash field of a key: 17 bytes for a canonical lowercase UUID, else its UTF-8 bytes
    (escaped if they start with a marker byte). `decode_key` inverts it exactly."""
    if len(key) == 36 and key[8] == key[13] == key[18] == key[23] == "-":
        hexits = key.replace("-", "")  # 32 hexits unless there are more hyphens
        try:
            raw = bytes.fromhex(hexits)
        except ValueError:
            raw = b""
        # fromhex accepts uppercase and spaces; only what prints back identically is compacted
        if len(raw) == 16 and raw.hex() == hexits:
            return _UUID + raw
    data = key.encode("utf-8", "surrogatepass")
    if data[:1] in (_UUID, _ESCAPE):
        return _ESCAPE + data
    return data


def decode_key(field: bytes) -> str:
    """The key a hash field was made from (`encode_key`'s inverse)."""
    head = field[:1]
    if head == _UUID and len(field) == 17:
        h = field[1:].hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if head == _ESCAPE:
        field = field[1:]
    return field.decode("utf-8", "surrogatepass")


class Keys:
    """Key names under one prefix, for a fixed number of shards and buckets per shard."""

    __slots__ = ("_bucket_prefix", "_hist_prefix", "_suffix", "buckets", "prefix", "shards")

    def __init__(self, prefix: str, shards: int, buckets: int = DEFAULT_BUCKETS) -> None:
        if not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise ValueError(f"bad key prefix {prefix!r} (no braces or whitespace)")
        if shards < 1:
            raise ValueError("shards must be >= 1")
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self.prefix = prefix
        self.shards = shards
        self.buckets = buckets
        self._bucket_prefix = [f"{prefix}:{{{s}}}:b:" for s in range(shards)]
        self._hist_prefix = [f"{prefix}:{{{s}}}:hist:" for s in range(shards)]
        self._suffix = [f":{n}" for n in range(buckets)]

    def shard_of(self, sid: str) -> int:
        """The shard of a slot id (stable: crc32 of the id modulo the shard count)."""
        return shard_of(sid, self.shards)

    def member(self, sid: str) -> str:
        """`<flow>:<n>`: the slot's bucket, as named in its shard's due index. n comes from the
        crc32 bits above the shard choice (crc32 // shards), so a shard's slots spread over all
        of its buckets whatever the two counts are."""
        return self.locate(sid)[0]

    def locate(self, sid: str) -> tuple[str, bytes]:
        """(`member(sid)`, `field(sid)`) at once (the store's hot path)."""
        flow, _, key = sid.partition(":")
        crc = zlib.crc32(sid.encode("utf-8", "surrogatepass"))
        return flow + self._suffix[(crc // self.shards) % self.buckets], encode_key(key)

    def bucket_prefix(self, shard: int) -> str:
        """`bucket_prefix(shard) + member(sid)` is the bucket key (the scripts join them)."""
        return self._bucket_prefix[shard]

    def bucket(self, shard: int, sid: str) -> str:
        return self._bucket_prefix[shard] + self.member(sid)

    @staticmethod
    def field(sid: str) -> bytes:
        """The slot's field in its bucket (`encode_key` of the key: the flow is in the bucket)."""
        return encode_key(split_slot_id(sid)[1])

    @staticmethod
    def sid_of(member: bytes, field: bytes) -> str:
        """The slot id of a (due index member, field) pair: `member` and `field` inverted."""
        flow = member[: member.rindex(b":")].decode("utf-8")
        return f"{flow}:{decode_key(field)}"

    def history(self, shard: int, sid: str) -> bytes:
        """Bytes: a key may hold lone surrogates (kept as they are, like `encode_key`)."""
        return (self._hist_prefix[shard] + sid).encode("utf-8", "surrogatepass")

    def due(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:due"

    def outbox(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:outbox"

    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def deployed(self) -> str:
        return f"{self.prefix}:deployed"

    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def lease(self) -> str:
        """STRING: the holder of `routing: direct` (one process per prefix)."""
        return f"{self.prefix}:lease"

    # -- issue 15: flow versions kept with the state (one hash tag: deployed in one MULTI) --

    def flow_versions(self) -> str:
        """HASH `<flow>:<version>` -> the deployed version (JSON of `StoredFlow`)."""
        return f"{self.prefix}:{{flows}}:versions"

    def flow_generation(self) -> str:
        """STRING: moved on by every deployment that changes the stored versions."""
        return f"{self.prefix}:{{flows}}:generation"

    def flow_processes(self) -> str:
        """HASH process -> `<generation>:<epoch ms>` (the generation it runs, and when)."""
        return f"{self.prefix}:{{flows}}:running"

    # correlation health (issue 16): per-minute counts (`adapters/redis/tally.py`)
    def tally(self, minute: int) -> str:
        """HASH: the counts of one epoch minute (epoch ms // 60000)."""
        return f"{self.prefix}:tally:{minute}"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix (tests and cleanup)."""
        return f"{self.prefix}:*"

    # -- guardrails (contract §7) ------------------------------------------------------------------

    def guard(self, flow: str, part: str) -> str:
        """`P:guard:<flow>:<part>`, one flow's guardrail keys: `state` (HASH: rev, upto, blob:
        its decider's `GuardState`), `waiting` (ZSET: deviation id by time), `wdata` (HASH: id
        -> waiting deviation), `held` (HASH: observer-id -> held action), `heldn` (HASH:
        action -> records held), `released` (HASH: observer-id -> held action an operator
        released, for the decider to publish), `totals` (HASH: dropped:<action> -> n), `floor`
        (ZSET: slot id by the due time of a timer its instance has not fired though due, while
        it waits for an alias answer: the decider decides only below it)."""
        return f"{self.prefix}:guard:{flow}:{part}"

    def guard_watermarks(self) -> str:
        """HASH shard -> the watermark (ms) up to which the shard's owner fired every timer and
        stored every waiting deviation (only ever raised)."""
        return f"{self.prefix}:guard-watermarks"

    def guard_paused(self) -> str:
        """HASH flow (`*`: every flow) -> why its actions are held (`observer actions pause`)."""
        return f"{self.prefix}:guard-paused"

    # -- Redis Cluster (issue 18) ------------------------------------------------------------------

    def shard_stats(self, shard: int) -> str:
        """HASH `open:<flow>` -> n: on a Redis Cluster, `stats` kept per shard (in the shard's
        hash slot, so each shard's write stays one script on one slot); read as their sum."""
        return f"{self.prefix}:{{{shard}}}:stats"

    def shard_paused(self, shard: int) -> str:
        """What a shard's write reads pauses from on a Redis Cluster, in the shard's slot: never
        written, since pausing needs a single Redis (the gate then always publishes)."""
        return f"{self.prefix}:{{{shard}}}:guard-paused"

    # -- the web console (issue 17) ----------------------------------------------------------------

    def slo_day(self, day: int) -> str:
        """HASH `<flow>:good|bad` -> instances judged against the flow's SLO in one UTC day
        (epoch ms // 86400000), added to with the per-minute counts (`tally.py`): the error
        budget over the SLO's window (TTL a year)."""
        return f"{self.prefix}:slo-day:{day}"

    def console_waiting(self, flow: str) -> str:
        """STRING: JSON of the last count of a flow's instances waiting per step (the console's
        shared snapshot, `adapters/redis/console.py`), with a short TTL."""
        return f"{self.prefix}:console:waiting:{flow}"

    def console_scan(self, flow: str) -> str:
        """STRING (SET NX PX): the process counting a flow's waiting instances now."""
        return f"{self.prefix}:console:scan:{flow}"


def tally_field(count: tuple[str, str, str, str]) -> str:
    """The hash field of a correlation count: its four parts joined with ':' (flow, source,
    step and topic names hold no colon; the last part may)."""
    return ":".join(count)


def tally_count(field: bytes | str) -> tuple[str, str, str, str] | None:
    """`tally_field`'s inverse; None for a field it did not write."""
    text = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
    parts = text.split(":", 3)
    if len(parts) != 4:
        return None
    return parts[0], parts[1], parts[2], parts[3]
