"""Outbox records: serialisation of effects, the stored bytes, delivery bookkeeping."""

from __future__ import annotations

import io

import fastavro
import orjson
from hypothesis import given
from hypothesis import strategies as st

from observer.engine.effects import Publish
from observer.runtime.outbox import InFlight, OutboxRecord, decode_record, encode_record, to_record

opt_bytes = st.one_of(st.none(), st.binary(max_size=64))
records = st.builds(
    OutboxRecord,
    observer_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=32),
    category=st.sampled_from(["action", "alert", "outcome", "dlq", "webhook"]),
    topic=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    key=opt_bytes,
    value=opt_bytes,
    headers=st.lists(st.tuples(st.text(max_size=10), opt_bytes), max_size=4).map(tuple),
    webhook=st.one_of(st.none(), st.just("http://127.0.0.1:9/x")),
    created_at=st.integers(0, 2**62),
    seq=st.integers(0, 2**31),
)


@given(records)
def test_records_round_trip_through_their_stored_bytes(rec: OutboxRecord) -> None:
    assert decode_record(encode_record(rec)) == rec


def test_bytes_it_did_not_write_are_rejected() -> None:
    for bad in (
        b"",
        b"\x02" + b"\x00" * 20,
        encode_record(OutboxRecord("a", "alert", "t", None, b"v", ())) + b"x",
    ):
        try:
            decode_record(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def pub(value: object, category: str = "action", **kw: object) -> Publish:
    return Publish(category, "t", "k1", value, (("type", "X"), ("observer-id", "id1")), "id1", **kw)  # type: ignore[arg-type]


def test_values_are_serialised_like_replay_prints_them() -> None:
    assert orjson.loads(to_record(pub({"a": 1, "b": [True, None]}), 5, 0).value or b"") == {
        "a": 1,
        "b": [True, None],
    }
    assert to_record(pub("plain text"), 5, 0).value == b"plain text"
    assert to_record(pub(b"\x00raw"), 5, 0).value == b"\x00raw"
    assert to_record(pub(None, "dlq"), 5, 0).value is None
    rec = to_record(pub({"a": 1}), 5, 3)
    assert (
        rec.key == b"k1"
        and rec.headers == (("type", b"X"), ("observer-id", b"id1"))
        and (rec.created_at, rec.seq) == (5, 3)
    )


def test_an_action_with_an_avro_schema_is_published_as_schemaless_avro() -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "Cmd", "fields": [{"name": "id", "type": "string"}]}
    )
    rec = to_record(pub({"id": "o-1"}, avro_schema=schema), 0, 0)
    assert fastavro.schemaless_reader(io.BytesIO(rec.value or b""), schema) == {"id": "o-1"}


def test_delivered_records_are_acked_once_and_failures_retry_with_backoff() -> None:
    infl = InFlight(backoff_ms=100, backoff_max_ms=250)
    a = OutboxRecord("a", "alert", "t", None, b"1", ())
    b = OutboxRecord("b", "action", "t", None, b"2", ())
    infl.sent(3, a)
    infl.sent(5, b)
    assert len(infl) == 2 and "a" in infl and infl.record("a") == a
    infl.delivered("a")
    infl.delivered("a")  # a second report changes nothing
    assert infl.take_acked() == [(3, "a")]
    assert infl.take_acked() == []
    assert infl.failed("b", now=1_000) == 1_100
    assert infl.due_retries(1_099) == []
    assert infl.due_retries(1_100) == [(5, b)]
    assert infl.failed("b", now=2_000) == 2_200
    assert infl.failed("b", now=3_000) == 3_250  # capped
    assert infl.failed("zzz", now=0) is None
    infl.delivered("b")
    acked = infl.take_acked()
    infl.restore_acked(acked)  # the outbox deletion did not reach the store
    assert infl.take_acked() == [(5, "b")]
    assert len(infl) == 0


def test_a_header_without_a_value_stays_without_one() -> None:
    p = Publish("dlq", "dlq", b"k", b"v", (("trace", None), ("eid", "7")), "a" * 32)
    rec = decode_record(encode_record(to_record(p, 0, 0)))
    assert rec.headers == (("trace", None), ("eid", b"7"))
