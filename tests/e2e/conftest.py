"""Fixtures for tests that run real `observer run` processes against the real stack.

The stack fixtures (`stack`, `unique`, `admin`, `redis_client`, `create_topics`, `cluster_url`,
`cluster`) are the integration ones, imported from tests/integration/conftest.py (see there).
Here:

- `observer_env`: the whole environment of a test's `observer run`: the stack, names under the
  test's `unique` prefix, then the test's own settings.

- `ObserverProcess`: one `observer run` subprocess, its stderr collected by a thread (each
  line with when it was read), its ops API port read from the start-up line, and what it owns
  at a given moment (from its log).
- `coverage_restored`: when the processes alive together owned every shard and every source
  partition again after a moment (a kill): the recovery figures of the failover tests.
- `observer_procs` (function): the test's processes (`ObserverProcesses`, a list):
  `observer_procs.start(name, flow, env, *args)` starts one, lists it and waits until it is
  ready (`ready=False`: not), `start_all(names, ...)` starts several side by side; every one
  still running at the end is stopped by its pid (SIGTERM, then SIGKILL), also when the test
  fails.
- `figures` (function): lines a test records; they are printed in pytest's terminal summary
  (section "e2e figures"), so a passing run shows them too.

Every test collected under tests/e2e/ gets the `e2e` and `integration` markers (it needs the
stack; `-m "not integration"` leaves it out like the other stack tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    Stack,
    admin,
    cluster,
    cluster_url,
    create_topics,
    redis_client,
    stack,
    unique,
)

__all__ = [
    "OBSERVER",
    "ObserverProcess",
    "ObserverProcesses",
    "admin",
    "cluster",
    "cluster_url",
    "coverage_restored",
    "create_topics",
    "figures",
    "observer_env",
    "observer_procs",
    "redis_client",
    "stack",
    "unique",
]

HERE = Path(__file__).resolve().parent
OBSERVER = str(Path(sys.executable).with_name("observer"))
_FIGURES = pytest.StashKey[list[tuple[str, list[str]]]]()
# what `observer run` logs when a stage's assignment changes (runtime/loop.py, runtime/router.py)
_TRACKER = re.compile(r"tracker: (assigned|revoked|lost) shards ([0-9, ]*)")
_ROUTER = re.compile(r"router: (assigned|revoked|lost) ((?:[\w.-]+\[\d+\](?:, )?)+)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    recorded = terminalreporter.config.stash.get(_FIGURES, [])
    if not any(lines for _, lines in recorded):
        return
    terminalreporter.section("e2e figures")
    for nodeid, lines in recorded:
        if not lines:
            continue
        terminalreporter.write_line(nodeid)
        for line in lines:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines to show in the terminal summary (append to the list; printed even on success)."""
    lines: list[str] = []
    request.config.stash.setdefault(_FIGURES, []).append((request.node.nodeid, lines))
    return lines


