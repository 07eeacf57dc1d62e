"""The live demo: topics, a fresh `observer run`, the simulated shop and the view, in one loop.

One thread does everything, in turn: publish what the shop has due, read what the observer
published (alerts, outcomes, commands — commands go back to the shop), redraw. So there is
nothing to lock, and Ctrl-C stops it between two steps: the shop stops, the feed closes, the
observer gets SIGTERM and finishes its batch, and the summary is printed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from confluent_kafka.admin import AdminClient

from demo.binding import FlowBinding, bind
from demo.expected import Expected
from demo.faults import Fault, FaultPlanner
from demo.held import HeldReader, actions_command
from demo.kafka_io import (
    FeedRecord,
    ObserverFeed,
    connect,
    ensure_topics,
    make_producer,
    start_group_at_end,
)
from demo.outage import Outage, OutageWindow, guard_flow
from demo.process import ObserverProcess, free_port
from demo.records import RecordReader, command_type
from demo.shop import CHECKOUT, Shop
from demo.simulator import KafkaShop, Simulation
from demo.summary import Summary
from demo.tally import Entry, OrderTrack, Tally
from demo.view import Header, Status, View
from demo.wire import DemoError
from observer.timefmt import format_time
from observer.topics import Topics

__all__ = ["Options", "default_run_dir", "run_live", "topics_from_env"]

log = logging.getLogger(__name__)
REFRESH_S = 0.25
POLL_MAX_S = 0.05
HELD_EVERY_S = 1.0  # with --outage: how often the observer's held actions are read from Redis
IDLE_LAG_MS = 200  # a shop with nothing left to publish: the engine's clock follows the wall's


@dataclass(frozen=True, slots=True)
class Options:
    """Everything `python -m demo` was asked to do."""

    flow_file: str
    rate: float
    seed: int
    rates: Mapping[Fault, float]
    orders: int | None = None
    duration_s: float | None = None
    settle_s: float | None = None
    bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    http_port: int | None = None
    key_prefix: str | None = None  # the observer's Redis prefix (default: observer-demo-<run>)
    keep_state: bool = False  # leave the run's Redis keys and consumer group behind
    run_dir: Path | None = None
    summary_json: Path | None = None
    ready_timeout_s: float = 60.0
    outage: Outage | None = None  # --outage: a service down for a while; the flow gets guardrails


def topics_from_env() -> Topics:
    """The observer's own topics, as `observer run` reads them from the environment."""
    d = Topics()
    return Topics(
        alerts=os.environ.get("OBSERVER_ALERTS_TOPIC", d.alerts),
        outcomes=os.environ.get("OBSERVER_OUTCOMES_TOPIC", d.outcomes),
        dlq=os.environ.get("OBSERVER_DLQ_TOPIC", d.dlq),
    )


