"""`Runtime`: the consumer loop of `observer run`, coordinating its parts.

Each turn of the loop (`cycle`) runs the router (source topics -> keyed topic, `router.py`),
then the tracker (keyed topic -> state, deadlines and records, `tracker.py`), then looks at
health, and renews the lease of direct routing (`lease_guard.py`). One thread runs it and owns
every consumer, producer and store connection; the webhook workers and the ops API have their
own threads.

With `routing: direct` the keyed topic is kept in memory (`local.py`): the router then reads
no more while the tracker has a few batches of routed records still to read (`backlog`).

Failures: a record whose processing raises goes to the dead-letter topic and the loop goes on;
a store failure stops progress (nothing more is committed) until the store answers again
(`StoreOutage` paces the attempts; the tracker then reads its partitions again from their
committed offsets); records the producer could not deliver stay in the outbox and are retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace

from observer.config import ObserverConfig
from observer.engine.core import Engine
from observer.errors import StoreError
from observer.flows.registry import FlowRegistry
from observer.ingest import Ingest
from observer.metrics import Metrics
from observer.record_size import RecordLimits
from observer.runtime.deployments import Check, Deployments
from observer.runtime.every import Every
from observer.runtime.health import Health
from observer.runtime.lease_guard import LeaseGuard
from observer.runtime.outage import StoreOutage
from observer.runtime.ports import RuntimePorts
from observer.runtime.router import Router
from observer.runtime.tally import MinuteTally
from observer.runtime.tracker import Tracker

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

_PROBE_EVERY_S = 5.0
_STATS_EVERY_S = 5.0


class Runtime:
    """Runs deployed flows against Kafka with state in the store until `stop()`."""

    def __init__(
        self,
        config: ObserverConfig,
        registry: FlowRegistry,
        ports: RuntimePorts,
        *,
        metrics: Metrics,
        health: Health,
        deployed: Mapping[str, object] | None = None,
        check: Check | None = None,
        process: str = "observer",
    ) -> None:
        """`check`: what flows about to run must pass (webhook secrets); `process`: this
        process' name among the group's (issue 15: what each process runs)."""
        self.config = config
        self.store = ports.store
        self.clock = ports.clock
        self.metrics = metrics
        self.health = health
        self.deployed = dict(deployed or {})
        self._stop = threading.Event()
        self.started = threading.Event()
        topics = config.topics()
        self._decoder = ports.decoder  # issue 16: the registry formats
        self.ingest = Ingest(registry, topics, decoder=self._decoder)
        self.tally = MinuteTally(self.clock.now_ms, ports.tally, self.clock.monotonic)
        self.router = Router(
            config,
            self.ingest,
            source=ports.router_source,
            sink=ports.router_sink,
            metrics=metrics,
            clock=self.clock,
            keyed_topic=config.keyed_topic_name(),
            tally=self.tally,
        )
        self.outage = StoreOutage(health, metrics, self.clock, self._stop)
        self.tracker = Tracker(
            config,
            registry,
            Engine(registry, topics),
            ports,
            source_topics=self.ingest.topic_names(),
            metrics=metrics,
            health=health,
            outage=self.outage,
            stop=self._stop,
            tally=self.tally,
            wire=ports.wire,
        )
        self.lease: LeaseGuard | None = None
        if ports.lease is not None:
            self.lease = LeaseGuard(
                ports.lease,
                config.key_prefix,
                config.lease_ttl_ms,
                clock=self.clock,
                stop=self._stop,
                outage=self.outage,
            )
        # direct routing: records routed and not read by the tracker yet (held in memory);
        # the router reads no more while there are more than a few batches (and marks) of them
        self._backlog = ports.backlog
        self._backlog_limit = 4 * (config.batch_size + config.shards)
        self._probe_every = Every(_PROBE_EVERY_S, self.clock.monotonic)
        self._stats_every = Every(_STATS_EVERY_S, self.clock.monotonic)
        # issue 15: the deployed versions, kept with the state, reloaded while running
        self.deployments = Deployments(
            config,
            registry,
            ports.flows,
            ports.flow_files,
            clock=self.clock,
            metrics=metrics,
            check=check,
            process=process,
        )
        self.deploy_listeners: list[Callable[[FlowRegistry], None]] = []

    # -- lifecycle ----------------------------------------------------------------------------------

    def use_record_limits(self, limits: RecordLimits) -> None:
        """The largest record each topic accepts, as the broker said at start (before `run`):
        every part that builds records measures them against it."""
        topics = replace(self.config.topics(), limits=limits)
        self.ingest.topics = topics
        self.router.topics = topics
        self.tracker.topics = topics
        self.tracker.publisher.topics = topics
        self.tracker.planning.engine.topics = topics

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, flush, commit and return (thread-safe)."""
        self.health.stopping = True
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait, waking up early on `stop()`; True if stopping."""
        return self.clock.sleep(seconds, self._stop)

    def run(self) -> None:
        """Run until `stop()`. Raises ConfigError/ObserverError on a fatal problem."""
        try:
            if not self.open():
                return
            while not self._stop.is_set():
                self.cycle()
        finally:
            self.close()

    def open(self) -> bool:
        """Open the store, take the lease (direct routing), subscribe; False if stopped first.
        Sets `started` once attached."""
        while not self._stop.is_set():
            try:
                self.store.open(self.config.shards, self.deployed)
                if self.config.actions == "hold":  # a dry run: `observer actions resume` ends it
                    self.store.pause(None, "OBSERVER_ACTIONS=hold")
                registry = self.deployments.open()
                self.outage.ok()
                break
            except StoreError as exc:
                self.outage.failed(exc, "opening the state store")
        else:
            return False
        self.deploy(registry)
        if self.lease is not None and not self.lease.take():
            return False
        self.router.start()
        self.tracker.start()
        self.health.kafka_ok = self.tracker.source.healthy() and self.router.source.healthy()
        self.health.started = True
        self.started.set()
        return True

    def close(self) -> None:
        """Finish the batch in hand, flush, commit, and close everything."""
        log.info("stopping: finishing the batch in hand, flushing, committing")
        self.tracker.finish()
        # The router goes last: with direct routing the tracker's commit above is what
        # acknowledges the routed records, and so what lets their source offsets be committed.
        try:
            self.router.close(self.config.shutdown_timeout_ms / 1000.0)
        except Exception as exc:
            log.warning("router: %s", exc)
        self.tracker.close()
        self.tally.flush()
        if self.lease is not None:
            self.lease.release()
        self.deployments.close()
        self.store.close()
        log.info("stopped")

    # -- one turn -----------------------------------------------------------------------------------

    def cycle(self) -> None:
        """One turn of the loop: route a batch, track a batch, look at health (and, between
        batches, run a new deployment of the group's flows)."""
        self.health.beat()
        deployed = self.deployments.poll()
        if deployed is not None:
            self.deploy(deployed)
        half = self.config.poll_timeout_ms / 2000.0
        backlog = self._backlog
        read = backlog is None or backlog() < self._backlog_limit
        routed = self.router.poll(half, read)
        self.tracker.poll(0.0 if routed else half)
        self._check_health()
        if self.lease is not None:
            self.lease.renew()

    def reload(self) -> None:
        """Load the flow files again at the next turn (SIGHUP; thread-safe)."""
        self.deployments.request_reload()

    def deploy(self, registry: FlowRegistry) -> None:
        """Run `registry` from the next batch on: the engine, what is read (a version may read
        new topics: the router subscribes to them), the deadlines' sources, the listeners (the
        ops API, webhooks)."""
        self.ingest = Ingest(registry, self.config.topics(), decoder=self._decoder)
        self.router.deploy(self.ingest)
        self.tracker.deploy(registry, self.ingest.topic_names())
        for listener in self.deploy_listeners:
            listener(registry)

    def _check_health(self) -> None:
        healthy = self.tracker.source.healthy() and self.router.source.healthy()
        if not healthy and self._probe_every.due():
            healthy = self.tracker.source.probe(1.0) and self.router.source.probe(1.0)
        self.health.kafka_ok = healthy
        self.health.lag = self.router.lag() + self.tracker.lag()
        self.metrics.outbox_depth.set(len(self.tracker.publisher))
        if self._stats_every.due():
            self.metrics.ready.set(1 if self.health.report()["ready"] else 0)
            self.metrics.slot_cache_bytes.set(self.tracker.cache.bytes)
            try:
                self.metrics.set_open(self.store.stats())
            except StoreError as exc:
                self.tracker.recover(exc)
        self.tally.flush_when_due()
