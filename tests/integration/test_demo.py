"""`python -m demo` end to end: the simulated shop on the real broker, a real
`observer run` child process on the real Redis, and the summary saying every injected fault
was detected and every order got what the engine publishes over the run's own records. The
reference flow runs with its topics renamed to this test's own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from .conftest import Stack

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = REPO / "flows" / "checkout.yaml"


@pytest.fixture
def flow_file(tmp_path: Path, unique: str, admin: AdminClient) -> Iterator[Path]:
    """flows/checkout.yaml with every topic under `unique`; the topics the demo creates are
    deleted afterwards."""
    text = CHECKOUT.read_text()
    topics = sorted(set(re.findall(r"^\s*topic:\s*([\w.-]+)\s*$", text, flags=re.M)))
    assert topics, "no topics found in flows/checkout.yaml"
    for t in topics:
        text = re.sub(rf"(topic:\s*){re.escape(t)}\b", rf"\g<1>{unique}.{t}", text)
    path = tmp_path / "checkout.yaml"
    path.write_text(text)
    yield path
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{unique}.")]
    if mine:
        for fut in admin.delete_topics(mine, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result(30)


def _run_demo(
    stack: Stack, unique: str, flow_file: Path, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m demo --plain ARGS` on the test's stack, topics and key prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update(
        OBSERVER_ALERTS_TOPIC=f"{unique}.observer.alerts",
        OBSERVER_OUTCOMES_TOPIC=f"{unique}.observer.outcomes",
        OBSERVER_DLQ_TOPIC=f"{unique}.observer.dlq",
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            "--plain",
            *args,
            "--flow",
            str(flow_file),
            "--bootstrap-servers",
            stack.bootstrap_servers,
            "--redis-url",
            stack.redis_url,
            "--key-prefix",
            unique,  # the redis_client fixture removes what is left under it
            "--run-dir",
            str(tmp_path / "run"),
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )


def test_every_injected_fault_is_detected(
    stack: Stack, unique: str, flow_file: Path, tmp_path: Path, redis_client: redis.Redis
) -> None:
    summary_file = tmp_path / "summary.json"
    done = _run_demo(
        stack, unique, flow_file, tmp_path, "--orders", "20", "--seed", "7", "--rate", "5"
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}\n" + _log(tmp_path)
    assert "Traceback" not in done.stderr

    summary = json.loads(summary_file.read_text())
    assert summary["orders"] == 20
    by_fault = summary["by_fault"]
    # seed 7 with the default rates: every fault twice, ten clean orders
    assert {k: v["injected"] for k, v in by_fault.items()} == {
        "slow_payment": 2,
        "lost_event": 2,
        "payment_failure": 2,
        "duplicate": 2,
        "out_of_order": 2,
        "none": 10,
    }
    for fault, r in by_fault.items():
        assert r["detected"] == r["injected"], (fault, r)
        assert r["as_expected"] == r["injected"], (fault, r)
        assert r["false_alarms"] == 0, (fault, r)
    assert by_fault["none"]["outcomes"] == {"completed": 10}
    assert by_fault["duplicate"]["outcomes"] == {"completed": 2}
    assert by_fault["out_of_order"]["outcomes"] == {"completed": 2}
    assert by_fault["payment_failure"]["outcomes"] == {"compensated": 2}
    assert summary["all_detected"] and summary["ok"]
    # what was expected is the engine's answer over the records the shop published
    assert by_fault["slow_payment"]["expected"].startswith("warning, missing, late at paid -> ")
    assert by_fault["none"]["expected"] == "no alert -> completed"
    timeline = (tmp_path / "run" / "timeline.jsonl").read_text().splitlines()
    assert len({json.loads(line)["key"] for line in timeline}) == 20
    assert summary["expected_until"]

    # the plain log: one line per alert, outcome and command, and the verdict
    assert len(re.findall(r" OUTCOME ", out)) == 20
    assert re.search(r" ALERT +\S+ +late +paid ", out)
    assert re.search(r" ALERT +\S+ +missing +transport_booked ", out)
    assert re.search(r" COMMAND +\S+ +ReleaseStock ", out)
    assert "RESULT: every injected fault was detected" in out
    assert re.search(
        r"^expected = observer replay .* --events .*timeline\.jsonl --until ", out, re.M
    )


def _log(tmp_path: Path) -> str:
    log = tmp_path / "run" / "observer.log"
    return log.read_text()[-4000:] if log.exists() else "(no observer log)"


def test_an_outage_opens_an_incident_and_holds_actions(
    stack: Stack, unique: str, flow_file: Path, tmp_path: Path, redis_client: redis.Redis
) -> None:
    """payments down 18 s from 1 s: the flow (no guardrails of its own) runs as a guarded
    copy; one incident per (kind, step) opens and resolves, the orders' compensations are held
    in Redis and never published, and all of it is what the engine does (about 35 s)."""
    no_faults = [f"--{name}" for name in ("slow-payments", "lost-events", "payment-failures")]
    no_faults += ["--duplicates", "--out-of-orders"]
    done = _run_demo(
        stack,
        unique,
        flow_file,
        tmp_path,
        "--orders",
        "10",
        "--seed",
        "7",
        "--rate",
        "3",
        "--outage",
        "payments:18s@1s",
        *[arg for flag in no_faults for arg in (flag, "0")],
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}\n" + _log(tmp_path)
    assert "has no guardrails: the observer runs a copy" in out
    assert (tmp_path / "run" / "checkout.guarded.yaml").exists()

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and summary["incidents_ok"], out
    assert summary["outage_hit"] == summary["by_fault"]["outage"]["as_expected"] > 0
    opened = {(i["deviation"], i["step"]) for i in summary["incidents"] if i["kind"] == "incident"}
    resolved = {
        (i["deviation"], i["step"])
        for i in summary["incidents"]
        if i["kind"] == "incident_resolved"
    }
    assert ("missing", "paid") in opened and opened == resolved
    assert summary["held"] == summary["held_expected"] > 0
    # held, not published: no order with a held CancelOrder was cancelled by the observer
    assert len(re.findall(r" INCIDENT ", out)) == len(summary["incidents"])
    assert summary["commands"].get("CancelOrder", 0) == 4  # only those before the incident

    # the printed command works as printed, and lists what the summary counts
    line = next(
        ln.strip() for ln in out.splitlines() if ln.strip().startswith("observer actions list")
    )
    argv = shlex.split(line)
    listed = subprocess.run(
        [sys.executable, "-m", "observer.cli", *argv[1:], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    held = [json.loads(x) for x in listed.stdout.splitlines()]
    assert len(held) == summary["held"]
    assert {h["action"] for h in held} >= {"cancel_order", "release_stock"}
    assert all(h["reason"] == "incident" for h in held)
