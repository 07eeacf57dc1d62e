"""The observer's metric set, on an injected Prometheus `CollectorRegistry`.

Hooks called by the runtime once per batch or tick with aggregated numbers; no logic lives
here. Names: `observer_<what>_total` for counters, `observer_<what>_seconds` for times.
"""

from __future__ import annotations

import collections
import contextlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from observer import build
from observer.engine.effects import Signal

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    900,
    1800,
    3600,
    4 * 3600,
    86400,
    float("inf"),
)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, float("inf"))


class Metrics:
    """Every metric the observer exports. Thread-safe (prometheus_client is)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # labelled children of the counters and histograms below (never removed, unlike lag)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._flow_metrics(registry)
        self._delivery_metrics(registry)
        self._loop_metrics(registry)
        self._hostile_input_metrics(registry)
        self._version_metrics(registry)
        self._correlation_metrics(registry)
        self._guard_metrics(registry)
        hot_path = "compiled" if build.info().compiled else "python"
        Gauge(
            "observer_build_info",
            "1, labelled with how the hot path runs: compiled (by mypyc at install) or python "
            "(its sources: not compiled, or changed since; the log at start says why).",
            ["hot_path"],
            registry=registry,
        ).labels(hot_path).set(1)

    def _flow_metrics(self, r: CollectorRegistry) -> None:
        """What the flows saw: events, instances, deviations, step latencies."""
        self.events = Counter(
            "observer_events_total",
            "Source records read, by topic and outcome (applied, ignored, dead_letter).",
            ["topic", "outcome"],
            registry=r,
        )
        self.started = Counter(
            "observer_instances_started_total", "Instances started.", ["flow"], registry=r
        )
        self.ended = Counter(
            "observer_instances_ended_total",
            "Instances ended, by outcome.",
            ["flow", "outcome"],
            registry=r,
        )
        self.open = Gauge(
            "observer_open_instances",
            "Open instances per flow (across the group, from the state store).",
            ["flow"],
            registry=r,
        )
        self.slo_events = Counter(
            "observer_slo_events_total",
            "Instances of flows with an `slo:` judged against it, by result: good (completed "
            "within `within` of its start) or bad (ended otherwise, or still open when `within` "
            "passed). Once per instance.",
            ["flow", "result"],
            registry=r,
        )
        self.deviations = Counter(
            "observer_deviations_total",
            "Deviations, by flow, step and kind.",
            ["flow", "step", "kind"],
            registry=r,
        )
        self.step_latency = Histogram(
            "observer_step_latency_seconds",
            "Event time from a step's anchor to the step.",
            ["flow", "step"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def _delivery_metrics(self, r: CollectorRegistry) -> None:
        """What the observer published, and what failed on the way."""
        self.published = Counter(
            "observer_published_total",
            "Records published and acknowledged, by category (action, alert, outcome, dlq, webhook).",
            ["category"],
            registry=r,
        )
        self.dead_letters = Counter(
            "observer_dead_letters_total",
            "Records sent to the dead-letter topic, by source topic.",
            ["topic"],
            registry=r,
        )
        self.processing_errors = Counter(
            "observer_processing_errors_total",
            "Records whose processing raised (dead-lettered) and timers that failed.",
            ["where"],
            registry=r,
        )
        self.publish_failures = Counter(
            "observer_publish_failures_total",
            "Failed delivery attempts (retried), by category.",
            ["category"],
            registry=r,
        )
        self.webhooks_given_up = Counter(
            "observer_webhooks_given_up_total",
            "Webhooks dropped after their last attempt.",
            registry=r,
        )

    def _loop_metrics(self, r: CollectorRegistry) -> None:
        """How the loop keeps up: lag, watermark, batches, commits, shards, readiness."""
        self.lag = Gauge(
            "observer_consumer_lag",
            "Records not read yet, per source partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.watermark = Gauge(
            "observer_watermark_seconds", "The observer's watermark (epoch seconds).", registry=r
        )
        self.batch_seconds = Histogram(
            "observer_batch_duration_seconds",
            "Time to process one batch (decode, load, engine, write).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "observer_commit_duration_seconds",
            "Time from a commit request to its confirmation.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "observer_outbox_depth",
            "Records waiting for delivery (Kafka and webhooks).",
            registry=r,
        )
        self.overdue = Gauge(
            "observer_deadlines_overdue_seconds",
            "Watermark minus the earliest due time still pending (0 when none is overdue).",
            registry=r,
        )
        self.rebalances = Counter(
            "observer_rebalances_total",
            "Partitions assigned, revoked or lost, by stage (router: source topics; tracker: "
            "the keyed topic, i.e. shards).",
            ["stage", "kind"],
            registry=r,
        )
        self.owned_shards = Gauge(
            "observer_owned_shards",
            "Shards (keyed-topic partitions) this process owns.",
            registry=r,
        )
        self.ready = Gauge("observer_ready", "1 while /readyz says ready, 0 otherwise.", registry=r)
        self.store_errors = Counter(
            "observer_store_errors_total",
            "Failed requests to the state store (retried).",
            registry=r,
        )

    def _hostile_input_metrics(self, r: CollectorRegistry) -> None:
        """Hostile input (issue 12): actions not carried out, budgets that dropped something,
        records the broker refused, the slot cache's size."""
        self.action_errors = Counter(
            "observer_action_errors_total",
            "Actions that could not be carried out (a template failed on the data, the value "
            "did not encode, the record was too large): listed in their alert, dead-lettered.",
            ["flow", "action"],
            registry=r,
        )
        self.budget_drops = Counter(
            "observer_budget_drops_total",
            "What a byte budget dropped: `capture` (a captured value kept as null), "
            "`early_event` (an early event not kept for its instance).",
            ["what"],
            registry=r,
        )
        self.records_refused = Counter(
            "observer_records_refused_total",
            "Records the broker refused for good (too large, invalid), dead-lettered instead; "
            "`dropped`: a dead letter refused too, logged and dropped.",
            ["category"],
            registry=r,
        )
        self.slot_cache_bytes = Gauge(
            "observer_slot_cache_bytes",
            "Stored bytes of the slots the tracker keeps decoded in memory.",
            registry=r,
        )

    def _version_metrics(self, r: CollectorRegistry) -> None:
        """Issue 15: flow versions kept with the state, deployments, hot reload."""
        self.flow_versions = Gauge(
            "observer_flow_versions",
            "Flow versions this process runs (deployed to the group and rebuilt), per flow.",
            ["flow"],
            registry=r,
        )
        self.deploy_generation = Gauge(
            "observer_deploy_generation",
            "The group's deployment generation this process runs (the same on every process "
            "once a deployment reached them all).",
            registry=r,
        )
        self.deploys = Counter(
            "observer_deploys_total",
            "Deployments of flow files by this process (start, change, SIGHUP), by result: "
            "deployed, unchanged, invalid (a flow file), refused (a changed flow that kept "
            "its version, or a webhook that cannot be sent).",
            ["result"],
            registry=r,
        )
        self.version_unavailable = Counter(
            "observer_version_unavailable_total",
            "Events and timers of instances whose flow version is not deployed (never run on "
            "another version: events dead-lettered, timers retried later).",
            ["flow", "version"],
            registry=r,
        )
        self.version_instances = Gauge(
            "observer_version_instances",
            "Open and retained instances of superseded flow versions, as last counted by the "
            "retirement scan (a version retires at 0).",
            ["flow", "version"],
            registry=r,
        )

    # -- correlation health (issue 16) -------------------------------------------------------------

    def _correlation_metrics(self, r: CollectorRegistry) -> None:
        """What became of the events of each flow's sources, and why records were
        dead-lettered (`observer/correlation.py`; `observer health` reads the same counts
        per minute from Redis)."""
        self.source_events = Counter(
            "observer_source_events_total",
            "Events of a flow's source by what became of them: matched (an instance), started "
            "(one), buffered (no instance yet), buffer_full (no instance, buffer full: "
            "dropped), orphaned (a buffered event whose instance never started), no_key, "
            "no_type, no_time (dead-lettered), alias_conflict.",
            ["flow", "source", "kind"],
            registry=r,
        )
        self.dead_letter_reasons = Counter(
            "observer_dead_letter_reasons_total",
            "Records sent to the dead-letter topic, by source topic and reason (undecodable, "
            "schema, no_type, no_key, no_time, too_large, processing).",
            ["topic", "reason"],
            registry=r,
        )

    def record_correlation(self, counts: Mapping[tuple[str, str, str, str], int]) -> None:
        """Correlation counts of one batch (`correlation.py`): sources and dead letters."""
        for (scope, a, b, c), n in counts.items():
            if scope == "src":
                self._child(self.source_events, (a, b, c)).inc(n)
            elif scope == "topic" and b == "dead_letter":
                self._child(self.dead_letter_reasons, (a, c)).inc(n)

    def _guard_metrics(self, r: CollectorRegistry) -> None:
        """The guardrails (contract §7). The gauges are exported by the process that decides
        the flow (one per group, docs/running.md), so summing them over processes counts
        each once; the counters by the process that did it."""
        self.incidents_open = Gauge(
            "observer_incidents_open", "Guardrail incidents open, per flow.", ["flow"], registry=r
        )
        self.actions_held = Gauge(
            "observer_actions_held",
            "Action records held (an incident, the rate limit or a pause), waiting for an "
            "operator to release or drop them.",
            ["flow", "action"],
            registry=r,
        )
        self.incidents_opened = Counter(
            "observer_incidents_opened_total", "Guardrail incidents opened.", ["flow"], registry=r
        )
        self.actions_held_total = Counter(
            "observer_held_actions_total",
            "Action records held, by reason (incident, rate, paused).",
            ["flow", "action", "reason"],
            registry=r,
        )
        self.actions_released = Counter(
            "observer_actions_released_total",
            "Held action records released by an operator and published.",
            ["flow", "action"],
            registry=r,
        )
        self.actions_dropped = Counter(
            "observer_actions_dropped_total",
            "Held action records dropped by an operator.",
            ["flow", "action"],
            registry=r,
        )
        self._held_actions: dict[str, set[str]] = {}  # flow -> actions with a gauge here

    # -- hooks ------------------------------------------------------------------------------------

    def declare_slo_flows(self, flows: Iterable[str]) -> None:
        """Export `observer_slo_events_total` at 0 for these flows (those with an `slo:`) from
        the start: Prometheus' rate() cannot see the first increment of a series it never saw at
        0, and an SLO's first bad instance must count."""
        for flow in flows:
            for result in ("good", "bad"):
                self._child(self.slo_events, (flow, result))

    def record_events(self, outcomes: Mapping[tuple[str, str], int]) -> None:
        """(topic, outcome) -> count for one batch."""
        for (topic, outcome), n in outcomes.items():
            self._child(self.events, (topic, outcome)).inc(n)
            if outcome == "dead_letter":
                self._child(self.dead_letters, (topic,)).inc(n)

    def record_signals(self, signals: Iterable[Signal]) -> None:
        """Started, ended, deviation and SLO signals of one batch, counted per label set first."""
        tally: dict[tuple[str, ...], int] = {}
        get = tally.get
        for s in signals:
            what = s.what
            if what == "started":
                key: tuple[str, ...] = ("started", s.flow)
            elif what == "ended":
                key = ("ended", s.flow, s.detail)
            elif what == "deviation":
                key = ("deviation", s.flow, s.step or "", s.detail)
            elif what == "slo":
                key = ("slo", s.flow, s.detail)
            elif what == "action_error":
                key = ("action_error", s.flow, s.detail.split(":", 1)[0])
            elif what == "dropped":
                key = ("dropped", "early_event")
            else:
                continue
            tally[key] = get(key, 0) + 1
        for key, n in tally.items():
            if key[0] == "started":
                self._child(self.started, key[1:]).inc(n)
            elif key[0] == "ended":
                self._child(self.ended, key[1:]).inc(n)
            elif key[0] == "slo":
                self._child(self.slo_events, key[1:]).inc(n)
            elif key[0] == "action_error":
                self._child(self.action_errors, key[1:]).inc(n)
            elif key[0] == "dropped":
                self._child(self.budget_drops, key[1:]).inc(n)
            else:
                self._child(self.deviations, key[1:]).inc(n)

    def record_latencies(self, latencies: Iterable[tuple[str, str, int]]) -> None:
        """Step latencies (flow, step, ms) of one batch: bucketed here, then added to each
        histogram child once per bucket (not one locked `observe` per value)."""
        per_child: dict[tuple[str, str], list[int]] = {}
        for flow, step, ms in latencies:
            values = per_child.get((flow, step))
            if values is None:
                per_child[(flow, step)] = [ms]
            else:
                values.append(ms)
        bounds = _LATENCY_BUCKETS
        for labels, values in per_child.items():
            child = self._child(self.step_latency, labels)
            buckets = getattr(child, "_buckets", None)
            total = getattr(child, "_sum", None)
            if buckets is None or total is None or len(buckets) != len(bounds):
                for ms in values:  # prometheus_client's internals changed: the public way
                    child.observe(ms / 1000.0)
                continue
            amounts = [ms / 1000.0 for ms in values]
            # Histogram.observe: amount <= bound (C-level loops: once per latency)
            for i, n in collections.Counter(map(bisect_left, repeat(bounds), amounts)).items():
                buckets[i].inc(n)
            total.inc(sum(amounts, 0.0))

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """`metric.labels(*labels)`, cached (labels() validates and locks on every call)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record_held(self, held: Iterable[tuple[str, str, str]]) -> None:
        """(flow, action, reason) of action records just held."""
        for flow, action, reason in held:
            self._child(self.actions_held_total, (flow, action, reason)).inc()

    def record_guard(
        self,
        flow: str,
        *,
        open_incidents: int,
        held: Mapping[str, int],
        opened: int,
        newly_held: Iterable[tuple[str, str]],
        released: Iterable[str],
        dropped: Mapping[str, int],
    ) -> None:
        """One pass of a flow's decider: its gauges, and what it did."""
        self.incidents_open.labels(flow).set(open_incidents)
        known = self._held_actions.setdefault(flow, set())
        for action in known | set(held):
            self.actions_held.labels(flow, action).set(max(held.get(action, 0), 0))
        known |= set(held)
        if opened:
            self._child(self.incidents_opened, (flow,)).inc(opened)
        self.record_held((flow, action, reason) for action, reason in newly_held)
        for action in released:
            self._child(self.actions_released, (flow, action)).inc()
        for action, n in dropped.items():
            self._child(self.actions_dropped, (flow, action)).inc(n)

    def forget_guard(self, flow: str) -> None:
        """This process no longer decides `flow`: its gauges go (the new decider's count)."""
        with contextlib.suppress(KeyError):
            self.incidents_open.remove(flow)
        for action in self._held_actions.pop(flow, set()):
            with contextlib.suppress(KeyError):
                self.actions_held.remove(flow, action)

    def set_open(self, stats: Mapping[str, int]) -> None:
        for name, n in stats.items():
            if name.startswith("open:"):
                self.open.labels(name[5:]).set(max(n, 0))

    def set_lag(self, lag: Mapping[tuple[str, int], int | None]) -> None:
        for (topic, partition), n in lag.items():
            if n is not None:
                self.lag.labels(topic, str(partition)).set(n)

    def forget_partitions(self, tps: Iterable[tuple[str, int]]) -> None:
        for topic, partition in tps:
            with contextlib.suppress(KeyError):
                self.lag.remove(topic, str(partition))