def observer_env(stack: Stack, unique: str, **settings: str | None) -> dict[str, str]:
    """The whole environment of a test's `observer run`: this process's without any OBSERVER_
    variable of the shell, the test stack (Kafka, Redis), the group, key prefix and output
    topics named under `unique` (`<unique>-observer`, `<unique>:state`, `<unique>-alerts`,
    `-outcomes`, `-dlq`; the test creates the topics it reads), the ops API on loopback; then
    `settings` (full names, e.g. OBSERVER_SHARDS="8"; None leaves a default out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update(
        OBSERVER_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
        OBSERVER_REDIS_URL=stack.redis_url,
        OBSERVER_GROUP_ID=f"{unique}-observer",
        OBSERVER_KEY_PREFIX=f"{unique}:state",  # removed after the test by `redis_client`
        OBSERVER_ALERTS_TOPIC=f"{unique}-alerts",
        OBSERVER_OUTCOMES_TOPIC=f"{unique}-outcomes",
        OBSERVER_DLQ_TOPIC=f"{unique}-dlq",
        OBSERVER_HTTP_HOST="127.0.0.1",
    )
    for name, value in settings.items():
        assert name.startswith("OBSERVER_"), name
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class ObserverProcess:
    """A running `observer run FLOW --http-port 0 ARGS` with `env` as its whole environment."""

    def __init__(self, name: str, flow: Path, env: dict[str, str], *args: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.read_at: list[float] = []  # when each line was read (time.monotonic())
        self.port: int | None = None
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [OBSERVER, "run", str(flow), "--http-port", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"{name}-stderr")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.read_at.append(time.monotonic())
            self.lines.append(line)

    def owned(self, at: float) -> tuple[set[int], set[str]]:
        """The shards (tracker) and source partitions (router, as `topic[p]`) this process
        owned at `at` (time.monotonic()), from its log."""
        shards: set[int] = set()
        parts: set[str] = set()
        for t, line in zip(list(self.read_at), list(self.lines), strict=False):
            if t > at:
                break
            if m := _TRACKER.search(line):
                got = {int(s) for s in m.group(2).split(",") if s.strip()}
                shards = shards | got if m.group(1) == "assigned" else shards - got
            elif m := _ROUTER.search(line):
                tps = set(m.group(2).split(", "))
                parts = parts | tps if m.group(1) == "assigned" else parts - tps
        return shards, parts

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 90) -> None:
        """Until the start-up line names the port and GET /readyz answers 200; raises with the
        log otherwise."""
        deadline = time.monotonic() + timeout
        while self.port is None:
            for line in list(self.lines):
                m = re.search(r"observer run: .* http on [0-9.]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    break
            else:
                if not self.running():
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} did not start in {timeout}s:\n{self.tail()}")
                time.sleep(0.05)
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.running():
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never became ready:\n{self.tail()}")
            time.sleep(0.1)

    def kill(self) -> int:
        """SIGKILL by pid; returns the exit status once reaped."""
        os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(30)
        self._reader.join(5)
        return rc

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM by pid, SIGKILL after `timeout` s; returns the exit status."""
        if self.running():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._reader.join(5)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    @property
    def log(self) -> str:
        return "".join(self.lines)


def coverage_restored(
    alive: list[ObserverProcess], since: float, shards: int, partitions: int, timeout: float
) -> float | None:
    """Seconds from `since` (time.monotonic()) to the first moment the processes `alive`
    together owned all `shards` and all `partitions` source partitions, waiting up to
    `timeout` s for it; None if they did not."""
    deadline = since + timeout
    while True:
        moments = sorted({since, *(t for p in alive for t in list(p.read_at) if t >= since)})
        for t in moments:
            owned_shards: set[int] = set()
            owned_parts: set[str] = set()
            for p in alive:
                s, r = p.owned(t)
                owned_shards |= s
                owned_parts |= r
            if len(owned_shards) == shards and len(owned_parts) == partitions:
                return t - since
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


class ObserverProcesses(list[ObserverProcess]):
    """The `observer run` processes of a test (the `observer_procs` fixture stops those still
    running at the end). A process is listed before it is waited for, so a start that fails
    leaves nothing running."""

    def start(
        self, name: str, flow: Path, env: dict[str, str], *args: str, ready: bool = True
    ) -> ObserverProcess:
        """Starts `observer run FLOW ARGS` with `env`; waits until it is ready unless told."""
        p = ObserverProcess(name, flow, env, *args)
        self.append(p)
        if ready:
            p.wait_ready()
        return p

    def start_all(
        self, names: Sequence[str], flow: Path, env: dict[str, str], *args: str
    ) -> list[ObserverProcess]:
        """One process per name, all started before any is waited for (they start up side
        by side); returns them once each is ready."""
        procs = [self.start(name, flow, env, *args, ready=False) for name in names]
        for p in procs:
            p.wait_ready()
        return procs


@pytest.fixture
def observer_procs(create_topics: object, redis_client: object) -> Iterator[ObserverProcesses]:
    """Processes to stop at the end (set up after the topics and the Redis cleanup, so stopped
    before those are torn down)."""
    started = ObserverProcesses()
    yield started
    for p in started:
        if p.running():
            os.kill(p.pid, signal.SIGTERM)
    for p in started:
        try:
            p.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.proc.wait(15)
