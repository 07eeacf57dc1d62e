"""Orders on the wire: each event as a Kafka record the flow's selectors can read, every event
of a workload in event-time order, and the producer that writes them."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from benchmarks.common import kafka_conf
from benchmarks.flow_copy import WorkloadFiles
from benchmarks.orders import Emit, OrderModel, fault_of, order_key
from observer.timefmt import format_time

__all__ = ["RecordEncoder", "generate", "produce_records", "producer_config"]


def _fake(selector: str, n: int) -> Any:
    """A plausible value for a captured field, by its name."""
    last = selector.rsplit(".", 1)[-1]
    if last == "items":
        return [{"sku": f"SKU-{n % 977}", "qty": 1 + n % 3, "price": 19.99}]
    if "email" in last:
        return f"customer{n}@example.com"
    if last in ("total", "amount", "price"):
        return round(10 + (n % 9000) / 7, 2)
    if last == "currency":
        return "EUR"
    if last == "carrier":
        return ("DHL", "UPS", "GLS")[n % 3]
    if last == "id" or last.endswith("_id"):
        return f"{last[:3]}-{n:08d}"
    return f"{last}-{n}"


def _set(value: dict[str, Any], parts: Sequence[str], v: Any) -> None:
    node = value
    for p in parts[:-1]:
        nxt = node.get(p)
        nxt = dict(nxt) if isinstance(nxt, dict) else {}  # copy: templates share branches
        node[p] = nxt
        node = nxt
    node[parts[-1]] = v


@dataclass
class _Template:
    """How to build one kind of event (a step or error event of a source) on the wire."""

    topic: str
    static: dict[str, Any]
    static_headers: list[tuple[str, bytes]]
    key_in: tuple[str, tuple[str, ...]]  # ("value", path) | ("header", (name,)) | ("key", ())
    time_in: tuple[str, tuple[str, ...]]
    id_in: tuple[str, tuple[str, ...]] | None


def _where(selector: str) -> tuple[str, tuple[str, ...]]:
    if selector.startswith("value."):
        return "value", tuple(selector.split(".")[1:])
    if selector.startswith("header."):
        return "header", (selector[len("header.") :],)
    return selector, ()  # key | timestamp


class RecordEncoder:
    """Turns an `Emit` of an order into a Kafka record the flow's selectors can read, by
    inverting each selector of its source (`value.a.b` sets a field, `header.X` a header,
    `key` the record key). Values are JSON, padded to about `event_bytes`."""

    def __init__(
        self, files: WorkloadFiles, event_bytes: int = 300, time_format: str = "ms"
    ) -> None:
        self.files = files
        self.flow = files.flow
        self.time_format = time_format
        self.event_bytes = event_bytes
        self._templates: dict[tuple[int, str, str], _Template] = {}

    def _template(self, e: Emit) -> _Template:
        k = (e.step, e.source, e.type)
        t = self._templates.get(k)
        if t is not None:
            return t
        src = self.flow.sources[e.source]
        static: dict[str, Any] = {}
        headers: list[tuple[str, bytes]] = []
        kind, path = _where(src.type_text)
        if kind == "value":
            _set(static, path, e.type)
        elif kind == "header":
            headers.append((path[0], e.type.encode()))
        if e.step >= 0:
            for i, (sel, _) in enumerate(self.flow.steps[e.step].captures):
                ck, cpath = _where(sel)
                if ck == "value":
                    _set(static, cpath, _fake(sel, 1000 + i))
                elif ck == "header":
                    headers.append((cpath[0], str(_fake(sel, i)).encode()))
        static.setdefault("service", f"{e.source}-service")
        id_sel = self.files.id_selectors.get(e.source)
        t = _Template(
            src.topic,
            static,
            headers,
            _where(src.key_text),
            _where(src.time_text),
            _where(id_sel) if id_sel else None,
        )
        # pad to about event_bytes with a note field (a real event carries more than its ids)
        sample, _, _ = self._build(t, "x" * 36, 1_767_225_600_000, "x" * 40)
        pad = self.event_bytes - len(sample) - len(b',"note":""')
        if pad > 0:
            t.static["note"] = "lorem ipsum dolor sit amet " * (pad // 27) + "x" * (pad % 27)
        self._templates[k] = t
        return t

    def _time(self, ms: int) -> Any:
        return ms if self.time_format == "ms" else format_time(ms)

    def _build(
        self, t: _Template, key: str, at: int, event_id: str
    ) -> tuple[bytes, list[tuple[str, bytes]], bytes]:
        value = dict(t.static)
        headers = list(t.static_headers)
        for where, datum in ((t.key_in, key), (t.time_in, self._time(at)), (t.id_in, event_id)):
            if where is None:
                continue
            kind, path = where
            if kind == "value":
                if len(path) == 1:
                    value[path[0]] = datum
                else:
                    _set(value, path, datum)
            elif kind == "header":
                headers.append((path[0], str(datum).encode()))
        return orjson.dumps(value), headers, key.encode()

    def encode(
        self, e: Emit, key: str, event_id: str
    ) -> tuple[str, bytes, bytes, list[tuple[str, bytes]], int]:
        """(topic, key, value, headers, timestamp ms) of one event."""
        t = self._template(e)
        value, headers, kb = self._build(t, key, e.at, event_id)
        return t.topic, kb, value, headers, e.at


def producer_config(bootstrap: str, live: bool = False) -> dict[str, Any]:
    return kafka_conf(
        bootstrap,
        **{
            "enable.idempotence": True,  # keeps every partition in produce (= event time) order
            "linger.ms": 2 if live else 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",
        },
    )


def produce_records(
    bootstrap: str,
    records: Iterator[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]],
    live: bool = False,
) -> int:
    """Produce as fast as librdkafka takes them; returns the count. Raises on delivery errors."""
    from confluent_kafka import KafkaError, Producer

    p = Producer(producer_config(bootstrap, live))
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    n = 0
    produce, poll = p.produce, p.poll
    for topic, key, value, headers, ts in records:
        while True:
            try:
                produce(
                    topic,
                    value,
                    key,
                    headers=cast(Any, headers),
                    timestamp=ts,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                poll(0.05)
        n += 1
        if n & 1023 == 0:
            poll(0)
            if errors:
                raise RuntimeError(f"delivery failed: {errors[0]}")
    remaining = p.flush(120)
    if remaining or errors:
        raise RuntimeError(f"{remaining} records not delivered; first error: {errors[:1]}")
    return n


def generate(
    model: OrderModel,
    enc: RecordEncoder,
    orders: int,
    t0: int,
    span_ms: int,
    seed: int,
    rate: float,
    kinds: Sequence[str],
    key_style: str,
    faults_out: dict[str, list[str]],
) -> Iterator[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]]:
    """Every event of every order, in event-time order (a heap of the orders in flight)."""
    heap: list[tuple[int, int, int, str, Emit]] = []
    step_ms = span_ms / max(1, orders)
    rng = random.Random(seed)
    for i in range(orders):
        start = t0 + int(i * step_ms)
        while heap and heap[0][0] <= start:
            _t, _, n, key, e = heapq.heappop(heap)
            yield enc.encode(e, key, f"{key}/{n}")
        fault = fault_of(i, rate, kinds)
        key = order_key(key_style, seed, i)
        if fault is not None:
            faults_out[fault].append(key)
        for n, e in enumerate(model.order(start, fault, rng)):
            heapq.heappush(heap, (e.at, i * 64 + n, n, key, e))
    while heap:
        _t, _, n, key, e = heapq.heappop(heap)
        yield enc.encode(e, key, f"{key}/{n}")
