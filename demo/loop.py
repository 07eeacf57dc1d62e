"""The live loop of the demo: one thread does everything, in turn — publish what the shop has
due, read what the observer published (alerts, outcomes, commands; commands go back to the
shop), redraw — until every order has ended, or Ctrl-C. So there is nothing to lock."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from demo.binding import FlowBinding
from demo.faults import Fault, FaultPlanner
from demo.held import HeldReader
from demo.kafka_io import FeedRecord, ObserverFeed, make_producer
from demo.outage import Outage, OutageWindow
from demo.process import ObserverProcess
from demo.records import command_type
from demo.shop import Shop
from demo.simulator import Happening, KafkaShop, Simulation
from demo.tally import Entry, Tally
from demo.view import Header, Status, View
from demo.wire import DemoError

__all__ = ["LiveLoop", "Reorder", "Stop"]

REFRESH_S = 0.25
POLL_MAX_S = 0.05
HELD_EVERY_S = 1.0  # with --outage: how often the observer's held actions are read from Redis
IDLE_LAG_MS = 200  # a shop with nothing left to publish: the engine's clock follows the wall's


class Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


class Reorder:
    """Holds what the feed read for `hold_s`, then lets it out in publication order.

    An alert, its commands and the outcome the observer publishes together land on different
    topics and partitions and may be read in different polls; held a moment and sorted by
    (timestamp, alert < command < outcome) they read as the story they tell.
    """

    def __init__(self, rank: Mapping[str, int], hold_s: float = 0.15) -> None:
        self.rank = rank
        self.hold_s = hold_s
        self._held: list[tuple[float, FeedRecord]] = []

    def add(self, records: list[FeedRecord], now_s: float) -> None:
        self._held += [(now_s, r) for r in records]

    def ready(self, now_s: float) -> list[FeedRecord]:
        out = [r for at, r in self._held if now_s - at >= self.hold_s]
        if out:
            self._held = [(at, r) for at, r in self._held if now_s - at < self.hold_s]
        return sorted(out, key=lambda r: (r.timestamp, self.rank.get(r.topic, 1)))


@dataclass(slots=True)
class LiveLoop:
    """The shop on Kafka against a running observer, shown in `view`; `run` until done."""

    binding: FlowBinding
    tally: Tally
    feed: ObserverFeed
    observer: ObserverProcess
    view: View
    bootstrap: str
    seed: int
    rates: Mapping[Fault, float]
    rate: float
    orders: int | None
    duration_s: float | None
    settle_ms: int
    outage: Outage | None = None
    held: HeldReader | None = None  # with --outage: the observer's held actions
    problems: list[str] = field(default_factory=list)
    status: Status = field(default_factory=lambda: Status(phase="placing orders"))
    _seen: set[str] = field(default_factory=set)
    _settle_by: int | None = None
    _next_refresh: float = 0.0
    _next_held: float = 0.0

    def run(self, header: Header, run_id: str, run_dir: Path, started: float) -> bool:
        """Until the orders are placed and settled (False) or Ctrl-C (True)."""
        producer = make_producer(self.bootstrap)
        start_ms = int(time.time() * 1000)
        window = self.outage.window(start_ms) if self.outage is not None else None
        shop = Shop(
            self.binding.catalogue,
            FaultPlanner(self.seed, self.rates),
            run_id,
            self.binding.late_ms,
            self.binding.duplicable(),
            window,
        )
        kafka = KafkaShop(self.binding.wire, producer, self.problems.append)
        sim = Simulation(shop, self.rate, self.orders, start_ms)
        reorder = Reorder({self.tally.topics.alerts: 0, self.tally.topics.outcomes: 2})
        faults_log = (run_dir / "faults.jsonl").open("a")
        self.view.start(header)
        try:
            while True:
                now = int(time.time() * 1000)
                elapsed = time.monotonic() - started
                self._shop_step(sim, kafka, faults_log, window, now, elapsed)
                due = sim.next_due()
                wait = POLL_MAX_S if due is None else min(POLL_MAX_S, max(0.0, (due - now) / 1000))
                reorder.add(self.feed.poll(wait), time.monotonic())
                self._observer_step(sim, reorder.ready(time.monotonic()))
                producer.poll(0)
                if not self.observer.alive():
                    raise DemoError(
                        f"observer run exited with code {self.observer.returncode()}:\n"
                        f"{self.observer.tail()}"
                    )
                self._refresh(sim, window, now, elapsed)
                if self._done(sim, now):
                    return False
        except (KeyboardInterrupt, Stop):
            return True
        finally:
            faults_log.close()
            producer.flush(5)

    def read_held(self) -> None:
        """What the observer holds now, into the tally (a Redis hiccup: next time)."""
        if self.held is not None:
            found = self.held.read()
            if found is not None:
                self.tally.observe_held(found, self.held.by_incident)

    # -- one turn ---------------------------------------------------------------------------------

    def _show(self, entry: Entry | None) -> None:
        if entry is not None:
            self.view.show(entry)

    def _shop_step(
        self,
        sim: Simulation,
        kafka: KafkaShop,
        faults_log: IO[str],
        window: OutageWindow | None,
        now: int,
        elapsed: float,
    ) -> None:
        """Publish what the shop has due."""
        if sim.placing and self.duration_s is not None and elapsed >= self.duration_s:
            sim.stop_placing()
        if not sim.placing and self._settle_by is None:
            left = max(0, window.end_ms - now) if window is not None else 0
            self._settle_by = now + self.settle_ms + left
        if not sim.placing and sim.idle():
            # only answers to commands are still to come, all newer: the engine's clock
            # follows the wall's, as the observer's watermark does on idle partitions
            self.tally.expected.until(now - IDLE_LAG_MS)
        for h in sim.advance(now):
            if h.kind == "published" and h.event is not None:
                self.tally.expected.record(kafka.publish(h.event))
            if h.kind == "placed" and h.plan is not None:
                faults_log.write(json.dumps(_fault_line(h)) + "\n")
            self._show(self.tally.on_happening(h))

    def _observer_step(self, sim: Simulation, records: list[FeedRecord]) -> None:
        """What the observer published: into the tally; its commands to the shop."""
        commands: list[tuple[str | None, str]] = []
        for rec in records:
            oid = rec.headers.get("observer-id")
            if oid is not None:
                if oid in self._seen:
                    continue  # a repeat after an observer restart
                self._seen.add(oid)
            entry = self.tally.on_record(rec.topic, rec.key, rec.value, rec.headers, rec.timestamp)
            self._show(entry)
            first = entry is not None and entry.what == "incident"
            if self.held is not None and first and len(self.tally.incidents.records) == 1:
                # the first incident: say where to look
                self.view.note(f"what the observer holds: {self.held.command('list')}")
            if rec.topic in self.binding.command_topics and rec.key is not None:
                commands.append((command_type(rec.value, rec.headers), rec.key))
        for what, key in commands:
            h = sim.on_command(what, key, int(time.time() * 1000)) if what else None
            if h is not None:
                self._show(self.tally.on_happening(h))

    def _refresh(
        self, sim: Simulation, window: OutageWindow | None, now: int, elapsed: float
    ) -> None:
        if self.held is not None and time.monotonic() >= self._next_held:
            self._next_held = time.monotonic() + HELD_EVERY_S
            self.read_held()
        if time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + REFRESH_S
        status = self.status
        status.placed = sim.placed
        status.elapsed_s = elapsed
        status.problems = self.problems[-3:] + self.feed.errors[-2:]
        if window is not None and window.start_ms <= now < window.end_ms:
            status.phase = f"{window.service} DOWN ({(window.end_ms - now) // 1000}s left); " + (
                "placing orders" if self._settle_by is None else "no new orders"
            )
        elif self._settle_by is None:
            status.phase = "placing orders"
        else:
            left = max(0, (self._settle_by - now) // 1000)
            waiting = sum(1 for t in self.tally.orders.values() if not self.tally.settled(t))
            status.phase = (
                f"no new orders; waiting for {waiting} to finish (at most {left}s)"
                if waiting
                else "every order has ended"
            )
        self.view.refresh(self.tally, status)

    def _done(self, sim: Simulation, now: int) -> bool:
        settle_by = self._settle_by
        if settle_by is None or not ((self.tally.all_settled() and sim.idle()) or now >= settle_by):
            return False
        self.status.phase = "done"
        self.view.refresh(self.tally, self.status)
        return True


def _fault_line(h: Happening) -> dict[str, object]:
    plan = h.plan
    assert plan is not None
    return {
        "order": plan.key,
        "no": plan.no,
        "fault": plan.fault.value if plan.fault else None,
        "detail": plan.detail,
    }
