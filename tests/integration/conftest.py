"""Fixtures for tests against the real Kafka broker and redis-server.

- `stack` (session): where Kafka and Redis are. OBSERVER_BOOTSTRAP_SERVERS / OBSERVER_REDIS_URL
  when set (used as they are; never started), else the ops/stack ports, started with
  `ops/stack start <service>` when they do not answer.
- `unique` (function): a prefix no other test or run uses, for topic names, the consumer group
  and Redis keys, e.g. `f"{unique}-orders"`, `f"{unique}:state"`.
- `admin`, `redis_client`, `create_topics`: clients on the stack; topics made by `create_topics`
  and Redis keys under `f"{unique}:"` are removed after the test.
- `cluster_url` (session), `cluster` (function): the Redis Cluster of `ops/stack start
  redis-cluster` (started on demand, or OBSERVER_REDIS_CLUSTER_URL), a client on it that
  removes the keys under `unique` after the test.

Every test collected under tests/integration/ gets the `integration` marker and, unless it sets
its own, a 120 s `timeout` marker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from redis.cluster import RedisCluster

from tests.waiting import wait_until

from .kafka_helpers import wait_for_topics

HERE = Path(__file__).resolve().parent
OPS_STACK = HERE.parent.parent / "ops" / "stack"
DEFAULT_TIMEOUT_S = 120

CreateTopics = Callable[..., list[str]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT_S))


@dataclass(frozen=True)
class Stack:
    """Where the tests' Kafka and Redis are. `managed` is True for services ops/stack runs."""

    bootstrap_servers: str
    redis_url: str
    kafka_managed: bool
    redis_managed: bool

    def ops_stack(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Runs `ops/stack ARGS` (e.g. "restart-kafka"); raises with its output if it fails."""
        return _run_ops_stack(list(args), timeout)


def _run_ops_stack(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OBSERVER_PYTHON": sys.executable}
    done = subprocess.run(
        [str(OPS_STACK), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"ops/stack {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done


def _kafka_answers(bootstrap_servers: str) -> bool:
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
        return bool(admin.list_topics(timeout=3).brokers)
    except KafkaException:
        return False


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        return client.ping() is True
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def stack() -> Stack:
    env_bootstrap = os.environ.get("OBSERVER_BOOTSTRAP_SERVERS")
    env_redis = os.environ.get("OBSERVER_REDIS_URL")
    kafka_port = os.environ.get("OBSERVER_KAFKA_PORT", "9092")
    redis_port = os.environ.get("OBSERVER_REDIS_PORT", "6379")
    found = Stack(
        bootstrap_servers=env_bootstrap or f"127.0.0.1:{kafka_port}",
        redis_url=env_redis or f"redis://127.0.0.1:{redis_port}/0",
        kafka_managed=not env_bootstrap,
        redis_managed=not env_redis,
    )
    checks = (
        ("kafka", "OBSERVER_BOOTSTRAP_SERVERS", found.kafka_managed, found.bootstrap_servers),
        ("redis", "OBSERVER_REDIS_URL", found.redis_managed, found.redis_url),
    )
    for service, env_name, managed, where in checks:
        answers = _kafka_answers if service == "kafka" else _redis_answers
        if answers(where):
            continue
        if not managed:
            pytest.fail(f"{env_name}={where} does not answer (it is used as is, not started)")
        try:
            _run_ops_stack(["start", service], timeout=300)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"could not start {service} with ops/stack: {exc}")
        if not answers(where):
            pytest.fail(f"ops/stack started {service} but {where} does not answer")
    return found


_counter = itertools.count(1)
_run_token = secrets.token_hex(2)  # tells apart runs whose pids repeat, on a broker that persists


_UNIQUE = re.compile(r"t\d+_[A-Za-z0-9]+_\d+_")


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """`t<pid>_<run>_<n>_<test name>`: safe in Kafka topic names, group ids and Redis keys."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name).strip("_")[:60]
    return f"t{os.getpid()}_{_run_token}_{next(_counter)}_{name}"


@pytest.fixture(scope="session")
def admin(stack: Stack) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.bootstrap_servers})


