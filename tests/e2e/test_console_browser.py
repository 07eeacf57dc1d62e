"""The web console in a real browser (Playwright driving Debian's chromium, `ops/browser`) while
a workload runs through a real `observer run` on the real stack: the flow page draws one node
per step and its numbers change without a reload; a search finds an instance and shows its
timeline; the alerts page lists the workload's `missing` alerts. Screenshots go to
tests/e2e/screenshots/ (not committed; docs/console.png is one of them)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from observer.flows.compiler import load_registry
from tests.e2e.conftest import ObserverProcesses, observer_env

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
TOKEN = "e2e-console-token-0123456789abcdef"

FLOW = """
flow: shipment
version: 1
key: order_id
sources:
  orders: {{topic: {p}-orders, type: value.type, key: value.id}}
  pay: {{topic: {p}-pay, type: value.type, key: value.id}}
  wh: {{topic: {p}-wh, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 3s
    if_missing:
      do: [cancel]
      then: cancelled
  - step: packed
    on: wh.Packed
    within: 5s
  - step: shipped
    on: wh.Shipped
    within: 5s
errors:
  - on: pay.Failed
    do: [cancel]
    then: cancelled
paths:
  cancelled:
    outcome: cancelled
    steps:
      - step: cancel_confirmed
        on: orders.Cancelled
        within: 5s
slo: {{objective: 99%, within: 10s, window: 1d}}
retain: 5m
actions:
  cancel:
    publish: {{topic: {p}-cmds, key: "{{{{ order_id }}}}", value: {{type: Cancel, id: "{{{{ order_id }}}}"}}}}
"""


class Workload:
    """Orders placed every 100 ms; each is paid, packed and shipped 300 ms apart (event time
    and wall clock alike), except every fourth, which is never paid (a `missing` after 3 s,
    then the cancelled path, confirmed for half of them)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.prefix = prefix
        self.placed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="console-workload")
        self._due: list[tuple[float, str, str, str]] = []  # (at, topic, type, key)

    def _send(self, topic: str, kind: str, key: str) -> None:
        value = orjson.dumps({"type": kind, "id": key})
        self.producer.produce(f"{self.prefix}-{topic}", value, key.encode())

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            key = f"o-{self.placed:04d}"
            self._send("orders", "Placed", key)
            if self.placed % 4 != 3:
                self._due += [
                    (now + 0.3, "pay", "Paid", key),
                    (now + 0.6, "wh", "Packed", key),
                    (now + 0.9, "wh", "Shipped", key),
                ]
            elif self.placed % 8 == 3:
                self._due.append((now + 4.0, "orders", "Cancelled", key))
            self.placed += 1
            ready = [d for d in self._due if d[0] <= now]
            self._due = [d for d in self._due if d[0] > now]
            for _, topic, kind, k in ready:
                self._send(topic, kind, k)
            self.producer.poll(0)
            self._stop.wait(0.1)
        self.producer.flush(10)

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by ops/browser when missing."""
    done = subprocess.run(
        [str(REPO / "ops" / "browser")], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"ops/browser failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def browser_page(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def _numbers(page: Any) -> str:
    return str(
        page.eval_on_selector_all(
            "svg.flow tspan.num", "els => els.map(e => e.textContent).join(',')"
        )
    )


def test_the_console_draws_the_flow_live_and_finds_an_instance(
    stack: Any,
    unique: str,
    create_topics: Any,
    observer_procs: ObserverProcesses,
    browser_page: Any,
    tmp_path: Path,
) -> None:
    create_topics([f"{unique}-{t}" for t in ("orders", "pay", "wh")], partitions=2)
    create_topics([f"{unique}-{t}" for t in ("alerts", "outcomes", "dlq", "cmds")], partitions=1)
    flow = tmp_path / "shipment.yaml"
    flow.write_text(FLOW.format(p=unique))
    steps = [s.name for s in load_registry([flow]).newest("shipment").steps]
    env = observer_env(
        stack,
        unique,
        OBSERVER_HTTP_TOKEN=TOKEN,
        OBSERVER_SHARDS="4",
        OBSERVER_STATE_BUCKETS="8",
        OBSERVER_IDLE_GRACE_MS="300",
        OBSERVER_CONSOLE_REFRESH_MS="1000",
    )
    proc = observer_procs.start("console", flow, env)
    SHOTS.mkdir(exist_ok=True)
    page = browser_page
    base = f"http://127.0.0.1:{proc.port}/console"

    with Workload(stack.bootstrap_servers, unique) as work:
        # the page asks for the token once (the API answered 401), then draws the flow
        page.goto(f"{base}#/flow/shipment")
        page.fill("#login-token", TOKEN)
        page.click("#login-form button")
        page.wait_for_selector("svg.flow g.node.step")
        drawn = page.eval_on_selector_all(
            "svg.flow g.node.step", "els => els.map(e => e.dataset.step)"
        )
        assert sorted(drawn) == sorted(steps)

        # numbers arrive and change while the workload runs, without a reload
        page.wait_for_function(
            "() => [...document.querySelectorAll('g.node.step[data-step=placed] tspan.num')]"
            ".some(e => /^[1-9]/.test(e.textContent))"
        )
        first = _numbers(page)
        deadline = time.monotonic() + 30
        while _numbers(page) == first:
            assert time.monotonic() < deadline, f"the numbers never changed: {first}"
            page.wait_for_timeout(250)
        # an unpaid order's `missing` shows on its node, and the cancelled path fills up
        page.wait_for_function(
            "() => /^[1-9]/.test(document.querySelector("
            "'g.node.step[data-step=paid] tspan.num[data-field=missing]').textContent)",
            timeout=30_000,
        )
        page.click("g.node.step[data-step=paid]")
        page.wait_for_selector("#waiting h2")
        page.screenshot(path=str(SHOTS / "console-flow.png"), full_page=True)

        # "where is my order?": the search finds an instance and shows its timeline
        page.select_option("#search-flow", "shipment")
        page.fill("#search-key", "o-0001")
        page.click("#search button[type=submit]")
        page.wait_for_selector("#timeline li.event")
        page.wait_for_function("() => document.querySelectorAll('#timeline li.event').length >= 4")
        head = page.inner_text("#instance-head")
        assert head.startswith("shipment o-0001: ended") and "outcome completed" in head
        text = page.inner_text("#timeline")
        assert all(s in text for s in ("placed", "paid", "packed", "shipped"))
        page.screenshot(path=str(SHOTS / "console-instance.png"), full_page=True)

        # an unpaid one: its deviation and the command published with its observer-id
        page.fill("#search-key", "o-0003")
        page.click("#search button[type=submit]")
        page.wait_for_selector("#timeline li.deviation")
        assert "observer_id" in page.inner_text("#timeline")

        # one never paid nor cancelled stays open: its page says where it waits
        stuck = max(i for i in range(work.placed) if i % 8 == 7)
        page.fill("#search-key", f"o-{stuck:04d}")
        page.click("#search button[type=submit]")
        where = page.inner_text("#where-now")
        assert where.startswith("Waiting at ") and ("paid" in where or "cancel_confirmed" in where)

        # the alerts page lists the workload's alerts, filtered by kind
        page.goto(f"{base}#/alerts?kind=missing")
        page.wait_for_selector("#alerts tbody tr")
        kinds = page.eval_on_selector_all(
            "#alerts tbody tr td:nth-child(3)", "els => els.map(e => e.textContent)"
        )
        assert kinds and set(kinds) == {"missing"}
        page.screenshot(path=str(SHOTS / "console-alerts.png"), full_page=True)

        page.goto(f"{base}#/")
        page.wait_for_selector("#flows tr[data-flow=shipment]")
        assert work.placed > 0
        page.screenshot(path=str(SHOTS / "console-flows.png"), full_page=True)
