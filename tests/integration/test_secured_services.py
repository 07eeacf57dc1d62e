"""`observer run` against what a production cluster has: Kafka over SASL_SSL (SCRAM-SHA-512,
TLS) and Redis with TLS, client certificates and an ACL user (`ops/stack start secure`,
started once per test session and stopped at its end when this session started it).

End to end: a flow runs through both, the redis-py side (ops API, `observer status`, the lease)
reads the same TLS/ACL Redis, the ops API wants its token, and no password reaches the log.
Misconfigurations: a wrong Kafka password, a wrong Redis password, a Kafka certificate and a
Redis certificate the client does not trust each end `observer run` at start with exit 2 and one
clear line, not a retry loop and not a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from observer.adapters.redis.lease import RedisLease
from observer.redis_settings import parse_redis_url

from .conftest import OPS_STACK
from .kafka_helpers import wait_for_topics

pytestmark = pytest.mark.timeout(180)

OBSERVER = str(Path(sys.executable).with_name("observer"))
TOKEN = "t0ken-for-the-secured-test-" + uuid.uuid4().hex
FAIL_WITHIN_S = 30  # a refused start ends well before this


@dataclass(frozen=True)
class Secured:
    """Where the secured services are and the client settings ops/stack wrote for them."""

    values: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def kafka(self, user: str = "observer", password: str | None = None) -> dict[str, Any]:
        """librdkafka settings of a client of the secured broker."""
        return {
            "bootstrap.servers": self["SECURE_KAFKA_BOOTSTRAP"],
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password or self["SECURE_KAFKA_PASSWORD"],
            "ssl.ca.location": self["SECURE_CA"],
        }

    def observer_env(self, **over: str) -> dict[str, str]:
        """The environment of an `observer run` on the secured services."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
        env.update(
            {
                "OBSERVER_" + "KAFKA_" + k.upper().replace(".", "_"): v
                for k, v in self.kafka().items()
                if k != "bootstrap.servers"
            }
        )
        env.update(
            OBSERVER_BOOTSTRAP_SERVERS=self["SECURE_KAFKA_BOOTSTRAP"],
            OBSERVER_REDIS_URL=self["SECURE_REDIS_URL"],
            OBSERVER_HTTP_PORT="0",
            OBSERVER_IDLE_GRACE_MS="200",
            OBSERVER_COMMIT_INTERVAL_MS="50",
        )
        env.update(over)
        return env

    def redis_url(self, *, password: str | None = None, ca: str | None = None) -> str:
        """The secured Redis URL, with another password or CA file."""
        url = self["SECURE_REDIS_URL"]
        if password is not None:
            url = url.replace(f":{self['SECURE_REDIS_PASSWORD']}@", f":{password}@")
        if ca is not None:
            url = url.replace(f"ssl_ca_certs={self['SECURE_CA']}", f"ssl_ca_certs={ca}")
        return url


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[name] = value.strip("'")
    return values


