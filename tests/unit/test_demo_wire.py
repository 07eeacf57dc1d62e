"""Shop events on the wire: encoded from the flow's selectors, read back by the observer's own
ingest exactly as the shop meant them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from demo.binding import bind
from demo.shop import CHECKOUT
from demo.wire import DemoError, ShopEvent, WireFormat
from observer.flows.compiler import load_registry
from observer.flows.spec import SourceSpec
from observer.ingest import Ingest, SourceRecord
from observer.topics import Topics

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_FLOW = REPO / "flows" / "checkout.yaml"
T = 1_767_225_600_250


def test_selectors_are_inverted_into_value_headers_key_and_timestamp() -> None:
    wire = WireFormat(
        {
            "pay": SourceSpec(
                topic="shop.payments",
                type="header.ce_type",
                key="value.order.ref",
                id="header.eid",
                time="timestamp",
            )
        }
    )
    rec = wire.encode(ShopEvent("pay", "PaymentCaptured", "o-1", "e-1", T, {"amount": 5}))
    assert rec.topic == "shop.payments"
    assert rec.key == "o-1"
    assert rec.value == {"amount": 5, "order": {"ref": "o-1"}}
    assert dict(rec.headers) == {"ce_type": "PaymentCaptured", "eid": "e-1"}
    assert rec.timestamp == T


def test_time_in_the_value_is_iso_8601() -> None:
    wire = WireFormat({"o": SourceSpec(topic="t", type="value.type", time="value.at")})
    rec = wire.encode(ShopEvent("o", "X", "k", "e", T))
    assert rec.value == {"type": "X", "at": "2026-01-01T00:00:00.250Z"}


@pytest.mark.parametrize(
    "spec",
    [
        SourceSpec(topic="t", type="key"),
        SourceSpec(topic="t", type="value.items.0.type"),
        SourceSpec(topic="t", type="value.type", key="timestamp"),
        SourceSpec(topic="t", type="value.type", format="avro"),
    ],
)
def test_what_the_demo_cannot_write_is_refused(spec: SourceSpec) -> None:
    with pytest.raises(DemoError):
        WireFormat({"s": spec})


def test_every_shop_event_reads_back_through_the_observers_ingest() -> None:
    binding = bind(CHECKOUT_FLOW, CHECKOUT)
    ingest = Ingest(load_registry([CHECKOUT_FLOW]), Topics())
    for source, event_type in sorted(CHECKOUT.emitted()):
        ev = ShopEvent(source, event_type, "o-42", "o-42-01", T, {"total": 1.5})
        rec = binding.wire.encode(ev)
        decoded = ingest.decode(
            SourceRecord(
                rec.topic,
                0,
                0,
                rec.key.encode(),
                orjson.dumps(rec.value),
                [(k, v.encode()) for k, v in rec.headers],
                rec.timestamp,
            )
        )
        assert decoded.dead_letter is None, (source, event_type, decoded.reason)
        if (source, event_type) not in binding.step_of and event_type not in ("PaymentFailed",):
            continue  # an event no step waits for (the observer ignores it)
        [(flow, event)] = decoded.events
        assert flow == "checkout"
        assert (event.key, event.id, event.time) == ("o-42", "o-42-01", T)
        assert event.type == event_type
