"""`observer validate` and `observer replay` from outside: exit codes, stdout, stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.unit.replay_harness import BASE_FLOW, T0, ev


def observer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "observer.cli", *args], capture_output=True, text=True, timeout=60
    )


def write(
    tmp: Path, flow: str = BASE_FLOW, events: list[dict[str, object]] | None = None
) -> tuple[str, str]:
    (tmp / "flow.yaml").write_text(flow)
    lines = (
        events
        if events is not None
        else [ev("Placed", "o1", 0), ev("Paid", "o1", 1), ev("Shipped", "o1", 2)]
    )
    (tmp / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return str(tmp / "flow.yaml"), str(tmp / "events.jsonl")


def test_validate_ok_and_invalid(tmp_path: Path) -> None:
    flow, _ = write(tmp_path)
    ok = observer("validate", flow)
    assert ok.returncode == 0 and "shop v1" in ok.stderr
    text = BASE_FLOW.replace("on: pay.Paid", "on: payment.Paid")
    (tmp_path / "bad.yaml").write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "payment.Paid" in x)
    bad = observer("validate", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 2
    assert (
        f"{tmp_path / 'bad.yaml'}:{line}:" in bad.stderr
        and "unknown source 'payment'" in bad.stderr
    )
    assert "Traceback" not in bad.stderr


def test_replay_writes_json_lines_to_stdout_and_messages_to_stderr(tmp_path: Path) -> None:
    flow, events = write(tmp_path)
    res = observer("replay", flow, "--events", events)
    assert res.returncode == 0
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["topic"] for x in lines] == ["observer.outcomes"]
    assert set(lines[0]) == {"topic", "key", "value", "headers", "timestamp"}
    assert "replay:" in res.stderr


def test_replay_is_deterministic_byte_for_byte(tmp_path: Path) -> None:
    flow, events = write(
        tmp_path, events=[ev("Placed", f"o{i}", i) for i in range(4)] + [ev("Failed", "o1", 5)]
    )
    a = observer("replay", flow, "--events", events)
    b = observer("replay", flow, "--events", events)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout


def test_malformed_event_line_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    flow, events = write(tmp_path)
    with open(events, "a") as f:
        f.write('{"topic": "orders"}\n')
    res = observer("replay", flow, "--events", events)
    assert res.returncode == 2
    assert f"{events}:4:" in res.stderr and "timestamp" in res.stderr
    assert res.stdout == ""
    Path(events).write_text('{"topic": "orders", "timestamp": 1}\nnot json\n')
    res = observer("replay", flow, "--events", events)
    assert res.returncode == 2 and f"{events}:2:" in res.stderr


def test_invalid_flow_runs_nothing(tmp_path: Path) -> None:
    flow, events = write(tmp_path, flow=BASE_FLOW.replace("within: 20s", "within: soon"))
    res = observer("replay", flow, "--events", events)
    assert res.returncode == 2 and res.stdout == "" and "not a duration" in res.stderr


def test_until_accepts_iso_with_offset_and_epoch_ms(tmp_path: Path) -> None:
    flow, events = write(tmp_path, events=[ev("Placed", "o1", 0), ev("Paid", "o1", 1)])
    # shipped is due at 21s (paid 1s + 20s): --until 20.999s stops short, 21s includes it
    short = observer("replay", flow, "--events", events, "--until", str(T0 + 20_999))
    assert short.returncode == 0 and short.stdout == ""
    iso = observer("replay", flow, "--events", events, "--until", "2026-01-01T01:00:21+01:00")
    ms = observer("replay", flow, "--events", events, "--until", str(T0 + 21_000))
    assert iso.returncode == ms.returncode == 0
    assert iso.stdout == ms.stdout
    assert json.loads(iso.stdout.splitlines()[-1])["value"]["kind"] == "missing"
    bad = observer("replay", flow, "--events", events, "--until", "tomorrow")
    assert bad.returncode == 2 and "--until" in bad.stderr


def test_deploy_option_validates_up_front(tmp_path: Path) -> None:
    flow, events = write(tmp_path)
    res = observer(
        "replay", flow, "--events", events, "--deploy", f"{T0}:{tmp_path / 'missing.yaml'}"
    )
    assert res.returncode == 2 and "missing.yaml" in res.stderr and res.stdout == ""
    res = observer("replay", flow, "--events", events, "--deploy", "nonsense")
    assert res.returncode == 2
