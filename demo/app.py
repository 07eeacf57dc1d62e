"""The live demo: topics, a fresh `observer run`, the simulated shop and the view, in one loop
(`loop.py`), then the summary.

Ctrl-C stops it between two steps of the loop: the shop stops, the feed closes, the observer
gets SIGTERM and finishes its batch, and the summary is printed.
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
from demo.faults import Fault
from demo.held import HeldReader, actions_command
from demo.kafka_io import (
    ObserverFeed,
    connect,
    ensure_topics,
    start_group_at_end,
)
from demo.loop import LiveLoop, Stop
from demo.outage import Outage, guard_flow
from demo.process import ObserverProcess, free_port
from demo.records import RecordReader
from demo.shop import CHECKOUT
from demo.summary import Summary
from demo.tally import OrderTrack, Tally
from demo.view import Header, View
from demo.wire import DemoError
from observer.timefmt import format_time
from observer.topics import Topics

__all__ = ["Options", "default_run_dir", "run_live", "topics_from_env"]

log = logging.getLogger(__name__)


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


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stop()


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
    flow_file, guarded = _flow_to_run(opts, run_dir)
    binding = bind(flow_file, CHECKOUT)
    for n in binding.notes:
        log.info("fitting the shop to the flow: %s", n)
    admin, feed, group = _kafka(opts, binding, topics, run_id)
    key_prefix = opts.key_prefix or f"observer-demo-{run_id}"
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
    loop = _live_loop(opts, binding, tally, feed, observer, view, key_prefix)
    header = _header(opts, binding, observer, run_id, run_dir)
    if guarded:
        view.note(guarded)
    started = time.monotonic()
    interrupted = False
    try:
        observer.start()
        observer.wait_ready(opts.ready_timeout_s)
        header = replace(header, observer=f"pid {observer.pid}, {observer.url}")
        started = time.monotonic()
        interrupted = loop.run(header, run_id, run_dir, started)
    except (KeyboardInterrupt, Stop):
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        signal.signal(signal.SIGTERM, previous)
        view.stop()
        feed.close()
        log.info("observer run exited with %s", observer.stop())
        loop.read_held()  # after the observer stopped: what it holds for good
        if loop.held is not None:
            loop.held.close()
        if not opts.keep_state:
            forget_run(admin, group, opts.redis_url, key_prefix, keep_keys=loop.held is not None)
        timeline.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return _finish(opts, loop, header, run_id, run_dir, flow_file, key_prefix, interrupted, started)


def _flow_to_run(opts: Options, run_dir: Path) -> tuple[str, str]:
    """The flow file the observer runs (a guarded copy with --outage) and a line saying so."""
    if opts.outage is None:
        return opts.flow_file, ""
    return guard_flow(opts.flow_file, bind(opts.flow_file, CHECKOUT).spec, run_dir)


def _kafka(
    opts: Options, binding: FlowBinding, topics: Topics, run_id: str
) -> tuple[AdminClient, ObserverFeed, str]:
    """Kafka answering, its topics there, the feed of the observer's topics, a fresh group."""
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
    start_group_at_end(admin, opts.bootstrap, group, binding.wire.topics)
    return admin, feed, group


def _live_loop(
    opts: Options,
    binding: FlowBinding,
    tally: Tally,
    feed: ObserverFeed,
    observer: ObserverProcess,
    view: View,
    key_prefix: str,
) -> LiveLoop:
    held = HeldReader(opts.redis_url, key_prefix, binding.flow.name) if opts.outage else None
    return LiveLoop(
        binding,
        tally,
        feed,
        observer,
        view,
        opts.bootstrap,
        opts.seed,
        opts.rates,
        opts.rate,
        opts.orders,
        opts.duration_s,
        _settle_ms(opts, binding),
        opts.outage,
        held,
    )


def _header(
    opts: Options, binding: FlowBinding, observer: ObserverProcess, run_id: str, run_dir: Path
) -> Header:
    return Header(
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


def _finish(
    opts: Options,
    loop: LiveLoop,
    header: Header,
    run_id: str,
    run_dir: Path,
    flow_file: str,
    key_prefix: str,
    interrupted: bool,
    started: float,
) -> int:
    """The summary, its files and the last notes; the exit code."""
    tally, view = loop.tally, loop.view
    elapsed = time.monotonic() - started
    now_ms = int(time.time() * 1000)
    tally.expected.until(now_ms)

    def include(t: OrderTrack) -> bool:
        return not interrupted or tally.settled(t) or now_ms - t.placed_ms > loop.settle_ms

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
    if loop.held is not None:
        for line in held_notes(summary, loop.binding.flow.name, opts.redis_url, key_prefix):
            view.note(line)
    if interrupted:
        return 0
    return 0 if summary.ok else 1


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
