"""Versions kept with the state and hot reload (contract §8) in-process against the real
broker and redis-server: v1's open instances finish on v1's windows and actions after a
restart given only v2; a flow file changed while running is live within seconds; an invalid
change changes nothing. (Two processes and `observer deploy`: tests/e2e/test_versions.py.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from tests.integration.harness import FLOW, Harness, make, now_ms, outcome_of

pytestmark = pytest.mark.timeout(120)

__all__ = ["make"]

V2 = (
    FLOW.replace("version: 1", "version: 2")
    .replace("within: PAY_WINDOW", "within: 20s")
    .replace("value: {type: Cancel,", "value: {type: CancelV2,")
)


def version_of(h: Harness, key: str) -> int | None:
    r = h.api(f"/instances/shop/{key}")
    return r.json()["version"] if r.status_code == 200 else None


def test_v1_instances_finish_on_v1_after_a_restart_with_only_v2(
    make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Placed", "o1", t)
    h.send("Placed", "o2", t)
    h.wait_for(lambda: version_of(h, "o1") == 1 and version_of(h, "o2") == 1, message="v1 open")
    h.stop()

    h.flow_file = h.flow_file.with_name("shop-v2.yaml")  # the v1 file is not passed again
    h.flow_file.write_text(V2.replace("P.", f"{h.prefix}."))
    caplog.set_level(logging.INFO)
    h.start()
    assert "restored from the store (not among the flow files): shop v1" in caplog.text
    h.send("Paid", "o2", t + 200)
    h.send("Placed", "n1", now_ms())
    (missing,) = h.wait_for(lambda: h.alerts("missing"), message="o1's missing payment")
    assert (missing.key, missing.json["version"], missing.json["step"]) == (b"o1", 1, "paid")
    (cancel,) = h.wait_for(lambda: h.out("cmds"), message="o1's cancel")
    assert cancel.json == {"type": "Cancel", "id": "o1"}  # v1's action, not v2's CancelV2
    assert version_of(h, "o2") == 1 and version_of(h, "n1") == 2
    h.send("Shipped", "o2", t + 400)
    assert outcome_of(h, "o2")["version"] == 1


def test_a_flow_file_changed_while_running_is_live_within_seconds(
    make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make()
    h.start()
    h.send("Placed", "o1", now_ms())
    h.wait_for(lambda: version_of(h, "o1") == 1, message="o1 open on v1")

    text = h.flow_file.read_text()
    h.flow_file.write_text(text.replace("within: 1500ms", "within: nonsense"))
    h.wait_for(lambda: "are invalid; nothing changes" in caplog.text, message="the error logged")
    assert f"{h.flow_file}:13" in caplog.text
    assert h.api("/flows").json()[0]["newest"] == 1

    changed = time.monotonic()
    h.flow_file.write_text(V2.replace("P.", f"{h.prefix}."))
    h.wait_for(lambda: h.api("/flows").json()[0]["newest"] == 2, 10, "v2 live")
    took = time.monotonic() - changed
    assert took < 10
    h.send("Placed", "n1", now_ms())
    h.wait_for(lambda: version_of(h, "n1") == 2, message="n1 on v2")
    (missing,) = h.wait_for(lambda: h.alerts("missing"), message="o1's missing payment")
    assert (missing.key, missing.json["version"]) == (b"o1", 1)