def _ops_stack(*args: str) -> str:
    done = subprocess.run(
        [str(OPS_STACK), *args],
        env={**os.environ, "OBSERVER_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"ops/stack {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


@pytest.fixture(scope="session")
def secured() -> Iterator[Secured]:
    """`ops/stack start secure` (a no-op for what runs already); `stop secure` afterwards, for
    what this fixture started."""
    status = subprocess.run(
        [str(OPS_STACK), "status", "secure"], capture_output=True, text=True, check=False
    )
    running = {
        s for s in ("secure-kafka", "secure-redis") if re.search(rf"^{s}\s+up", status.stdout, re.M)
    }
    _ops_stack("start", "secure")
    state = Path(
        os.environ.get("OBSERVER_STACK_DIR")
        or Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "observer-stack"
    )
    yield Secured(_read_env_file(state / "secure" / "client.env"))
    for service in ("secure-kafka", "secure-redis"):
        if service not in running:
            _ops_stack("stop", service)


# -- Kafka clients on the secured broker --------------------------------------------------------


def create_topics(s: Secured, names: list[str], partitions: int = 2) -> None:
    admin = AdminClient(s.kafka())
    for future in admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
    ).values():
        future.result(30)
    wait_for_topics(admin, names, partitions, timeout=30)


def produce(s: Secured, topic: str, key: str, value: dict[str, Any]) -> None:
    producer = Producer(s.kafka())
    producer.produce(topic, key=key, value=orjson.dumps(value))
    assert producer.flush(10) == 0


def read_until(s: Secured, topic: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The JSON values of `topic` from the beginning, once there are `count` (or the time is up)."""
    consumer = Consumer(
        {**s.kafka(), "group.id": f"read-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append(orjson.loads(msg.value() or b"null"))
        return got
    finally:
        consumer.close()


# -- observer run -------------------------------------------------------------------------------

FLOW = """\
flow: secured
version: 1
sources:
  orders: {topic: P.orders, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: orders.Paid
    within: 1s
"""


def write_flow(tmp_path: Path, prefix: str) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    path = folder / "secured.yaml"
    path.write_text(FLOW.replace("P.", f"{prefix}."))
    return folder


def start_refused(env: dict[str, str], flows: Path) -> tuple[int, list[str], float]:
    """Runs `observer run` expecting it to stop by itself; (exit code, stderr lines, seconds)."""
    started = time.monotonic()
    done = subprocess.run(
        [OBSERVER, "run", str(flows)],
        env=env,
        capture_output=True,
        text=True,
        timeout=FAIL_WITHIN_S,
        check=False,
    )
    return done.returncode, done.stderr.splitlines(), time.monotonic() - started


def test_observer_runs_a_flow_through_sasl_ssl_kafka_and_tls_acl_redis(
    secured: Secured, tmp_path: Path
) -> None:
    prefix = f"sec{uuid.uuid4().hex[:8]}"
    topics = [f"{prefix}.{t}" for t in ("orders", "alerts", "outcomes", "dlq")]
    create_topics(secured, topics)
    flows = write_flow(tmp_path, prefix)
    env = secured.observer_env(
        OBSERVER_GROUP_ID=f"{prefix}-observer",
        OBSERVER_KEY_PREFIX=f"{prefix}:obs",
        OBSERVER_ALERTS_TOPIC=topics[1],
        OBSERVER_OUTCOMES_TOPIC=topics[2],
        OBSERVER_DLQ_TOPIC=topics[3],
        OBSERVER_HTTP_TOKEN=TOKEN,
    )
    proc = subprocess.Popen(
        [OBSERVER, "run", str(flows)], env=env, stderr=subprocess.PIPE, text=True
    )
    log: list[str] = []
    try:
        assert proc.stderr is not None
        port = 0
        deadline = time.monotonic() + 60
        while not port and time.monotonic() < deadline:
            line = proc.stderr.readline()
            log.append(line)
            if m := re.search(r"observer run: .* http on 127\.0\.0\.1:(\d+) \(bearer token", line):
                port = int(m.group(1))
            assert line or proc.poll() is None, "".join(log)
        assert port, "".join(log)
        api = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        produce(secured, topics[0], "o1", {"type": "Placed", "id": "o1"})
        produce(secured, topics[0], "o2", {"type": "Placed", "id": "o2"})
        produce(secured, topics[0], "o2", {"type": "Paid", "id": "o2"})
        alerts = read_until(secured, topics[1], 1)
        outcomes = read_until(secured, topics[2], 1)
        assert [(a["key"], a["kind"], a["step"]) for a in alerts] == [("o1", "missing", "paid")]
        assert [(o["key"], o["outcome"]) for o in outcomes] == [("o2", "completed")]

        # The ops API reads the same TLS/ACL Redis through redis-py, behind its token.
        assert httpx.get(f"{api}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{api}/instances/secured/o1", timeout=5).status_code == 401
        view = httpx.get(f"{api}/instances/secured/o1", headers=auth, timeout=5).json()
        assert view["deviations"][0]["kind"] == "missing"
        flows_view = httpx.get(f"{api}/flows", headers=auth, timeout=5).json()
        assert flows_view[0]["versions"][0]["file"] == "secured.yaml"

        status = subprocess.run(
            [OBSERVER, "status", "secured", "o2", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert orjson.loads(status.stdout)["outcome"] == "completed"
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
        log.append(rest)
    text = "".join(log)
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    for secret in ("SECURE_KAFKA_PASSWORD", "SECURE_REDIS_PASSWORD"):
        assert secured[secret] not in text
    assert TOKEN not in text
    assert f"rediss://observer:***@{secured['SECURE_KAFKA_BOOTSTRAP'].split(':')[0]}" in text


def test_the_lease_of_direct_routing_uses_the_same_tls_and_acl_settings(secured: Secured) -> None:
    settings = parse_redis_url(secured["SECURE_REDIS_URL"])
    key = f"sec{uuid.uuid4().hex[:8]}:lease"
    lease = RedisLease(settings, key, "me", 5_000)
    try:
        assert lease.acquire() is None
        assert RedisLease(settings, key, "other", 5_000).acquire() == "me"
        lease.release()
    finally:
        lease.close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong Kafka password", r"^Kafka refused the login: .*SASL authentication"),
        ("untrusted Kafka certificate", r"^TLS with Kafka failed: .*certificate verify failed"),
        (
            "wrong Redis password",
            r"^Redis at rediss://127\.0\.0\.1:\d+/0 refused access: WRONGPASS",
        ),
        (
            "untrusted Redis certificate",
            r"^Redis at rediss://127\.0\.0\.1:\d+/0: its TLS certificate is not trusted",
        ),
    ],
)
def test_a_refused_start_is_one_clear_error_and_exit_2(
    secured: Secured, tmp_path: Path, case: str, expected: str
) -> None:
    over = {
        "wrong Kafka password": {"OBSERVER_KAFKA_SASL_PASSWORD": "not-the-password"},
        "untrusted Kafka certificate": {
            "OBSERVER_KAFKA_SSL_CA_LOCATION": secured["SECURE_OTHER_CA"]
        },
        "wrong Redis password": {"OBSERVER_REDIS_URL": secured.redis_url(password="wrong")},
        "untrusted Redis certificate": {
            "OBSERVER_REDIS_URL": secured.redis_url(ca=secured["SECURE_OTHER_CA"])
        },
    }[case]
    flows = write_flow(tmp_path, f"sec{uuid.uuid4().hex[:8]}")
    rc, lines, took = start_refused(secured.observer_env(**over), flows)
    assert rc == 2, lines
    assert len([line for line in lines if line.strip()]) == 1, lines
    assert re.search(expected, lines[0]), lines
    assert took < FAIL_WITHIN_S
    for secret in ("SECURE_KAFKA_PASSWORD", "SECURE_REDIS_PASSWORD"):
        assert secured[secret] not in lines[0]
