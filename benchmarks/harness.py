"""One run of `benchmarks/run.py`: its settings, where its files go, the observer processes'
command line and environment, the workload it measures, and what it created (deleted at the
end unless --keep)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from benchmarks import workload as wl
from benchmarks.common import (
    create_topics,
    delete_groups,
    delete_topics,
    log,
    redis_delete_prefix,
    topics_matching,
)
from observer.config import ObserverConfig


def keyed_group(group: str) -> str:
    """The consumer group of the observer's tracker (the keyed topic) for source group `group`."""
    return f"{group}.keyed"


@dataclass(frozen=True)
class FreshFlow:
    """What `Run.fresh_flow` made: topic prefix, flow copy, output topics, model, encoder."""

    prefix: str
    files: wl.WorkloadFiles
    topics: Any  # alerts/outcomes/dlq names (`workload.runtime_topics`)
    model: wl.OrderModel
    enc: wl.RecordEncoder


@dataclass
class Run:
    """One benchmark run: settings, where things go, what was measured."""

    args: argparse.Namespace
    stamp: str
    out: Path
    results: dict[str, Any] = field(default_factory=dict)
    topics_made: set[str] = field(default_factory=set)
    groups_made: set[str] = field(default_factory=set)
    prefixes_made: list[str] = field(default_factory=list)
    key_prefixes_made: set[str] = field(default_factory=set)  # Redis

    @property
    def bs(self) -> str:
        return str(self.args.bootstrap_servers)

    def logfile(self, name: str) -> Any:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        return (self.out / "logs" / f"{name}.log").open("wb")

    def observer_cmd(
        self, flow_dir: Path, group: str, port: int, key_prefix: str, redis_url: str | None = None
    ) -> list[str]:
        return [
            self.args.observer_python,
            "-m",
            "observer.cli",
            "run",
            str(flow_dir),
            "--bootstrap-servers",
            self.bs,
            "--redis-url",
            redis_url or self.args.redis_url,
            "--group-id",
            group,
            "--http-port",
            str(port),
            "--key-prefix",
            key_prefix,
            "--log-level",
            self.args.observer_log_level,
        ]

    def observer_env(self, topics: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            OBSERVER_ALERTS_TOPIC=topics.alerts,
            OBSERVER_OUTCOMES_TOPIC=topics.outcomes,
            OBSERVER_DLQ_TOPIC=topics.dlq,
        )
        for kv in self.args.observer_env:
            k, _, v = kv.partition("=")
            env[k] = v
        return env

    def observer_settings(self, group: str, key_prefix: str, env: dict[str, str]) -> ObserverConfig:
        """The settings the observer processes of `group` run with (read from the same
        environment). Registers what they create for deletion at the end: the consumer groups
        `<group>` (source topics) and `<group>.keyed`, the keyed topic, the Redis keys."""
        cfg = ObserverConfig.load({"group_id": group, "key_prefix": key_prefix}, env)
        self.groups_made.add(group)
        if cfg.routing == "keyed":
            self.groups_made.add(keyed_group(group))
            self.topics_made.add(cfg.keyed_topic_name())
        self.key_prefixes_made.add(key_prefix)
        return cfg

    def fresh_flow(self, suffix: str, label: str) -> FreshFlow:
        """A copy of the flow on topics of its own (`<prefix>-<suffix>.…`, created now and
        deleted at the end), the alerts/outcomes/DLQ topics of measurement `label`, and the
        order model and record encoder to produce to them: the latency and memory parts
        produce their own records instead of the throughput workload."""
        args = self.args
        prefix = f"{args.prefix}-{suffix}"
        files = wl.prepare_flow(Path(args.flow), prefix, self.out / suffix, args.webhook_sink)
        self.prefixes_made.append(prefix)
        create_topics(self.bs, files.source_topics.values(), args.partitions)
        create_topics(self.bs, files.action_topics, args.partitions)
        self.topics_made.update([*files.source_topics.values(), *files.action_topics])
        topics = files.runtime_topics(label)
        self.make_runtime_topics(topics)
        model = wl.OrderModel.build(files.flow, args.missing_step, args.late_step)
        enc = wl.RecordEncoder(files, args.event_bytes, args.time_format)
        return FreshFlow(prefix, files, topics, model, enc)

    def make_runtime_topics(self, topics: Any) -> None:
        # alerts carry the broker's append time: that is when an alert was acknowledged
        create_topics(
            self.bs,
            [topics.alerts],
            self.args.partitions,
            {"message.timestamp.type": "LogAppendTime"},
        )
        create_topics(self.bs, [topics.outcomes, topics.dlq], self.args.partitions)
        self.topics_made.update([topics.alerts, topics.outcomes, topics.dlq])


def cleanup(run: Run, wait_s: float = 120) -> None:
    """Delete the run's topics (the observers' keyed topics included) and consumer groups
    (`<group>` and `<group>.keyed`), retrying for up to `wait_s` (a broker restarting, a group
    still settling); what is left is named in the log."""
    topics, groups = set(run.topics_made), set(run.groups_made)
    n_topics, n_groups = len(topics), len(groups)
    listed = False
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if not listed:
                for p in run.prefixes_made:
                    topics.update(topics_matching(run.bs, p))
                n_topics, listed = len(topics), True
            groups -= delete_groups(run.bs, groups)
            topics -= delete_topics(run.bs, topics)
        except KafkaException as exc:
            log(f"cleanup: {exc}")
        if (listed and not topics and not groups) or time.monotonic() > deadline:
            break
        time.sleep(2)
    with contextlib.suppress(Exception):  # what a measurement cut short left
        for prefix in sorted(run.key_prefixes_made):
            redis_delete_prefix(run.args.redis_url, prefix)
    log(
        f"deleted {n_topics - len(topics)}/{n_topics} topics (keyed topics included) and {n_groups - len(groups)}/{n_groups} consumer groups (<group>, <group>.keyed); --keep keeps them"
        + (
            f"; NOT deleted: topics {sorted(topics)} groups {sorted(groups)}"
            if topics or groups
            else ""
        )
    )


def prepare_workload(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload the throughput parts measure: produced now under `<out>/workload` (its
    topics are deleted at the end), or the one `--workload` names. Returns its manifest and
    what the replay expects of it; both go to the results."""
    args, res = run.args, run.results
    if args.workload:
        wdir = Path(args.workload)
        manifest = json.loads((wdir / "workload.json").read_text())
        manifest["out"] = str(wdir)
    else:
        args.out = str(run.out / "workload")
        manifest = wl.build_workload(args)
        run.prefixes_made.append(manifest["prefix"])
        run.topics_made.update([*manifest["source_topics"].values(), *manifest["action_topics"]])
    expected = json.loads((Path(manifest["out"]) / "expected.json").read_text())
    res["workload"] = manifest
    res["expected"] = {
        k: expected[k]
        for k in (
            "alerts_min",
            "alerts_max",
            "outcomes_certain",
            "orders_by_kind",
            "fault_steps",
            "sample_check",
        )
    }
    return manifest, expected
