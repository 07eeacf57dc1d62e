"""The demo on a virtual clock: the simulated shop against the observer's engine, no Kafka.

The same `Simulation` and the same engine as the live demo (through `observer.replay`'s
`Replayer`), stepped in ticks like the live loop polls: records the shop publishes are applied
to the engine, commands the engine publishes are handed back to the shop. What it should
publish comes, as in the live demo, from a second `Replayer` over the shop's records
(`expected.py`), whose clock moves only with them. A run of minutes takes well under a second,
so the tests check every fault's detection this way, and `python -m demo --offline` shows it
without a broker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TextIO

from demo.binding import FlowBinding
from demo.expected import Expected
from demo.faults import Fault, FaultPlanner
from demo.outage import Outage, OutageWindow
from demo.records import RecordReader, command_type
from demo.shop import Shop
from demo.simulator import Happening, Simulation
from demo.tally import Entry, Tally
from observer.engine.effects import Effect, Publish
from observer.ingest import SourceRecord
from observer.replay import Replayer
from observer.topics import Topics

__all__ = ["START_MS", "run_offline"]

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TICK_MS = 50


def run_offline(
    binding: FlowBinding,
    *,
    seed: int,
    rates: Mapping[Fault, float],
    orders: int,
    rate: float,
    run_id: str = "sim",
    on_entry: Callable[[Entry], None] | None = None,
    stop_after_ms: int | None = None,
    timeline: TextIO | None = None,
    outage: Outage | None = None,
) -> Tally:
    """Run `orders` orders to their end (or the binding's settle time, or `stop_after_ms` of
    virtual time) and return the tally. `timeline`: where the shop's records go, as
    `observer replay --events` reads them; `outage`: a service down for a while (the flow
    should have guardrails)."""
    topics = Topics()
    reader = RecordReader(topics, binding.command_topics)
    expected = Expected(binding.registry, reader, topics, timeline)
    tally = Tally(binding, reader, expected)
    window = outage.window(START_MS) if outage is not None else None
    shop = Shop(
        binding.catalogue,
        FaultPlanner(seed, rates),
        run_id,
        binding.late_ms,
        binding.duplicable(),
        window,
    )
    sim = Simulation(shop, rate, orders, START_MS)
    observed = _Observed(tally, binding.command_topics, on_entry)
    note = observed.note
    offset = 0
    now = START_MS
    observer = Replayer(binding.registry, observed.emit, topics)
    deadline: int | None = None
    while True:
        observer.advance_to(now)
        if observed.held:
            tally.observe_held(observed.held)
        for what, key in observed.commands:
            note(_happen(tally, sim.on_command(what, key, now)))
        observed.commands.clear()
        for h in sim.advance(now):
            note(tally.on_happening(h))
            if h.kind == "published" and h.event is not None:
                rec = binding.wire.encode(h.event)
                expected.record(rec)
                src = SourceRecord(rec.topic, 0, offset, rec.key, rec.value, dict(rec.headers), now)
                offset += 1
                observer.apply(src)
        if not sim.placing and sim.idle():
            expected.until(now)  # nothing older will come: the engine's clock may move on
        if not sim.placing and deadline is None:
            deadline = now + binding.settle_ms + _outage_left(window, now)
        if deadline is not None and (now >= deadline or (tally.all_settled() and sim.idle())):
            break
        if stop_after_ms is not None and now - START_MS >= stop_after_ms:
            break
        now += TICK_MS
    expected.until(now)
    return tally


class _Observed:
    """What the observer (the engine, here) publishes: into the tally, commands kept for the
    shop; what the guardrails hold only counted per order (not published, nobody hears it)."""

    def __init__(
        self,
        tally: Tally,
        command_topics: tuple[str, ...],
        on_entry: Callable[[Entry], None] | None,
    ) -> None:
        self.tally = tally
        self.command_topics = command_topics
        self.on_entry = on_entry
        self.commands: list[tuple[str, str]] = []
        self.held: dict[str, list[str]] = {}

    def note(self, entry: Entry | None) -> None:
        if entry is not None and self.on_entry is not None:
            self.on_entry(entry)

    def emit(self, effect: Effect, at: int) -> None:
        if not isinstance(effect, Publish):
            return
        if effect.held is not None:
            if effect.action is not None and isinstance(effect.key, str):
                self.held.setdefault(effect.key, []).append(effect.action)
            return
        if effect.topic is None:
            return
        headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in effect.headers}
        key = effect.key.decode() if isinstance(effect.key, bytes) else effect.key
        self.note(self.tally.on_record(effect.topic, key, effect.value, headers, at))
        if effect.topic in self.command_topics and isinstance(effect.value, dict):
            what = command_type(effect.value, headers)
            if what is not None and key is not None:
                self.commands.append((what, key))


def _outage_left(window: OutageWindow | None, now_ms: int) -> int:
    """How much longer the outage lasts (0: none, or over)."""
    return max(0, window.end_ms - now_ms) if window is not None else 0


def _happen(tally: Tally, h: Happening | None) -> Entry | None:
    return tally.on_happening(h) if h is not None else None