def default_run_dir(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / "observer-demo" / run_id


class _Stop(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise DemoError(
            f"Redis does not answer at {url} ({exc}).\n"
            "Start the local stack with `ops/stack start`, or pass --redis-url."
        ) from None
    finally:
        client.close()


def forget_run(
    admin: AdminClient, group: str, redis_url: str, key_prefix: str, keep_keys: bool = False
) -> None:
    """Remove what the run's observer left: its consumer group and its Redis keys (best effort:
    nothing else will ever read them). `keep_keys`: the keys stay (held actions to look at)."""
    import redis

    try:
        for fut in admin.delete_consumer_groups([group], request_timeout=10).values():
            fut.result(timeout=10)
    except Exception as exc:  # a leftover group is harmless; say so in the log and go on
        log.info("could not delete consumer group %s: %s", group, exc)
    if keep_keys:
        return
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        finally:
            client.close()
    except redis.RedisError as exc:
        log.info("could not delete the Redis keys under %s: %s", key_prefix, exc)


def write_summary(path: Path, summary: Summary, run_id: str, seed: int) -> None:
    data = {"run_id": run_id, "seed": seed, **summary.as_json()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def run_live(opts: Options, view: View, run_id: str | None = None) -> int:
    """Run the demo against Kafka and Redis. Returns the exit code: 0 when the run ended as
    asked (or by Ctrl-C) and every judged order behaved as expected, 1 otherwise."""
    run_id = run_id or secrets.token_hex(2)
    run_dir = opts.run_dir or default_run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to(run_dir / "demo.log")
    topics = topics_from_env()
    flow_file, guarded = opts.flow_file, ""
    if opts.outage is not None:
        flow_file, guarded = guard_flow(
            opts.flow_file, bind(opts.flow_file, CHECKOUT).spec, run_dir
        )
    binding = bind(flow_file, CHECKOUT)
    for n in binding.notes:
        log.info("fitting the shop to the flow: %s", n)

    admin = connect(opts.bootstrap)
    _check_redis(opts.redis_url)
    created = ensure_topics(
        admin,
        [*binding.wire.topics, *binding.command_topics, topics.alerts, topics.outcomes, topics.dlq],
    )
    if created:
        log.info("created topics %s", ", ".join(created))
    feed = ObserverFeed(
        admin, opts.bootstrap, [topics.alerts, topics.outcomes, *binding.command_topics]
    )
    group = f"observer-demo-{run_id}"
    key_prefix = opts.key_prefix or f"observer-demo-{run_id}"
    start_group_at_end(admin, opts.bootstrap, group, binding.wire.topics)

    observer = ObserverProcess(
        flow_file,
        bootstrap=opts.bootstrap,
        redis_url=opts.redis_url,
        group_id=group,
        key_prefix=key_prefix,
        http_port=opts.http_port or free_port(),
        log_file=run_dir / "observer.log",
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    reader = RecordReader(topics, binding.command_topics)
    timeline = (run_dir / "timeline.jsonl").open("w")
    tally = Tally(binding, reader, Expected(binding.registry, reader, topics, timeline))
    started = time.monotonic()
    interrupted = False
    header = Header(
        flow=binding.flow.name,
        version=binding.flow.version,
        run_id=run_id,
        seed=opts.seed,
        rate=opts.rate,
        orders=opts.orders,
        duration_s=opts.duration_s,
        observer="starting",
        observer_log=str(observer.log_file),
        run_dir=str(run_dir),
        instance_url=f"{observer.url}/instances/{binding.flow.name}/{{key}}",
    )
    held = HeldReader(opts.redis_url, key_prefix, binding.flow.name) if opts.outage else None
    if guarded:
        view.note(guarded)
    try:
        observer.start()
        observer.wait_ready(opts.ready_timeout_s)
        header = replace(header, observer=f"pid {observer.pid}, {observer.url}")
        started = time.monotonic()
        interrupted = _loop(
            opts, binding, tally, feed, observer, view, header, run_id, run_dir, started, held
        )
    except (KeyboardInterrupt, _Stop):
        interrupted = True
    finally:
        signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, previous)
        view.stop()
        feed.close()
        code = observer.stop()
        log.info("observer run exited with %s", code)
        if held is not None:
            _read_held(held, tally)
            held.close()
        if not opts.keep_state:
            forget_run(admin, group, opts.redis_url, key_prefix, keep_keys=held is not None)
        timeline.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    elapsed = time.monotonic() - started
    settle_ms = _settle_ms(opts, binding)
    now_ms = int(time.time() * 1000)
    tally.expected.until(now_ms)

    def include(t: OrderTrack) -> bool:
        return not interrupted or tally.settled(t) or now_ms - t.placed_ms > settle_ms

    summary = tally.summary(include)
    view.summary(summary, header, elapsed)
    write_summary(opts.summary_json or run_dir / "summary.json", summary, run_id, opts.seed)
    view.note(
        f"files: {run_dir} (observer.log, demo.log, faults.jsonl, timeline.jsonl, summary.json)"
    )
    view.note(
        f"expected = observer replay {flow_file} --events {run_dir / 'timeline.jsonl'} "
        f"--until {format_time(now_ms)}"
    )
    if held is not None:
        for line in held_notes(summary, binding.flow.name, opts.redis_url, key_prefix):
            view.note(line)
    if interrupted:
        return 0
    return 0 if summary.ok else 1


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


def _first_incident(entry: Entry | None, tally: Tally) -> bool:
    """Whether `entry` is the first incident of the run (the moment to say where to look)."""
    return entry is not None and entry.what == "incident" and len(tally.incidents.records) == 1


def _outage_left(window: OutageWindow | None, now_ms: int) -> int:
    return max(0, window.end_ms - now_ms) if window is not None else 0


def _read_held(held: HeldReader, tally: Tally) -> None:
    """What the observer holds now, into the tally (a Redis hiccup: the log, and next time)."""
    found = held.read()
    if found is None:
        log.info("could not read the held actions: %s", held.error)
    else:
        tally.observe_held(found, held.by_incident)


def held_notes(summary: Summary, flow: str, redis_url: str, key_prefix: str) -> list[str]:
    """After a run with --outage: the commands that show, release or drop what is held."""
    by = summary.held_by or {}
    out = [
        f"held actions: {summary.held} (the engine: {summary.held_expected}), "
        + ", ".join(f"{n} by {why}" for why, n in by.items())
        + "; see them all:",
        "  " + actions_command("list", flow, redis_url, key_prefix),
    ]
    incidents = [why for why in by if "." in why]  # incident ids; else a reason (rate, paused)
    if incidents:
        top = max(incidents, key=lambda why: by[why])
        out.append(f"  the {by[top]} of incident {top}, to look at, then to drop (or release):")
        out.append("  " + actions_command("list", flow, redis_url, key_prefix, top))
        out.append("  " + actions_command("drop", flow, redis_url, key_prefix, top))
    out.append(
        f"  (a release is published by a running observer of prefix {key_prefix}; the run's "
        f"Redis keys are kept for these commands: redis-cli -u {redis_url} --scan --pattern "
        f"'{key_prefix}:*' | xargs -r redis-cli -u {redis_url} del removes them)"
    )
    return out


def _settle_ms(opts: Options, binding: FlowBinding) -> int:
    return int(opts.settle_s * 1000) if opts.settle_s is not None else binding.settle_ms


def _loop(
    opts: Options,
    binding: FlowBinding,
    tally: Tally,
    feed: ObserverFeed,
    observer: ObserverProcess,
    view: View,
    header: Header,
    run_id: str,
    run_dir: Path,
    started: float,
    held: HeldReader | None = None,
) -> bool:
    """Until the orders are placed and settled (False) or Ctrl-C (True)."""
    problems: list[str] = []
    producer = make_producer(opts.bootstrap)
    start_ms = int(time.time() * 1000)
    window = opts.outage.window(start_ms) if opts.outage is not None else None
    shop = Shop(
        binding.catalogue,
        FaultPlanner(opts.seed, opts.rates),
        run_id,
        binding.late_ms,
        binding.duplicable(),
        window,
    )
    kafka = KafkaShop(binding.wire, producer, problems.append)
    sim = Simulation(shop, opts.rate, opts.orders, start_ms)
    next_held = 0.0
    status = Status(phase="placing orders")
    settle_ms = _settle_ms(opts, binding)
    settle_by: int | None = None
    seen_ids: set[str] = set()
    commands: list[tuple[str | None, str]] = []
    reorder = Reorder({tally.topics.alerts: 0, tally.topics.outcomes: 2})
    next_refresh = 0.0
    faults_log = (run_dir / "faults.jsonl").open("a")
    view.start(header)

    def show(entry: Entry | None) -> None:
        if entry is not None:
            view.show(entry)

    try:
        while True:
            now = int(time.time() * 1000)
            elapsed = time.monotonic() - started
            if sim.placing and opts.duration_s is not None and elapsed >= opts.duration_s:
                sim.stop_placing()
            if not sim.placing and settle_by is None:
                settle_by = now + settle_ms + _outage_left(window, now)
            if not sim.placing and sim.idle():
                # only answers to commands are still to come, all newer: the engine's clock
                # follows the wall's, as the observer's watermark does on idle partitions
                tally.expected.until(now - IDLE_LAG_MS)
            for h in sim.advance(now):
                if h.kind == "published" and h.event is not None:
                    tally.expected.record(kafka.publish(h.event))
                if h.kind == "placed" and h.plan is not None:
                    faults_log.write(
                        json.dumps(
                            {
                                "order": h.plan.key,
                                "no": h.plan.no,
                                "fault": h.plan.fault.value if h.plan.fault else None,
                                "detail": h.plan.detail,
                            }
                        )
                        + "\n"
                    )
                show(tally.on_happening(h))
            due = sim.next_due()
            wait = POLL_MAX_S if due is None else min(POLL_MAX_S, max(0.0, (due - now) / 1000))
            reorder.add(feed.poll(wait), time.monotonic())
            for rec in reorder.ready(time.monotonic()):
                oid = rec.headers.get("observer-id")
                if oid is not None:
                    if oid in seen_ids:
                        continue  # a repeat after an observer restart
                    seen_ids.add(oid)
                entry = tally.on_record(rec.topic, rec.key, rec.value, rec.headers, rec.timestamp)
                show(entry)
                if held is not None and _first_incident(entry, tally):
                    view.note(f"what the observer holds: {held.command('list')}")
                if rec.topic in binding.command_topics and rec.key is not None:
                    commands.append((command_type(rec.value, rec.headers), rec.key))
            for what, key in commands:
                h2 = sim.on_command(what, key, int(time.time() * 1000)) if what else None
                if h2 is not None:
                    show(tally.on_happening(h2))
            commands.clear()
            producer.poll(0)
            if not observer.alive():
                raise DemoError(
                    f"observer run exited with code {observer.returncode()}:\n{observer.tail()}"
                )
            if held is not None and time.monotonic() >= next_held:
                next_held = time.monotonic() + HELD_EVERY_S
                _read_held(held, tally)
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + REFRESH_S
                status.placed = sim.placed
                status.elapsed_s = elapsed
                status.problems = problems[-3:] + feed.errors[-2:]
                if window is not None and window.start_ms <= now < window.end_ms:
                    status.phase = (
                        f"{window.service} DOWN ({(window.end_ms - now) // 1000}s left); "
                        + ("placing orders" if settle_by is None else "no new orders")
                    )
                elif settle_by is None:
                    status.phase = "placing orders"
                else:
                    left = max(0, (settle_by - now) // 1000)
                    waiting = sum(1 for t in tally.orders.values() if not tally.settled(t))
                    status.phase = (
                        f"no new orders; waiting for {waiting} to finish (at most {left}s)"
                        if waiting
                        else "every order has ended"
                    )
                view.refresh(tally, status)
            if settle_by is not None and ((tally.all_settled() and sim.idle()) or now >= settle_by):
                status.phase = "done"
                view.refresh(tally, status)
                return False
    except (KeyboardInterrupt, _Stop):
        return True
    finally:
        faults_log.close()
        producer.flush(5)
