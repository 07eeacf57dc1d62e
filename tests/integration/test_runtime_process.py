"""`observer run` and `observer status` as real processes: configuration from flags and the
environment, the start-up line, SIGTERM (exit 0, offsets committed) and SIGKILL (restart from
Redis: the deadline fires once)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.harness import Harness, make, now_ms, outcome_of

__all__ = ["make"]  # the fixture, re-used

pytestmark = pytest.mark.timeout(180)

OBSERVER = str(Path(sys.executable).with_name("observer"))


class Proc:
    """A running `observer run`, its stderr collected by a thread."""

    def __init__(self, h: Harness, *extra_args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
        env.update(
            OBSERVER_REDIS_URL=h.redis_url,
            OBSERVER_KEY_PREFIX=h.key_prefix,
            OBSERVER_ALERTS_TOPIC=h.t("alerts"),
            OBSERVER_OUTCOMES_TOPIC=h.t("outcomes"),
            OBSERVER_DLQ_TOPIC=h.t("dlq"),
            OBSERVER_HTTP_HOST="127.0.0.1",
            OBSERVER_IDLE_GRACE_MS="200",
            OBSERVER_TICK_INTERVAL_MS="20",
            OBSERVER_COMMIT_INTERVAL_MS="50",
            OBSERVER_GROUP_ID="not-this-one",  # the flag below wins
            OBSERVER_KAFKA_SESSION_TIMEOUT_MS="6000",
            OBSERVER_KAFKA_SASL_PASSWORD="never-logged",  # ignored by PLAINTEXT, must not leak
        )
        args = [
            OBSERVER,
            "run",
            str(h.flow_file),
            "--bootstrap-servers",
            h.bootstrap,
            "--group-id",
            f"{h.prefix}-observer",
            "--http-port",
            "0",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_port()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def _wait_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in self.lines:
                m = re.search(r"observer run: .* http on [0-9.]+:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    self._wait_ready(port)
                    return port
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("observer run did not start:\n" + "".join(self.lines))

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("observer never became ready:\n" + "".join(self.lines))

    def api(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def signal(self, sig: int, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    @property
    def log(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def committed(h: Harness, topics: list[str]) -> tuple[list[int], list[int]]:
    c = Consumer({"bootstrap.servers": h.bootstrap, "group.id": f"{h.prefix}-observer"})
    try:
        parts = [TopicPartition(h.t(t), p) for t in topics for p in (0, 1)]
        done = [p.offset if p.offset >= 0 else 0 for p in c.committed(parts, timeout=10)]
        ends = [c.get_watermark_offsets(p, timeout=10)[1] for p in parts]
    finally:
        c.close()
    return done, ends


def test_run_process_publishes_answers_status_and_exits_0_on_sigterm_with_offsets_committed(
    make: Callable[..., Harness], procs: list[Proc]
) -> None:
    h = make(pay_window="30s")
    p = Proc(h)
    procs.append(p)
    banner = next(line for line in p.lines if "observer run:" in line)
    assert (
        f"group {h.prefix}-observer" in banner
        and h.t("orders") in banner
        and h.t("alerts") in banner
    )
    assert "never-logged" not in p.log
    t = now_ms()
    h.send("Placed", "s1", t)
    h.send("Paid", "s1", t + 100)
    h.send("Shipped", "s1", t + 200)
    h.send("Placed", "s2", t)  # stays open: "where is my order?"
    assert outcome_of(h, "s1")["outcome"] == "completed"
    h.wait_for(lambda: p.api("/instances/shop/s2").status_code == 200, message="s2 stored")

    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env["OBSERVER_KEY_PREFIX"] = h.key_prefix
    text = subprocess.run(
        [OBSERVER, "status", "shop", "s2", "--redis-url", h.redis_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("shop s2: open (version 1, path main)")
    assert (
        re.search(r"paid\s+waiting .*deadline", text.stdout) and "pending deadlines:" in text.stdout
    )
    js = subprocess.run(
        [OBSERVER, "status", "shop", "s2", "--redis-url", h.redis_url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    view = orjson.loads(js.stdout)
    assert view == p.api("/instances/shop/s2").json()
    gone = subprocess.run(
        [OBSERVER, "status", "shop", "nobody", "--redis-url", h.redis_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert gone.returncode == 1 and "no instance" in gone.stderr

    assert p.signal(signal.SIGTERM) == 0, p.log
    assert "stopped" in p.log and "Traceback" not in p.log
    done, ends = committed(h, ["orders", "pay", "ship"])
    assert done == ends and sum(ends) == 4


def test_killed_process_restarts_from_redis_and_the_deadline_fires_once(
    make: Callable[..., Harness], procs: list[Proc]
) -> None:
    h = make(pay_window="3s")
    p = Proc(h)
    procs.append(p)
    t = now_ms()
    h.send("Placed", "k1", t)  # its payment never comes
    h.send("Placed", "k2", t)  # paid after the crash
    h.wait_for(
        lambda: all(p.api(f"/instances/shop/{k}").status_code == 200 for k in ("k1", "k2")),
        message="stored",
    )
    p.signal(signal.SIGKILL)
    p2 = Proc(h)
    procs.append(p2)
    h.send("Paid", "k2", t + 500)
    h.send("Shipped", "k2", t + 600)
    assert outcome_of(h, "k2")["outcome"] == "completed"
    alert = h.wait_for(lambda: h.alerts("missing"), timeout=20, message="missing k1")[0]
    assert alert.key == b"k1"
    h.clock_passed(now_ms())  # the deadline does not fire again after the restart
    assert [a.oid for a in h.alerts()] == [alert.oid] and len(h.out("cmds")) == 1
    assert p2.signal(signal.SIGINT) == 0, p2.log


def test_invalid_flows_and_settings_exit_2_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow: x\nversion: 1\nsources: {}\nsteps: []\n")
    res = subprocess.run([OBSERVER, "run", str(bad)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and str(bad) in res.stderr and "Traceback" not in res.stderr
    env = {**os.environ, "OBSERVER_HTTP_PORT": "http"}
    res = subprocess.run(
        [OBSERVER, "run", str(bad)], env=env, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 2 and "OBSERVER_HTTP_PORT" in res.stderr