@pytest.fixture
def redis_client(stack: Stack, unique: str) -> Iterator[redis.Redis]:
    """A client on the test Redis (bytes in, bytes out); deletes keys under f"{unique}:" after."""
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    try:
        keys = list(client.scan_iter(match=f"{unique}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def create_topics(admin: AdminClient) -> Iterator[CreateTopics]:
    """`create_topics(names, partitions=1, config=None) -> names`: creates the topics and waits
    until every partition has a leader. They are deleted after the test."""
    created: list[str] = []

    def create(
        names: str | Sequence[str], partitions: int = 1, config: dict[str, str] | None = None
    ) -> list[str]:
        wanted = [names] if isinstance(names, str) else list(names)
        futures = admin.create_topics(
            [
                NewTopic(n, num_partitions=partitions, replication_factor=1, config=config or {})
                for n in wanted
            ],
            operation_timeout=30,
        )
        for name, future in futures.items():
            future.result(30)
            created.append(name)
        wait_for_topics(admin, wanted, partitions, timeout=30)
        return wanted

    yield create
    if created:
        # The observer's keyed topics (`<group>.observer-keyed`) of groups named after the
        # test go too.
        prefixes = tuple({m.group(0) for n in created if (m := _UNIQUE.match(n))})
        with contextlib.suppress(KafkaException):
            created += [
                t
                for t in admin.list_topics(timeout=10).topics
                if t.endswith(".observer-keyed") and t.startswith(prefixes)
            ]
        for future in admin.delete_topics(created, operation_timeout=30).values():
            # Already gone, or the test restarted the broker: nothing left to clean.
            with contextlib.suppress(KafkaException):
                future.result(30)


@pytest.fixture
def routing() -> str:
    """How `make` (test_runtime_flows.py) wires an observer: `keyed` unless a module asks for
    more (test_runtime_flows.py runs every flow test with both routings)."""
    return "keyed"


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[str]:
    """The URL of a Confluent-compatible schema registry: OBSERVER_TEST_SCHEMA_REGISTRY_URL as
    it is, else `ops/stack start registry` (Apicurio Registry on OBSERVER_REGISTRY_PORT,
    default 8081), stopped afterwards if this fixture started it."""
    given = os.environ.get("OBSERVER_TEST_SCHEMA_REGISTRY_URL")
    if given:
        yield given
        return
    port = os.environ.get("OBSERVER_REGISTRY_PORT", "8081")
    status = subprocess.run(
        [str(OPS_STACK), "status", "registry"], capture_output=True, text=True, check=False
    )
    running = re.search(r"^registry\s+up", status.stdout, re.M) is not None
    try:
        _run_ops_stack(["start", "registry"], timeout=600)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not start the schema registry with ops/stack: {exc}")
    yield f"http://127.0.0.1:{port}/apis/ccompat/v7"
    if not running:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _run_ops_stack(["stop", "registry"], timeout=120)


CLUSTER_PORT = int(os.environ.get("OBSERVER_REDIS_CLUSTER_PORT", "7000"))
CLUSTER_NODES = 3  # ops/stack-cluster.sh


def _cluster_ok(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        info: dict[str, Any] = client.cluster("INFO")  # type: ignore[no-untyped-call]
        client.close()
        return str(info.get("cluster_state")) == "ok"
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def cluster_url(stack: Stack) -> Iterator[str]:
    """redis+cluster:// URL of the test cluster (OBSERVER_REDIS_CLUSTER_URL, or ops/stack's,
    started when it does not answer and then stopped at the end of the session)."""
    given = os.environ.get("OBSERVER_REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    nodes = [f"redis://127.0.0.1:{CLUSTER_PORT + i}/0" for i in range(CLUSTER_NODES)]
    started = not _cluster_ok(nodes[0])
    if started:
        stack.ops_stack("start", "redis-cluster")
    # every node says ok (gossip may take a moment after the first one does), with a bound
    wait_until(lambda: all(_cluster_ok(n) for n in nodes), 30, "every node of the redis-cluster")
    yield f"redis+cluster://127.0.0.1:{CLUSTER_PORT}"
    if started:
        stack.ops_stack("stop", "redis-cluster")


@pytest.fixture
def cluster(cluster_url: str, unique: str) -> Iterator[RedisCluster]:
    """A client of the cluster; every key under f"{unique}" is deleted afterwards."""
    port = int(cluster_url.rsplit(":", 1)[1])
    client = RedisCluster(host="127.0.0.1", port=port)
    yield client
    for node in client.get_primaries():
        conn = client.get_redis_connection(node)
        for key in conn.scan_iter(match=f"{unique}*", count=1000):
            conn.delete(key)
    client.close()
