"""The hot path builds a few slots dataclasses without a class call (allocating and setting the
slots): each must give what the class call gives, every field set (a field added to the class
and not to its builder fails here, not in production)."""

from __future__ import annotations

import dataclasses

from observer.engine.state import Event, new_event
from observer.flows.selectors import RecordView
from observer.ingest import Decoded, SourceRecord, _decoded, _view
from observer.runtime.keyed import Routed, new_routed
from observer.runtime.local import LocalKeyedTopic


def _fields(obj: object) -> dict[str, object]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


def test_new_event_is_the_class_call() -> None:
    args = ("orders", "placed", "k-1", "e-1", 1_767_225_600_000, {"value.total": 3.5})
    assert _fields(new_event(*args)) == _fields(Event(*args))
    assert new_event(*args) == Event(*args)


def test_new_routed_is_the_class_call() -> None:
    ev = Event("orders", "placed", "k-1", "e-1", 5, {})
    assert new_routed("checkout", ev, "shop.orders", 3, 17) == Routed(
        "checkout", ev, "shop.orders", 3, 17
    )


def test_decoded_and_view_are_the_class_calls() -> None:
    assert _fields(_decoded()) == _fields(Decoded())
    assert _view({"a": 1}, {"h": b"x"}, b"k", 9) == RecordView({"a": 1}, {"h": b"x"}, b"k", 9)


def test_local_keyed_topic_records_are_source_records() -> None:
    class _Nothing:
        pass

    topic = LocalKeyedTopic("keyed", 2, sink=_Nothing(), source=_Nothing())  # type: ignore[arg-type]
    topic.append([(1, b"v", None), (1, b"w", None)])
    got = topic.read(10)
    assert got == [
        SourceRecord("keyed", 1, 0, None, b"v", (), -1),
        SourceRecord("keyed", 1, 1, None, b"w", (), -1),
    ]
    assert all(_fields(r) == _fields(dataclasses.replace(r)) for r in got)  # every slot set
