"""Failover of `observer run` processes on the real stack (issue 13): how long the group is
blind after a process dies, for each way of running the consumer groups.

    python benchmarks/failover.py                              # every option x scenario once
    python benchmarks/failover.py --options chosen,today --scenarios restart --repeat 3

Scenarios (SHARDS=16 keyed partitions, two source topics of 4 partitions):
  restart   one process; SIGKILL, and the same process (same OBSERVER_INSTANCE_ID) started
            again at once, as a supervisor or the kubelet does
  takeover  two processes; SIGKILL one, not restarted: the other must take its work over
  sigterm   two processes; SIGTERM one (an orderly stop, scale-down), not restarted
  rolling   one process; SIGTERM, and started again as soon as it exited (a rolling update)

An order stream runs throughout: an order every 100 ms, every other one never paid, so a
`missing` alert falls due (2 s window) every 200 ms. Figures, from the kill:
  owned    the processes alive own every shard (tracker) and every source partition (router)
           again (from their logs: `tracker: assigned shards ...`, `router: assigned ...`)
  alert    the first alert of an order falling due after the kill was published (its record
           timestamp): when the group detects again
  delay    the worst lateness of those alerts (published - due), vs. `base`, the worst of the
           last 10 falling due 2 s or more before the kill
  start    (restart, rolling) the kill -> the new process's start-up line
  exits    (restart, rolling) how often the new process exited by itself and was started again
and `lost` (unpaid orders without an alert at the end) and `false` (alerts of paid orders).

Options: the settings each run is given (all through the environment of `observer run`):
  today         before issue 13: session.timeout.ms 45 s, heartbeat 3 s, no instance id
  short         session.timeout.ms 6 s, heartbeat.interval.ms 1 s, no instance id
  static        OBSERVER_INSTANCE_ID, session 45 s, heartbeat 3 s
  chosen        OBSERVER_INSTANCE_ID with the observer's defaults (session 6 s, heartbeat 1 s)
  kip848        group.protocol=consumer (KIP-848; the session is the broker's, 45 s)
  kip848-static group.protocol=consumer and a group.instance.id (OBSERVER_KAFKA_GROUP_INSTANCE_ID:
                the observer refuses OBSERVER_INSTANCE_ID with this protocol, see `restart`)
  kip848-short  group.protocol=consumer, the groups' consumer.session.timeout.ms set to 6 s
                (and heartbeat 1 s) through the admin API: a stock broker refuses that
                (group.consumer.min.session.timeout.ms = 45 s; not a dynamic setting), the
                row then says so

Needs Kafka on --bootstrap-servers and Redis on --redis-url (`ops/stack start`). Every run
uses its own topics, groups and Redis prefix, deleted at the end. Prints a table (median of
--repeat runs, and the range) and writes the figures as JSON to --json when given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from benchmarks.common import (
    admin,
    create_topics,
    delete_groups,
    delete_topics,
    kafka_conf,
    log,
    redis_delete_prefix,
)

OBSERVER = str(Path(sys.executable).with_name("observer"))
SHARDS = 16
PARTITIONS = 4
WINDOW_MS = 2_000
ORDER_EVERY_S = 0.1
SOURCES = ("orders", "pay")

FLOW = """
flow: failover
version: 1
key: order_id
sources:
  orders: {{topic: {p}.orders, type: value.type, key: value.id}}
  pay: {{topic: {p}.pay, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: {window}ms
retain: 10m
expire: 10m
"""

_OLD_GROUP = {
    "OBSERVER_KAFKA_SESSION_TIMEOUT_MS": "45000",
    "OBSERVER_KAFKA_HEARTBEAT_INTERVAL_MS": "3000",
}
_KIP848 = {"OBSERVER_KAFKA_GROUP_PROTOCOL": "consumer"}


@dataclass(frozen=True)
class Option:
    env: dict[str, str]
    static: bool = False  # processes get an OBSERVER_INSTANCE_ID
    group_configs: dict[str, str] = field(default_factory=dict)  # KIP-848 group settings


OPTIONS = {
    "today": Option(_OLD_GROUP),
    "short": Option(
        {
            "OBSERVER_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "OBSERVER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        }
    ),
    "static": Option(_OLD_GROUP, static=True),
    "chosen": Option({}, static=True),
    "kip848": Option(_KIP848),
    "kip848-static": Option(_KIP848, static=True),
    "kip848-short": Option(
        _KIP848,
        group_configs={
            "consumer.session.timeout.ms": "6000",
            "consumer.heartbeat.interval.ms": "1000",
        },
    ),
}
SCENARIOS = ("restart", "takeover", "sigterm", "rolling")

# what the observer logs when a stage's assignment changes (observer/runtime/loop.py, router.py)
_TRACKER = re.compile(r"tracker: (assigned|revoked|lost) shards ([0-9, ]*)")
_ROUTER = re.compile(r"router: (assigned|revoked|lost) ((?:[\w.-]+\[\d+\](?:, )?)+)")


class Proc:
    """One `observer run` subprocess; its stderr lines kept with when they were read."""

    def __init__(self, name: str, flow: Path, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.log_path = logs / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [OBSERVER, "run", str(flow), "--http-port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("w") as out:
            for line in self.proc.stderr:
                self.lines.append((time.monotonic(), line))
                out.write(line)

    def banner_at(self) -> float | None:
        return next((t for t, line in self.lines if "observer run: flows" in line), None)

    def owned(self, until: float) -> tuple[set[int], set[str]]:
        """Shards and source partitions this process owned at `until` (from its log)."""
        shards: set[int] = set()
        parts: set[str] = set()
        for t, line in list(self.lines):
            if t > until:
                break
            if m := _TRACKER.search(line):
                got = {int(s) for s in m.group(2).split(",") if s.strip()}
                shards = shards | got if m.group(1) == "assigned" else shards - got
            elif m := _ROUTER.search(line):
                tps = set(m.group(2).split(", "))
                parts = parts | tps if m.group(1) == "assigned" else parts - tps
        return shards, parts

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30) -> int:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        return self.proc.returncode


def covered_at(
    procs: Callable[[], list[Proc]], since: float, parts: int, limit_s: float
) -> float | None:
    """The first moment after `since` at which the processes `procs()` together own every
    shard and every source partition (waits up to `limit_s`; None: never)."""
    deadline = since + limit_s
    while time.monotonic() < deadline:
        now = procs()
        times = sorted({t for p in now for t, _ in list(p.lines) if t >= since} | {since})
        for t in times:
            shards: set[int] = set()
            sources: set[str] = set()
            for p in now:
                s, r = p.owned(t)
                shards |= s
                sources |= r
            if len(shards) == SHARDS and len(sources) == parts:
                return t
        time.sleep(0.1)
    return None


class Orders:
    """Produces an order every ORDER_EVERY_S (every other one paid 300 ms later) and reads
    the alerts; wall-clock ms throughout."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.prefix = prefix
        self.producer = Producer(kafka_conf(bootstrap, **{"linger.ms": 1}))
        self.consumer = Consumer(
            kafka_conf(
                bootstrap,
                **{"group.id": f"{prefix}-reader", "auto.offset.reset": "earliest"},
            )
        )
        self.consumer.subscribe([f"{prefix}.alerts"])
        self.placed: dict[str, int] = {}  # unpaid order -> placed at
        self.paid: set[str] = set()
        self.alerts: dict[str, int] = {}  # order -> its first alert's record timestamp
        self.false: set[str] = set()
        self._producing = threading.Event()
        self._reading = threading.Event()
        self._producing.set()
        self._reading.set()
        self._threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._read, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _produce(self) -> None:
        n = 0
        while self._producing.is_set():
            now = time.time_ns() // 1_000_000
            oid = f"o-{n}"
            value = orjson.dumps({"type": "Placed", "id": oid})
            self.producer.produce(f"{self.prefix}.orders", value, oid.encode(), timestamp=now)
            if n % 2:
                paid = orjson.dumps({"type": "Paid", "id": oid})
                self.producer.produce(f"{self.prefix}.pay", paid, oid.encode(), timestamp=now + 300)
                self.paid.add(oid)
            else:
                self.placed[oid] = now
            self.producer.poll(0)
            n += 1
            time.sleep(ORDER_EVERY_S)
        self.producer.flush(30)

    def _read(self) -> None:
        while self._reading.is_set():
            for m in self.consumer.consume(500, 0.2):
                if m.error() is not None:
                    continue
                alert = orjson.loads(m.value() or b"{}")
                key = str(alert.get("key"))
                if alert.get("kind") != "missing":
                    continue
                if key in self.paid:
                    self.false.add(key)
                self.alerts.setdefault(key, m.timestamp()[1])

    def due_alerted(self, after_ms: int) -> bool:
        """Every unpaid order due after `after_ms` and 1.5 s ago has its alert (and there
        are some)."""
        now = time.time_ns() // 1_000_000
        due = [k for k, t in list(self.placed.items()) if after_ms < t + WINDOW_MS < now - 1500]
        return bool(due) and all(k in self.alerts for k in due)

    def stop(self, wait_s: float = 30) -> None:
        """Stop producing; read until every unpaid order has its alert (at most `wait_s`)."""
        self._producing.clear()
        self._threads[0].join(30)
        wait_for(lambda: all(k in self.alerts for k in list(self.placed)), wait_s)
        self._reading.clear()
        self._threads[1].join(30)
        self.consumer.close()

    def figures(self, kill_ms: int) -> dict[str, Any]:
        """`alert`: the first alert of an order due after the kill, s after the kill; `delay`:
        the worst lateness of those; `base`: the worst of the last 10 due 2 s or more before
        the kill."""

        def due(k: str) -> int:
            return self.placed[k] + WINDOW_MS

        alerted = sorted((k for k in self.placed if k in self.alerts), key=due)
        before = [self.alerts[k] - due(k) for k in alerted if due(k) < kill_ms - 2000][-10:]
        after = [k for k in alerted if due(k) >= kill_ms]
        first = min((self.alerts[k] for k in after), default=None)
        return {
            "alert": None if first is None else round((first - kill_ms) / 1000, 2),
            "delay": round(max(self.alerts[k] - due(k) for k in after) / 1000, 2)
            if after
            else None,
            "base": round(max(before) / 1000, 2) if before else None,
            "lost": sum(1 for k in self.placed if k not in self.alerts),
            "false": len(self.false),
            "orders": len(self.placed) + len(self.paid),
        }


@contextlib.contextmanager
def resources(args: argparse.Namespace, prefix: str, option: Option) -> Iterator[dict[str, str]]:
    """Topics, the two groups' settings, the environment of the processes; deleted after."""
    bootstrap = args.bootstrap_servers
    create_topics(bootstrap, [f"{prefix}.{s}" for s in SOURCES], PARTITIONS)
    create_topics(bootstrap, [f"{prefix}.alerts"], 1)
    groups = [prefix, f"{prefix}.keyed"]
    refused = ""
    if option.group_configs:
        refused = set_group_configs(bootstrap, groups, option.group_configs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update(
        OBSERVER_BOOTSTRAP_SERVERS=bootstrap,
        OBSERVER_REDIS_URL=args.redis_url,
        OBSERVER_GROUP_ID=prefix,
        OBSERVER_KEY_PREFIX=prefix,
        OBSERVER_ALERTS_TOPIC=f"{prefix}.alerts",
        OBSERVER_OUTCOMES_TOPIC=f"{prefix}.outcomes",
        OBSERVER_DLQ_TOPIC=f"{prefix}.dlq",
        OBSERVER_HTTP_HOST="127.0.0.1",
        OBSERVER_SHARDS=str(SHARDS),
        **option.env,
    )
    if refused:
        env["_REFUSED"] = refused
    try:
        yield env
    finally:
        names = [f"{prefix}.{s}" for s in (*SOURCES, "alerts", "outcomes", "dlq")]
        delete_topics(bootstrap, [*names, f"{prefix}.observer-keyed"])
        delete_groups(bootstrap, [*groups, f"{prefix}-reader"])
        redis_delete_prefix(args.redis_url, prefix)


def set_group_configs(bootstrap: str, groups: list[str], configs: dict[str, str]) -> str:
    """KIP-848 group settings through the admin API; the broker's refusal, or ''."""
    a = admin(bootstrap)
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()
    ]
    resources_ = [
        ConfigResource(ResourceType.GROUP, g, incremental_configs=entries) for g in groups
    ]
    for fut in a.incremental_alter_configs(resources_).values():
        try:
            fut.result(30)
        except KafkaException as exc:
            return str(exc.args[0].str())
    return ""


def run_once(args: argparse.Namespace, name: str, scenario: str, n: int) -> dict[str, Any]:
    option = OPTIONS[name]
    prefix = f"fo{os.getpid()}_{n}_{name}_{scenario}".replace("-", "_")
    logs = Path(args.logs)
    with tempfile.TemporaryDirectory() as tmp, resources(args, prefix, option) as env:
        if "_REFUSED" in env:
            return {"refused": env["_REFUSED"]}
        flow = Path(tmp) / "failover.yaml"
        flow.write_text(FLOW.format(p=prefix, window=WINDOW_MS))

        def start(ident: str) -> Proc:
            penv = dict(env)
            if option.static and penv.get("OBSERVER_KAFKA_GROUP_PROTOCOL") == "consumer":
                # the observer refuses OBSERVER_INSTANCE_ID with KIP-848 (because of what this
                # measures): the librdkafka setting, one id for both groups, bypasses that
                penv["OBSERVER_KAFKA_GROUP_INSTANCE_ID"] = ident
            elif option.static:
                penv["OBSERVER_INSTANCE_ID"] = ident
            return Proc(ident, flow, penv, logs)

        count = 1 if scenario in ("restart", "rolling") else 2
        procs = [start(f"p{i + 1}") for i in range(count)]
        everything: list[Proc] = list(procs)
        parts = PARTITIONS * len(SOURCES)
        orders: Orders | None = None
        try:
            t0 = time.monotonic()
            if covered_at(lambda: procs, t0, parts, 120) is None:
                return {"error": "the processes never owned every shard"}
            # with two, both must own work before one of them goes
            if not wait_for(lambda: all(p.owned(time.monotonic())[0] for p in procs), 120):
                return {"error": "the shards were never split"}
            orders = Orders(args.bootstrap_servers, prefix)
            if not wait_for(lambda: orders is not None and orders.due_alerted(0), 60):
                return {"error": "no alerts before the kill"}
            time.sleep(3.0)  # a stretch of steady state before the kill (the `base` figure)
            victim = procs[-1]
            kill_ms, kill_at = time.time_ns() // 1_000_000, time.monotonic()
            fig: dict[str, Any] = {}
            if scenario in ("sigterm", "rolling"):
                victim.stop()
            else:
                victim.kill()
            alive = procs[:-1]
            if scenario in ("restart", "rolling"):
                # a supervisor: the process is started again at once, and again when it exits
                alive = [start(victim.name)]
                everything.append(alive[0])
                fig["exits"] = 0

                def supervised() -> list[Proc]:
                    if not alive[0].alive():
                        fig["exits"] += 1
                        time.sleep(1.0)
                        alive[0] = start(victim.name)
                        everything.append(alive[0])
                    return alive

                covered = covered_at(supervised, kill_at, parts, args.limit)
                banner = everything[len(procs)].banner_at()
                fig["start"] = None if banner is None else round(banner - kill_at, 2)
            else:
                covered = covered_at(lambda: alive, kill_at, parts, args.limit)
            fig["owned"] = None if covered is None else round(covered - kill_at, 2)
            wait_for(lambda: orders is not None and orders.due_alerted(kill_ms), args.limit)
            orders.stop()
            fig.update(orders.figures(kill_ms))
            orders = None
            return fig
        finally:
            if orders is not None:
                orders.stop(0)
            for p in everything:
                p.stop()


def wait_for(cond: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def summary(runs: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.1f}"
    return f"{med:.1f} ({min(vals):.1f}-{max(vals):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    port = os.environ.get("OBSERVER_KAFKA_PORT", "9092")
    rport = os.environ.get("OBSERVER_REDIS_PORT", "6379")
    ap.add_argument("--bootstrap-servers", default=f"127.0.0.1:{port}")
    ap.add_argument("--redis-url", default=f"redis://127.0.0.1:{rport}/0")
    ap.add_argument("--options", default=",".join(OPTIONS), help="comma-separated, of: %(default)s")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--limit", type=float, default=120.0, help="longest wait for a recovery, s")
    ap.add_argument("--logs", default=tempfile.mkdtemp(prefix="failover-logs-"))
    ap.add_argument("--json", default=None, help="write every run's figures here")
    args = ap.parse_args()
    names = [o for o in args.options.split(",") if o]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for o in names:
        if o not in OPTIONS:
            ap.error(f"unknown option {o}; known: {', '.join(OPTIONS)}")
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}; known: {', '.join(SCENARIOS)}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    n = 0
    for name in names:
        for scenario in scenarios:
            for _ in range(args.repeat):
                n += 1
                fig = run_once(args, name, scenario, n)
                log(f"{name} {scenario}: {fig}")
                results.setdefault(name, {}).setdefault(scenario, []).append(fig)
                if "refused" in fig:
                    break
    print(f"\nseconds from the kill (median of {args.repeat}, range); logs in {args.logs}\n")
    cols = ("owned", "alert", "delay", "base", "start", "exits", "lost", "false")
    print(f"| option | scenario | {' | '.join(cols)} |")
    print("|---|---|" + "---|" * len(cols))
    for name, by in results.items():
        for scenario, runs in by.items():
            if "refused" in runs[0]:
                print(f"| {name} | {scenario} | refused by the broker: {runs[0]['refused']} |")
                continue
            errors = [r["error"] for r in runs if "error" in r]
            cells = [summary(runs, c) for c in cols]
            extra = f" errors: {errors}" if errors else ""
            print(f"| {name} | {scenario} | {' | '.join(cells)} |{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
